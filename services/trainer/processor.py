"""The trainer's stream processor: the runtime's ``StreamApp`` around the broker-free ``TrainerEngine``.

The trainer's exactly-once effect is not a Kafka transaction but a model checkpoint that records
the offsets it covers (docs/semantics.md rule 9, lineage.py), so the app is built with the
``CheckpointOffsets`` commit policy (reftrain/streams/commit.py): on assignment a partition starts
at its manifest's offset instead of the group's committed one, offsets are committed to Kafka only
inside a checkpoint (where the commit doubles as a fence against a member that lost the partition),
a revocation checkpoints first and a lost partition is dropped without one. Consumer-group
membership gives "one replica per model key at a time": the key of ``training-jobs`` is the model key.

This module is the glue only: jobs in (``process``: the key must be the model key), one engine pass
per consumed batch (``end_batch``: fetch + verify windows, train; rejections dead-lettered), the
engine's checkpoints offered to the commit policy (``Checkpoints``), ModelVersions out.

Session: any Kafka, store or checkpoint error ends the session: in-memory models and offsets are
dropped WITHOUT a checkpoint, the consumer leaves the group, and a new session reloads every
assigned partition from its manifest. So what a session holds never diverges from a committed state
by more than the work since its last checkpoint, and that work is redone, never counted twice.
"""

from __future__ import annotations

import logging
import time
from typing import Any, cast

from reftrain.errors import InvalidRecordError, KafkaBoundaryError, StoreError
from reftrain.records import ModelVersion, TrainingJob
from reftrain.serde import RegistryUnavailableError
from reftrain.settings import PlatformSettings
from reftrain.streams import ArrivalOrder, CheckpointOffsets, Context, Fence, Record, StreamApp
from reftrain.topics import MODEL_VERSIONS, TRAINING_JOBS, TopicCatalogue
from services.trainer.batch import PendingJob
from services.trainer.engine import EngineStore, TrainerEngine
from services.trainer.lineage import ManifestConflict
from services.trainer.settings import TrainerSettings
from services.trainer.spec import SPEC

log = logging.getLogger(__name__)

#: Errors that end a session (state dropped, partitions reloaded from their manifests) besides
#: Kafka's and the registry's; anything else is a bug and stops the service.
OUTAGES: tuple[type[Exception], ...] = (KafkaBoundaryError, StoreError, ManifestConflict,
                                        RegistryUnavailableError, OSError)
#: Seconds between two exports of the engine's device metrics.
DEVICE_METRICS_S = 5.0


class TrainerProcessor:
    """Processor (jobs in, one engine pass per batch) and Checkpoints (the engine's manifests)."""

    def __init__(self, engine: TrainerEngine) -> None:
        self.engine = engine
        engine.publish = self._publish
        self._ctx: Context | None = None
        self._pending: list[PendingJob] = []
        self._records: dict[tuple[int, int], Record] = {}
        self._last_export = 0.0

    # -- Processor ---------------------------------------------------------------------------
    def assigned(self, partition: int, state: dict[str, Any]) -> None:
        """Nothing to do: the partition was loaded from its manifest by ``load`` (commit policy)."""

    def revoked(self, partition: int) -> None:
        """Forget the partition (after its revocation checkpoint, or lost / session over: none)."""
        self.engine.release(partition)
        # a unit of work that failed half-way leaves its jobs here; its session revokes everything
        self._pending = [j for j in self._pending if j.partition != partition]
        self._records = {k: r for k, r in self._records.items() if k[0] != partition}

    def process(self, record: Record, ctx: Context) -> None:
        job = cast(TrainingJob, record.value)  # its content is checked per job by services.trainer.batch
        if record.key != job["model_key"]:
            # The key decides the partition, hence the owner: a job keyed otherwise could be trained
            # by two replicas at once.
            raise InvalidRecordError("key_mismatch",
                                     f"message key {record.key!r} != model_key {job['model_key']!r}")
        self._pending.append(PendingJob(record.partition, record.offset, job))
        self._records[(record.partition, record.offset)] = record

    def end_batch(self, ctx: Context) -> None:
        """Fetch + verify the batch's windows in one pass, train, dead-letter the rejected jobs."""
        pending, records = self._pending, self._records
        self._pending, self._records = [], {}
        for rejection in self.engine.process(pending):
            ctx.dead_letter(records[(rejection.partition, rejection.offset)], rejection.error)

    def dead_lettered(self, partition: int, offset: int, error: Exception) -> None:
        """A job that never trains (undecodable, wrong key) still moves the partition's offset."""
        self.engine.reject(partition, offset, str(getattr(error, "reason", type(error).__name__)))

    # -- Checkpoints (the CheckpointOffsets commit policy) ------------------------------------
    def load(self, partition: int, ctx: Context) -> int | None:
        self._ctx = ctx  # repairs on load may re-publish a ModelVersion
        return self.engine.assign(partition)

    def accepts(self, partition: int, offset: int) -> bool:
        return self.engine.accept(partition, offset)

    def due(self) -> list[int]:
        if time.monotonic() - self._last_export > DEVICE_METRICS_S:
            self.engine.export_device_metrics()
            self._last_export = time.monotonic()
        return self.engine.due()

    def save(self, partition: int, ctx: Context, fence: Fence) -> bool:
        self._ctx = ctx
        return self.engine.checkpoint(partition, fence)

    # -- ModelVersions -------------------------------------------------------------------------
    def _publish(self, version: ModelVersion) -> None:
        """Step 5 of a checkpoint (and the re-announcement on load): emitted and confirmed."""
        ctx = self._ctx
        if ctx is None:  # engine used outside a session (tests): nothing to publish to
            return
        ctx.emit(MODEL_VERSIONS, version["model_key"], dict(version))
        ctx.confirm(30)


def build_app(platform: PlatformSettings, settings: TrainerSettings, store: EngineStore,
              engine: TrainerEngine | None = None) -> tuple[StreamApp, TrainerProcessor]:
    """Consumes ``training-jobs`` in group ``<TOPIC_PREFIX>trainer``, in arrival order, committed by
    the engine's checkpoints (``CheckpointOffsets``)."""
    group = SPEC.group(platform.topic_prefix)
    topic = TopicCatalogue(platform).name(TRAINING_JOBS)
    engine = engine or TrainerEngine(store, settings, group=group, topic=topic, publish=lambda _v: None,
                                     warm_up=True)
    processor = TrainerProcessor(engine)
    app = StreamApp(SPEC.name, platform, [TRAINING_JOBS], group, processor, batch_size=settings.fetch_jobs,
                    poll_timeout_s=settings.poll_timeout_s, release=ArrivalOrder(),
                    commit=CheckpointOffsets(processor), outages=OUTAGES)
    log.info("trainer engine", extra={"device": str(engine.device), "amp": engine.amp, "group": group,
                                      "topic": topic, "settings": dict(vars(settings))})
    return app, processor
