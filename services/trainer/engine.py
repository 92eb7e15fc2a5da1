"""The trainer's engine: models per key, training on prepared batches, and partition checkpoints.

No Kafka here: the runtime (reftrain.streams, CheckpointOffsets via processor.py) tells the engine
which partitions it owns, hands it decoded jobs, and passes a ``before_commit`` callable (flush dead
letters, commit offsets to Kafka as a fence) and a ``publish`` callable (ModelVersion). So the
exactly-once protocol of lineage.py is testable without a broker, crash windows included.

Device: CUDA when present (bfloat16 autocast when ``TRAINER_AMP``; inputs go through pinned memory in
``reftrain.model.network.to_device``), CPU otherwise. On CPU training is deterministic: the same jobs
in the same steps give the same weights bit for bit (torch threads fixed; ``set_determinism``). On
CUDA deterministic kernels are chosen only with ``TRAINER_STRICT_DETERMINISM`` (they cost throughput).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from reftrain.adapters import (
    CandleExample,
    TrainingAdapter,
    checkpoint_bytes,
    load_adapter,
    load_checkpoint_bytes,
)
from reftrain.blobs import Blobs, blobs_of
from reftrain.failpoint import Failpoint
from reftrain.model import DEFAULT_SEED, select_device, set_determinism
from reftrain.records import ModelVersion
from services.trainer import metrics
from services.trainer.batch import PendingJob, Rejection, Sample, prepare, training_batches
from services.trainer.lineage import (
    EMPTY_DIGEST,
    ModelEntry,
    PartitionManifest,
    already_in_lineage,
    checkpoint_due,
    checkpoint_relpath,
    digest_add,
    manifest_relpath,
    read_manifest_at,
    write_manifest_at,
)
from services.trainer.settings import FAILPOINT_STAGES, TrainerSettings
from services.trainer.windows import WindowFetcher, WindowSource

log = logging.getLogger(__name__)


class EngineStore(WindowSource, Protocol):
    """What the engine needs from ``reftrain.store.Store``."""

    data_path: str

    def record_model_version(self, model_key: str, version: int, checkpoint_path: str, trained_jobs: int,
                             metrics: dict[str, float], created_at: int) -> None: ...

    def latest_model_version(self, model_key: str) -> dict[str, Any] | None: ...


@dataclass
class Lineage:
    """One model key's model, optimiser and bookkeeping on this instance.

    ``version``/``checkpoint_path``/``trained_jobs``/``jobs_digest`` describe the last COMMITTED
    checkpoint (plus ``new_job_ids``, trained since)."""

    model_key: str
    adapter: TrainingAdapter
    version: int = 0
    trained_jobs: int = 0
    jobs_digest: str = EMPTY_DIGEST
    checkpoint_path: str | None = None
    created_at: int = 0
    sha256: str = ""
    new_job_ids: list[str] = field(default_factory=list)
    #: running sums since the last checkpoint (steps, samples, train_seconds, losses)
    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    #: meta of the committed checkpoint this lineage was loaded from ({} for a fresh version 0)
    meta: dict[str, Any] = field(default_factory=dict)

    def record(self, samples: Sequence[Sample], stats: dict[str, float], seconds: float) -> None:
        self.new_job_ids.extend(s.job_id for s in samples)
        self.sums["steps"] += 1
        self.sums["samples"] += len(samples)
        self.sums["train_seconds"] += seconds
        for k, v in stats.items():
            self.sums[k] += float(v)
        for trigger in sorted({s.trigger for s in samples}):  # a shared step counts for both triggers
            self.sums[f"steps_{trigger.lower()}"] += 1

    def interval_metrics(self) -> dict[str, float]:
        """Mean step losses since the last checkpoint, and totals; plain floats for Avro and meta."""
        totals = ("steps", "samples", "train_seconds", "steps_candle", "steps_pivot")
        steps = max(self.sums["steps"], 1)
        out = {k: float(self.sums[k]) for k in totals}
        for k, v in self.sums.items():
            if k in totals:
                continue
            if k in ("action_loss", "candle_loss", "temperature"):  # CANDLE steps only
                out[k] = float(v / max(self.sums["steps_candle"], 1))
            elif k == "pivot_loss":
                out[k] = float(v / max(self.sums["steps_pivot"], 1))
            else:
                out[k] = float(v / steps)
        return out


@dataclass
class PartitionState:
    """What this instance holds for one owned partition."""

    partition: int
    seq: int
    next_offset: int | None
    lineages: dict[str, Lineage] = field(default_factory=dict)
    consumed_since: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    last_checkpoint: float = 0.0


class TrainerEngine:
    """Trains the models of the partitions it is told it owns; checkpoints them exactly once."""

    def __init__(
        self,
        store: EngineStore,
        settings: TrainerSettings,
        *,
        group: str,
        topic: str,
        publish: Callable[[ModelVersion], None],
        device: torch.device | str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        kill_on_failpoint: bool = True,
        warm_up: bool = False,
        adapter: type[TrainingAdapter] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.group = group
        self.topic = topic
        self.publish = publish
        self.clock = clock
        self.wall_ms = wall_ms
        self.device = torch.device(device) if device is not None else select_device(settings.device or None)
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        if self.device.type == "cpu" or settings.strict_determinism:
            set_determinism(DEFAULT_SEED, self.device, strict=settings.strict_determinism)
        else:  # CUDA: deterministic kernels cost throughput; only when asked for
            torch.manual_seed(DEFAULT_SEED)
        self.amp = settings.amp and self.device.type == "cuda"
        self.adapter_cls = adapter or load_adapter()
        self.adapter_cls.configure({"lr": settings.lr, "amp": self.amp})
        self.fetcher = WindowFetcher(store, settings.cache_rows)
        self.parts: dict[int, PartitionState] = {}
        self.data_path = store.data_path
        #: checkpoints and manifests: files under a local data path, objects under an s3:// one
        self.blobs: Blobs = blobs_of(store)
        self._probe: TrainingAdapter | None = None
        self._failpoint = Failpoint(settings.failpoint, FAILPOINT_STAGES, "TRAINER_FAILPOINT", kill=kill_on_failpoint)
        if warm_up:
            self.warm_up()

    def warm_up(self, rows: int = 600) -> None:
        """One throwaway CANDLE step before joining the group. The first AdamW in a process
        imports half of torch (measured 2-7 s on a busy 2-core box) and the first steps initialise
        the CPU kernels; paid here, it does not hold partitions (and their models) idle."""
        t0 = time.perf_counter()
        adapter = self.adapter_cls.create(DEFAULT_SEED, str(self.device))
        closes = 100.0 * np.exp(np.cumsum(np.full(rows, 1e-4)))
        from reftrain.window import Window
        values = np.stack([closes, closes * 1.001, closes * 0.999, closes, np.ones(rows)], axis=1)
        window = Window("WARMUP", "1m", np.arange(rows, dtype=np.int64) * 60_000, values)
        params = adapter.norm_params(window)
        x = adapter.features(window, params)
        candle = {"open": closes[-1], "high": closes[-1], "low": closes[-1], "close": closes[-1]}
        # one step: the pivot step uses the same kernels
        adapter.train_candle([CandleExample("warm", x, params, candle, 2)])
        self._probe = adapter  # reused as the scheme probe (features do not depend on weights)
        log.info("warmed up", extra={"seconds": round(time.perf_counter() - t0, 3), "device": str(self.device),
                                     "adapter": self.adapter_cls.kind()})

    # -- ownership -----------------------------------------------------------------------------
    def manifest_path(self, partition: int) -> str:
        """The manifest of ``partition``, relative to the data path (``self.blobs``)."""
        return manifest_relpath(self.group, self.topic, partition)

    def assign(self, partition: int) -> int | None:
        """Load partition ``partition``'s committed state; returns the offset to seek to (None: no
        manifest yet, start from the earliest offset)."""
        manifest = read_manifest_at(self.blobs, self.manifest_path(partition))
        state = PartitionState(partition, seq=manifest.seq if manifest else 0,
                               next_offset=manifest.next_offset if manifest else None,
                               last_checkpoint=self.clock())
        if manifest is not None:
            state.rejected.update(manifest.rejected)
            for key, entry in manifest.models.items():
                state.lineages[key] = self._load(key, entry)
                self._repair(key, entry, state.lineages[key])
        self.parts[partition] = state
        metrics.PARTITIONS.set(len(self.parts))
        log.info("partition loaded", extra={"partition": partition, "next_offset": state.next_offset,
                                            "models": {k: v.version for k, v in state.lineages.items()}})
        return state.next_offset

    def release(self, partition: int) -> None:
        """Forget a partition (after its revocation checkpoint, or when lost: no checkpoint)."""
        self.parts.pop(partition, None)
        metrics.PARTITIONS.set(len(self.parts))
        with contextlib.suppress(KeyError):
            metrics.CHECKPOINT_AGE.remove(str(partition))

    def release_all(self) -> None:
        for p in list(self.parts):
            self.release(p)

    def accept(self, partition: int, offset: int) -> bool:
        """Should the message at (partition, offset) be handled? Not when the partition is not ours
        or the offset is below what the lineage already covers (counted as skipped)."""
        state = self.parts.get(partition)
        if state is None:
            return False
        if already_in_lineage(offset, state.next_offset):
            metrics.SKIPPED.inc()
            return False
        return True

    # -- work ----------------------------------------------------------------------------------
    def reject(self, partition: int, offset: int, reason: str) -> None:
        """A message that never trains (dead-lettered by the caller) still moves the offset."""
        state = self.parts[partition]
        state.rejected[reason] += 1
        metrics.REJECTED.labels(reason).inc()
        self._advance(state, offset)

    def process(self, jobs: Sequence[PendingJob]) -> list[Rejection]:
        """Fetch + verify the windows of all ``jobs`` in one pass, train the valid ones in steps of
        ``TRAINER_BATCH`` per model, and return the rejected ones (to dead-letter)."""
        if not jobs:
            return []
        t0 = time.perf_counter()
        samples, rejections, stats = prepare(jobs, self.fetcher, self._scheme_probe())
        metrics.WINDOW_FETCH_SECONDS.observe(stats.seconds)
        metrics.WINDOW_ROWS_READ.inc(stats.rows_read)
        metrics.WINDOW_CACHE.labels("cache").inc(stats.from_cache)
        metrics.WINDOW_CACHE.labels("reread").inc(stats.rereads)
        t_train = time.perf_counter()
        shared = self.settings.shared_pass and hasattr(self.adapter_cls, "train_shared")
        for chunk in training_batches(samples, self.settings.batch, shared=shared):
            self._train(chunk)
        for r in rejections:
            self.parts[r.partition].rejected[r.reason] += 1
            metrics.REJECTED.labels(r.reason).inc()
        for j in jobs:
            self._advance(self.parts[j.partition], j.offset)
        elapsed = time.perf_counter() - t0
        if samples:
            metrics.SAMPLES_PER_SECOND.set(len(samples) / max(elapsed, 1e-9))
        log.debug("pass", extra={"jobs": len(jobs), "samples": len(samples), "rejected": len(rejections),
                                 "fetch_s": round(stats.seconds, 4), "rows_read": stats.rows_read,
                                 "prepare_s": round(t_train - t0, 4),
                                 "train_s": round(time.perf_counter() - t_train, 4)})
        return rejections

    def _scheme_probe(self) -> TrainingAdapter:
        """Any instance of the running adapter (features do not depend on a lineage's weights)."""
        if self._probe is None:
            self._probe = self.adapter_cls.create(DEFAULT_SEED, str(self.device))
        return self._probe

    def _train(self, chunk: list[Sample]) -> None:
        first = chunk[0]
        lineage = self._lineage(self.parts[first.partition], first.model_key)
        t0 = time.perf_counter()
        if len({s.trigger for s in chunk}) > 1 or (self.settings.shared_pass
                                                    and hasattr(lineage.adapter, "train_shared")):
            out = lineage.adapter.train_shared([s.example for s in chunk])  # type: ignore[attr-defined]
        elif first.trigger == "CANDLE":
            out = lineage.adapter.train_candle([s.example for s in chunk])  # type: ignore[misc]
        else:
            out = lineage.adapter.train_pivot([s.example for s in chunk])  # type: ignore[misc]
        lineage.record(chunk, out, time.perf_counter() - t0)
        if "loss" in out:
            metrics.LOSS.labels(lineage.model_key).set(out["loss"])
        for s in chunk:
            metrics.JOBS_TRAINED.labels(s.trigger).inc()

    def _advance(self, state: PartitionState, offset: int) -> None:
        state.next_offset = offset + 1 if state.next_offset is None else max(state.next_offset, offset + 1)
        state.consumed_since += 1

    # -- checkpoints ---------------------------------------------------------------------------
    def due(self) -> list[int]:
        now = self.clock()
        out = []
        for p, state in self.parts.items():
            metrics.CHECKPOINT_AGE.labels(str(p)).set(now - state.last_checkpoint)
            if checkpoint_due(state.consumed_since, now - state.last_checkpoint, self.settings.checkpoint_jobs,
                              self.settings.checkpoint_seconds):
                out.append(p)
        return out

    def checkpoint(self, partition: int, before_commit: Callable[[int, int], None]) -> bool:
        """Commit partition ``partition``'s progress (lineage.py, steps 1-5). Returns False when
        there was nothing to commit. Raises when the commit could not be made (fenced, conflict,
        I/O): the caller must then drop this instance's state of the partition and reload it."""
        state = self.parts[partition]
        if state.consumed_since == 0 or state.next_offset is None:
            return False
        started = time.perf_counter()
        now_ms = self.wall_ms()
        offsets = {self.topic: {partition: state.next_offset}}
        written: dict[str, ModelEntry] = {}
        metas: dict[str, dict[str, float]] = {}
        for key, lin in state.lineages.items():  # (1) new checkpoint files, never overwriting
            if not lin.new_job_ids:
                continue
            version = lin.version + 1
            path = checkpoint_relpath(key, version, uuid.uuid4().hex[:12])
            digest = digest_add(lin.jobs_digest, lin.new_job_ids)
            trained = lin.trained_jobs + len(lin.new_job_ids)
            interval = lin.interval_metrics()
            meta = {
                "model_key": key, "version": version, "trained_jobs": trained, "offsets": offsets,
                "jobs_digest": digest, "metrics": interval, "created_at": now_ms,
                "parent": lin.checkpoint_path, "job_ids": list(lin.new_job_ids),
                "group": self.group, "topic": self.topic, "partition": partition,
                "device": str(self.device), "amp": self.amp, "seed": DEFAULT_SEED,
            }
            data = checkpoint_bytes(lin.adapter, meta)
            self.blobs.write(path, data)
            sha = hashlib.sha256(data).hexdigest()
            written[key] = ModelEntry(version, path, trained, digest, now_ms, sha)
            metas[key] = interval
        self._fail("after_model_files")
        try:  # (2) dead letters durable, offsets committed: refused for a member that lost the partition
            before_commit(partition, state.next_offset)
        except Exception:
            metrics.CHECKPOINTS.labels("fenced").inc()
            raise
        self._fail("after_fence")
        committed = {k: ModelEntry(lin.version, lin.checkpoint_path, lin.trained_jobs, lin.jobs_digest,
                                   lin.created_at, lin.sha256)
                     for k, lin in state.lineages.items() if lin.checkpoint_path is not None}
        committed.update(written)
        manifest = PartitionManifest(self.group, self.topic, partition, state.next_offset, state.seq + 1,
                                     committed, dict(state.rejected), now_ms)
        try:  # (3) THE COMMIT POINT
            write_manifest_at(self.blobs, self.manifest_path(partition), manifest, expected_seq=state.seq)
        except Exception:
            metrics.CHECKPOINTS.labels("conflict").inc()
            raise
        state.seq += 1
        state.consumed_since = 0
        state.last_checkpoint = self.clock()
        for key, entry in written.items():
            lin = state.lineages[key]
            lin.version, lin.checkpoint_path = entry.version, entry.checkpoint_path
            lin.trained_jobs, lin.jobs_digest, lin.created_at = entry.trained_jobs, entry.jobs_digest, now_ms
            lin.sha256 = entry.sha256
            lin.new_job_ids.clear()
            lin.sums.clear()
        self._fail("after_manifest")
        for key, entry in written.items():  # (4) rows; a crash before them is repaired on assignment
            self.store.record_model_version(key, entry.version, entry.checkpoint_path, entry.trained_jobs,
                                            metas[key], now_ms)
        self._fail("after_rows")
        for key, entry in written.items():  # (5) announce; re-announced on every assignment
            self.publish(_model_version(key, entry, metas[key], self.adapter_cls.kind()))
            metrics.MODEL_VERSION.labels(key).set(entry.version)
        self._fail("after_publish")
        metrics.CHECKPOINTS.labels("committed").inc()
        metrics.CHECKPOINT_SECONDS.observe(time.perf_counter() - started)
        log.info("checkpoint committed", extra={
            "partition": partition, "next_offset": state.next_offset, "seq": state.seq,
            "versions": {k: e.version for k, e in written.items()},
            "trained_jobs": {k: e.trained_jobs for k, e in written.items()}})
        return True

    # -- lineages ------------------------------------------------------------------------------
    def _lineage(self, state: PartitionState, key: str) -> Lineage:
        lin = state.lineages.get(key)
        if lin is None:
            lin = self._fresh(key)
            state.lineages[key] = lin
        return lin

    def _fresh(self, key: str) -> Lineage:
        """Version 0 (init_model(DEFAULT_SEED): the weights inference starts from) for a key the
        partition's manifest does not know."""
        row = self.store.latest_model_version(key)
        if row is not None:
            # Committed by another manifest (the partition count changed, or a manifest was lost):
            # continue from it so versions stay monotonic; exactly-once cannot span that change.
            metrics.LINEAGE_ANOMALIES.labels(key).inc()
            log.error("model key has versions outside this partition's manifest; continuing from them",
                      extra={"model_key": key, "version": row["version"], "path": row["checkpoint_path"]})
            entry = ModelEntry(int(row["version"]), str(row["checkpoint_path"]), int(row["trained_jobs"]),
                               EMPTY_DIGEST, int(row["created_at"]))
            lin = self._load(key, entry)
            lin.jobs_digest = str(lin.meta.get("jobs_digest", EMPTY_DIGEST))
            return lin
        return Lineage(key, self.adapter_cls.create(DEFAULT_SEED, str(self.device)))

    def _load(self, key: str, entry: ModelEntry) -> Lineage:
        adapter, meta = load_checkpoint_bytes(self.blobs.read(entry.checkpoint_path), self.adapter_cls,
                                              str(self.device), expected_sha256=entry.sha256 or None,
                                              path=self.blobs.describe(entry.checkpoint_path))
        if meta.get("model_key") != key or int(meta.get("version", -1)) != entry.version:
            raise ValueError(f"{entry.checkpoint_path}: meta says {meta.get('model_key')} v{meta.get('version')}, "
                             f"manifest says {key} v{entry.version}")
        lin = Lineage(key, adapter, entry.version, entry.trained_jobs, entry.jobs_digest,
                      entry.checkpoint_path, entry.created_at, entry.sha256, meta=dict(meta))
        metrics.MODEL_VERSION.labels(key).set(entry.version)
        return lin

    def _repair(self, key: str, entry: ModelEntry, lin: Lineage) -> None:
        """After a crash between the manifest and the row (or the publish): make the store and the
        topic agree with the manifest again. Idempotent."""
        meta_metrics = {k: float(v) for k, v in lin.meta.get("metrics", {}).items()}
        row = self.store.latest_model_version(key)
        if row is None or int(row["version"]) < entry.version:
            self.store.record_model_version(key, entry.version, entry.checkpoint_path, entry.trained_jobs,
                                            meta_metrics, entry.created_at)
            log.warning("repaired missing model_versions row", extra={"model_key": key, "version": entry.version})
        elif int(row["version"]) > entry.version:
            metrics.LINEAGE_ANOMALIES.labels(key).inc()
            log.error("store has a newer version than the partition manifest",
                      extra={"model_key": key, "store_version": row["version"], "manifest_version": entry.version})
        self.publish(_model_version(key, entry, meta_metrics, self.adapter_cls.kind()))

    # -- device and faults ---------------------------------------------------------------------
    def export_device_metrics(self) -> None:
        if self.device.type != "cuda":
            return
        with contextlib.suppress(Exception):  # needs pynvml / NVML; memory below works without it
            metrics.GPU_UTILIZATION.set(float(torch.cuda.utilization(self.device)))
        metrics.GPU_MEMORY_BYTES.labels("allocated").set(torch.cuda.memory_allocated(self.device))
        metrics.GPU_MEMORY_BYTES.labels("reserved").set(torch.cuda.memory_reserved(self.device))

    def _fail(self, stage: str) -> None:
        self._failpoint.reached(stage)


def _model_version(key: str, entry: ModelEntry, metrics_: dict[str, float], adapter: str) -> ModelVersion:
    return {"model_key": key, "version": entry.version, "checkpoint_path": entry.checkpoint_path,
            "trained_jobs": entry.trained_jobs, "metrics": dict(metrics_), "created_at": entry.created_at,
            "checkpoint_sha256": entry.sha256 or None, "adapter": adapter}

