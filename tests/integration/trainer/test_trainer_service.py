"""``python -m services.trainer`` against the real local stack on REAL candles.

The store holds 900 real Binance BTCUSDT 1m candles and 700 real ETHUSDT 1h candles (with a real
8-hour exchange outage). The training jobs are SYNTHESISED here the way inference and the
coordinator would make them, because no inference service runs in these tests
(tests/unit/trainer/trainer_synth.py): refs over 600-row windows, CANDLE jobs with the real next
candle, PIVOT jobs with real pivots from ``detect_pivots``. Some jobs are corrupt on purpose (wrong
checksum, window not in the store, a range with fewer rows, wrong key, undecodable bytes).

Proved: every valid job is in its model's surviving lineage exactly once (the chain of checkpoint
metas lists each job id once; the job count equals the jobs on the topic), corrupt ones are
dead-lettered with their reason and never train; ModelVersions are published and model_versions rows
written; the same holds when the trainer is killed -9 at random points and inside checkpoints, and
when two trainers share the partitions and one of them is killed mid-run. Training on real data
lowers the held-out loss; directional skill is reported, not claimed.
"""

from __future__ import annotations

import copy
import os
import random
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition

from reftrain import labels
from reftrain.adapters import load_checkpoint
from reftrain.model import DEFAULT_SEED, build_input, candle_logrets, evaluate, init_model
from reftrain.model.adapter import TorchAdapter
from reftrain.model.training import SampleTarget, TargetBatch
from reftrain.records import TrainingJob
from reftrain.settings import PlatformSettings
from reftrain.store import Store
from reftrain.streams import consumer_config
from reftrain.topics import MODEL_VERSIONS, TRAINING_JOBS
from services.trainer.lineage import lineage_job_ids, lineage_metas, manifest_relpath, read_manifest
from services.trainer.spec import SPEC as TRAINER_SPEC
from tests.support import (
    consume_all,
    decode_all,
    ensure_topics,
    free_port,
    produce_raw,
    produce_records,
    real_candles,
    start_service,
    wait_http,
)
from tests.unit.trainer.trainer_synth import BTC_1M, ETH_1H, make_ref, synth_jobs, window_of

pytestmark = pytest.mark.kafka

WINDOW = 600
BTC, ETH = "BTCUSDT:1m", "ETHUSDT:1h"
ENV = {"TRAINER_BATCH": "16", "TRAINER_FETCH_JOBS": "64", "TRAINER_CHECKPOINT_JOBS": "64",
       "TRAINER_CHECKPOINT_SECONDS": "2", "TRAINER_DEVICE": "cpu", "LOG_LEVEL": "INFO"}


class Dataset:
    """What was put on the topic, and what the lineages must end up with."""

    def __init__(self, platform: PlatformSettings, waves: int = 1) -> None:
        """Stores the candles and produces the jobs: all at once, or in ``waves`` parts (the first
        now, the others with ``produce_next``)."""
        self.platform = platform
        self.catalogue = ensure_topics(platform)
        self.topic = self.catalogue.name(TRAINING_JOBS)
        self.btc = real_candles(BTC_1M, limit=1500)  # 0..899 stored; 900.. held out, never stored
        self.eth = real_candles(ETH_1H, limit=700)
        store = Store.from_settings(platform)
        try:
            store.append_candles(self.btc[:900])
            store.append_candles(self.eth)
        finally:
            store.close()
        btc_jobs = synth_jobs(self.btc[:900], WINDOW, max_pivot_jobs=20)
        eth_jobs = synth_jobs(self.eth, WINDOW, max_pivot_jobs=10)
        self.valid: dict[str, list[str]] = {BTC: [j["job_id"] for j in btc_jobs], ETH: [j["job_id"] for j in eth_jobs]}
        corrupt = self._corrupt(btc_jobs)
        self.corrupt_ids = {j["job_id"] for j, _, _ in corrupt}
        records: list[tuple[str, dict[str, Any]]] = []
        for i in range(max(len(btc_jobs), len(eth_jobs))):
            records.extend((j["model_key"], dict(j)) for j in (btc_jobs[i:i + 1] + eth_jobs[i:i + 1]))
            if i == 150:
                records.extend((key, dict(job)) for job, key, _ in corrupt)
        size = -(-len(records) // waves)
        self.waves = [records[i:i + size] for i in range(0, len(records), size)]
        self.produced: list[tuple[str, dict[str, Any]]] = []
        self.expected_rejections = Counter([reason for _, _, reason in corrupt] + ["DecodeError"])
        self.produce_next()

    def produce_next(self) -> None:
        wave = self.waves.pop(0)
        produce_records(self.platform, TRAINING_JOBS, wave)
        self.produced.extend(wave)
        if not self.waves:
            produce_raw(self.platform, self.topic, BTC.encode(), b"plain text, not the Avro wire format")
        self.ends = self.high_watermarks()

    def trainable_produced(self) -> int:
        return sum(1 for key, job in self.produced if job["job_id"] not in self.corrupt_ids)

    def _corrupt(self, jobs: list[TrainingJob]) -> list[tuple[TrainingJob, str, str]]:
        def variant(n: int, **ref: Any) -> TrainingJob:
            job = copy.deepcopy(jobs[n])
            job["job_id"] = f"corrupt-{n}"
            job["ref"].update(ref)  # type: ignore[typeddict-item]
            return job

        first = self.btc[0]["open_time"]
        return [
            (variant(10, window_checksum="0" * 64), BTC, "checksum_mismatch"),
            (variant(11, data_range_start=first - 10**9, data_range_end=first - 10**9 + 599 * 60_000), BTC,
             "window_missing"),
            # starts 10 bars before the first stored candle: the range holds 590 rows, the ref says 600
            (variant(12, data_range_start=first - 600_000, data_range_end=first + 589 * 60_000), BTC,
             "row_count_mismatch"),
            (variant(13), ETH, "key_mismatch"),  # keyed as another model: could reach a second replica
        ]

    def high_watermarks(self) -> dict[int, int]:
        c = Consumer(consumer_config(self.platform, f"wm-{time.time_ns()}"))
        try:
            md = c.list_topics(self.topic, timeout=10)
            out = {}
            for p in md.topics[self.topic].partitions:
                _, hi = c.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)
                if hi > 0:
                    out[p] = hi
            return out
        finally:
            c.close()

    def manifests(self) -> dict[int, Any]:
        group = TRAINER_SPEC.group(self.platform.topic_prefix)
        return {p: read_manifest(Path(self.platform.store_data_path) / manifest_relpath(group, self.topic, p))
                for p in self.ends}

    def progress(self) -> int:
        return sum(m.next_offset for m in self.manifests().values() if m is not None)

    def done(self) -> bool:
        return all(m is not None and m.next_offset == self.ends[p] for p, m in self.manifests().items())


@pytest.fixture
def dataset(platform: PlatformSettings) -> Dataset:
    return Dataset(platform)


class Trainers:
    """Trainer subprocesses of one test; every one still running is killed at the end."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, **extra: str) -> subprocess.Popen[bytes]:
        """A trainer replica; ``name`` is its INSTANCE_ID (static group membership), so a restart
        with the same name takes the same partitions back at once."""
        log = self.logs / f"trainer-{name}-{len(self.procs)}.log"
        port = free_port()
        proc = start_service("services.trainer", self.env,
                             {**ENV, "INSTANCE_ID": name, "HTTP_PORT": str(port), **extra}, log_path=log)
        proc.log, proc.port = log, port  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def wait_ready(self, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
        url = f"http://127.0.0.1:{proc.port}/readyz"  # type: ignore[attr-defined]
        assert wait_http(url, timeout), f"not ready: {tail(proc)}"

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def tail(proc: subprocess.Popen[bytes], n: int = 30) -> str:
    return "\n".join(Path(proc.log).read_text(errors="replace").splitlines()[-n:])  # type: ignore[attr-defined]


@pytest.fixture
def trainers(platform_env: dict[str, str], tmp_path: Path) -> Iterator[Trainers]:
    t = Trainers(platform_env, tmp_path)
    yield t
    t.stop_all()


def wait_done(ds: Dataset, procs: list[subprocess.Popen[bytes]], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ds.done():
        assert time.monotonic() < deadline, f"not done: {ds.manifests()}"
        for p in procs:
            assert p.poll() is None, f"trainer died: {tail(p)}"
        time.sleep(0.5)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, tail(proc)


def check_exactly_once(ds: Dataset) -> dict[str, Any]:
    """Each model's surviving lineage holds each valid job once; corrupt ones are in the DLQ only;
    rows and ModelVersions agree with the manifests. Returns per-model facts for the report."""
    data = ds.platform.store_data_path
    manifests = ds.manifests()
    entries = {k: e for m in manifests.values() if m is not None for k, e in m.models.items()}
    assert set(entries) == {BTC, ETH}
    store = Store.from_settings(ds.platform)
    try:
        rows = store.query("SELECT model_key, version, checkpoint_path, trained_jobs FROM lake.model_versions")
    finally:
        store.close()
    published = decode_all(ds.platform, MODEL_VERSIONS,
                           consume_all(ds.platform, ds.catalogue.name(MODEL_VERSIONS), timeout=30, idle=3))
    facts = {}
    for key, entry in entries.items():
        ids = lineage_job_ids(data, entry.checkpoint_path)
        assert len(ids) == len(set(ids)), f"{key}: a job trained twice"
        assert sorted(ids) == sorted(ds.valid[key]), f"{key}: lineage != valid jobs on the topic"
        assert entry.trained_jobs == len(ds.valid[key])
        assert not ds.corrupt_ids & set(ids)
        versions = sorted(int(v) for k, v, _, _ in rows if k == key)
        assert versions == list(range(1, entry.version + 1)), f"{key}: rows {versions}"
        assert (key, entry.version, entry.checkpoint_path, entry.trained_jobs) in {
            (k, int(v), p, int(n)) for k, v, p, n in rows}
        announced = {(m["version"], m["checkpoint_path"]) for m in published if m["model_key"] == key}
        assert (entry.version, entry.checkpoint_path) in announced
        assert len({v for v, _ in announced}) == len(announced), "one version announced with two checkpoints"
        metas = lineage_metas(data, entry.checkpoint_path)
        facts[key] = {"entry": entry, "metas": metas}
    dlq = consume_all(ds.platform, ds.catalogue.dlq(TRAINING_JOBS), timeout=30, idle=3)
    by_offset = {}
    for m in dlq:
        h = {k: v.decode() for k, v in m.headers() or []}
        by_offset[(int(h["source.partition"]), int(h["source.offset"]))] = h["error.reason"]
    assert Counter(by_offset.values()) == ds.expected_rejections  # at-least-once: counted per source offset
    rejected = Counter()
    for m in manifests.values():
        rejected.update(m.rejected)
    assert rejected == ds.expected_rejections
    return facts


def test_trains_every_job_once_dead_letters_corrupt_ones_and_improves(dataset: Dataset, trainers: Trainers) -> None:
    proc = trainers.start("a")
    trainers.wait_ready(proc)
    wait_done(dataset, [proc])
    stop(proc)
    facts = check_exactly_once(dataset)
    report_improvement(dataset, facts[BTC])


def report_improvement(ds: Dataset, btc: dict[str, Any]) -> None:
    """Held-out: 300 later BTCUSDT 1m windows (never stored, never trained on), version 0 vs the
    final version. Asserted: the held-out loss falls. Reported: action and direction accuracy
    against the class-mix baseline (the model author found no directional skill beyond it)."""
    xs, targets = [], []
    for end in range(1199, 1499):
        ref = make_ref(ds.btc, end, WINDOW)
        xs.append(build_input(window_of(ds.btc[end - WINDOW + 1:end + 1]), ref["norm_params"]))
        p, c = ref["norm_params"]["params"], ds.btc[end + 1]
        action = labels.action_label(p["last_close"], c["close"], p["ret_scale"])
        z = candle_logrets(ref["norm_params"], c["open"], c["high"], c["low"], c["close"]).astype(np.float32)
        targets.append(SampleTarget(action=labels.ACTION_INDEX[action], candle=z))
    x, t = np.stack(xs), TargetBatch.stack(targets)
    final = load_checkpoint(Path(ds.platform.store_data_path) / btc["entry"].checkpoint_path, TorchAdapter,
                            "cpu", expected_sha256=btc["entry"].sha256)[0].model
    v0 = evaluate(init_model(DEFAULT_SEED), x, t, "cpu")
    vn = evaluate(final, x, t, "cpu")
    counts = Counter(t.action.tolist())
    majority = counts.most_common(1)[0][1] / len(t)
    # the action loss of a model that only knows the held-out class mix (cross-entropy of the prior)
    prior_ce = -sum(n / len(t) * np.log(n / len(t)) for n in counts.values())
    metas = btc["metas"]
    print(f"\n[trainer on real BTCUSDT 1m] versions={len(metas)} jobs={btc['entry'].trained_jobs} "
          f"train loss first/last checkpoint interval {metas[0]['metrics']['loss']:.4f} -> "
          f"{metas[-1]['metrics']['loss']:.4f}")
    for name, r in (("v0", v0), (f"v{btc['entry'].version}", vn)):
        print(f"[held-out 300 windows] {name}: loss {r['loss']:.4f} (action {r['action_loss']:.4f}, candle "
              f"{r['candle_loss']:.4f}) action_acc {r['action_acc']:.3f} direction_acc {r['direction_acc']:.3f}")
    print(f"[held-out baselines] majority class {majority:.3f}; class-prior action loss {prior_ce:.4f}")
    assert vn["loss"] < v0["loss"]


def test_kill_9_at_random_points_and_inside_checkpoints(dataset: Dataset, trainers: Trainers) -> None:
    """A self-kill right after the 2nd manifest commit (rows and ModelVersion not yet written: the
    next owner must repair them), then kill -9 from outside after a random number of trained jobs
    (so mostly between checkpoints, with work trained but not committed), then a run to the end.
    Every other crash window is covered by the unit tests (tests/unit/trainer/test_trainer_engine.py)."""
    rng = random.Random(int(os.environ.get("TRAINER_TEST_SEED", "11")))
    proc = trainers.start("a", TRAINER_FAILPOINT="after_manifest:2")
    assert proc.wait(240) == -signal.SIGKILL, tail(proc)
    for _ in range(2):
        before = dataset.progress()
        at = rng.randint(16, 120)  # < the jobs left: the process is killed mid-run
        proc = trainers.start("a")
        trainers.wait_ready(proc)
        wait_until(lambda p=proc, n=at: trained(p) >= n, f"{at} jobs trained", [proc])  # type: ignore[misc]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        print(f"killed -9 after {at}+ jobs trained: committed progress {before} -> {dataset.progress()} "
              f"of {sum(dataset.ends.values())}")
    assert not dataset.done()
    after_failpoint = Path(trainers.procs[1].log).read_text()  # type: ignore[attr-defined]
    assert "repaired missing model_versions row" in after_failpoint  # the self-kill's row, written on load
    proc = trainers.start("a")
    trainers.wait_ready(proc)
    wait_done(dataset, [proc])
    stop(proc)
    check_exactly_once(dataset)


def trained(proc: subprocess.Popen[bytes]) -> float:
    """reftrain_trainer_jobs_trained_total of a running trainer (all triggers)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{proc.port}/metrics", timeout=5) as r:  # type: ignore[attr-defined]
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("reftrain_trainer_jobs_trained_total{"))


def wait_until(cond: Any, what: str, procs: list[subprocess.Popen[bytes]], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        for p in procs:
            assert p.poll() is None, f"trainer died while waiting for {what}: {tail(p)}"
        time.sleep(0.3)


def test_two_trainers_share_partitions_and_survive_a_kill(platform: PlatformSettings, trainers: Trainers) -> None:
    """a trains wave 1 and, by its settings, checkpoints only when it loses partitions; b joins:
    a's revocation must commit everything a trained (nothing is committed before). Then a is killed
    -9 in the middle of wave 2 with uncommitted work; b takes a's partitions over after a's session
    times out and finishes waves 2 and 3. Every job still trains exactly once."""
    ds = Dataset(platform, waves=3)
    a = trainers.start("a", TRAINER_CHECKPOINT_JOBS="100000", TRAINER_CHECKPOINT_SECONDS="0")
    wait_until(lambda: a.poll() is None and ready(a) and trained(a) >= ds.trainable_produced(), "a: wave 1", [a])
    assert ds.progress() == 0, "a committed before losing a partition"
    wave1_ends = dict(ds.ends)
    b = trainers.start("b")
    trainers.wait_ready(b)
    wait_until(lambda: all(m is not None and m.next_offset >= wave1_ends[p] for p, m in ds.manifests().items()),
               "a's revocation checkpoint", [a, b])
    lines = Path(a.log).read_text().splitlines()  # type: ignore[attr-defined]
    revoked = next(i for i, line in enumerate(lines) if "partitions revoked" in line)
    assert any("checkpoint committed" in line for line in lines[:revoked]), "a did not checkpoint before revoking"
    before = trained(a)
    ds.produce_next()
    wait_until(lambda: trained(a) > before, "a training wave 2", [a, b])
    a.send_signal(signal.SIGKILL)  # mid-run, with work it trained but never committed
    a.wait(10)
    ds.produce_next()
    wait_done(ds, [b], timeout=300)
    stop(b)
    check_exactly_once(ds)
    assigned = [line for line in Path(b.log).read_text().splitlines() if "partitions assigned" in line]  # type: ignore[attr-defined]
    assert len(assigned) >= 2 and '"3"' in assigned[-1] and '"2"' in assigned[-1], "b never took over"


def ready(proc: subprocess.Popen[bytes]) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{proc.port}/readyz", timeout=2) as r:  # type: ignore[attr-defined]
            return bool(r.status == 200)
    except OSError:
        return False
