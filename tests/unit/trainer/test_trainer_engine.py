"""The exactly-once protocol without a broker: a simulated partition log, an engine that is
abandoned ("kill -9") at random passes and inside every step of a checkpoint, fenced and
conflicting writers, a lost model_versions row. After every scenario each model's surviving lineage
lists every valid job exactly once, and the weights equal those of an uninterrupted run bit for bit.
"""

from __future__ import annotations

import copy
import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from reftrain.adapters import load_checkpoint
from reftrain.errors import StoreError
from reftrain.failpoint import FailpointHit
from reftrain.model import init_model
from reftrain.model.adapter import TorchAdapter
from reftrain.records import Candle, ModelVersion, TrainingJob
from services.trainer.batch import PendingJob
from services.trainer.engine import TrainerEngine
from services.trainer.lineage import ManifestConflict, digest_add, lineage_job_ids, read_manifest
from services.trainer.settings import FAILPOINT_STAGES, TrainerSettings
from tests.unit.trainer.trainer_synth import MemStore, synth_jobs

W = 48
GROUP, TOPIC = "t-trainer", "t-training-jobs"
SETTINGS = TrainerSettings(batch=8, fetch_jobs=20, checkpoint_jobs=40, checkpoint_seconds=0, device="cpu")


@dataclass
class Topic:
    """Partitions of training-jobs: offset -> job, or None for a message the loop dead-letters
    itself (undecodable); ``corrupt`` are jobs the engine must reject."""

    partitions: dict[int, list[TrainingJob | None]]
    corrupt: set[str] = field(default_factory=set)

    def valid_ids(self, model_key: str) -> list[str]:
        return [j["job_id"] for log in self.partitions.values() for j in log
                if j is not None and j["model_key"] == model_key and j["job_id"] not in self.corrupt]


@pytest.fixture(scope="module")
def topic(btc: Sequence[Candle], eth_1h: Sequence[Candle]) -> Topic:
    btc_jobs = synth_jobs(btc[:170], W, max_pivot_jobs=8)
    eth_jobs = synth_jobs(eth_1h[:130], W, max_pivot_jobs=4)
    bad = copy.deepcopy(btc_jobs[30])
    bad["job_id"], bad["ref"]["window_checksum"] = "corrupt-1", "0" * 64
    gone = copy.deepcopy(eth_jobs[5])
    gone["job_id"], gone["ref"]["data_range_start"], gone["ref"]["data_range_end"] = "corrupt-2", 10**12, 10**12
    # two models share partition 3 (as BTCUSDT:1m and ETHUSDT:1m do with 6 partitions); one is alone
    p3: list[TrainingJob | None] = []
    for i, job in enumerate(btc_jobs):
        p3.append(job)
        if i == 40:
            p3.extend([bad, None])
    p2: list[TrainingJob | None] = [*eth_jobs[:50], gone, *eth_jobs[50:]]
    return Topic({3: p3, 2: p2}, {"corrupt-1", "corrupt-2"})


class Harness:
    """Plays the consumer loop: assign (seek), passes of ``fetch_jobs`` messages, checkpoints when
    due, a final checkpoint; a crash is simply dropping the engine."""

    def __init__(self, store: MemStore, topic: Topic) -> None:
        self.store = store
        self.topic = topic
        self.published: list[ModelVersion] = []
        self.commits: list[tuple[int, int]] = []

    def engine(self, settings: TrainerSettings = SETTINGS) -> TrainerEngine:
        return TrainerEngine(self.store, settings, group=GROUP, topic=TOPIC, publish=self.published.append,
                             device="cpu", kill_on_failpoint=False)

    def commit(self, partition: int, offset: int) -> None:
        self.commits.append((partition, offset))

    def run(self, engine: TrainerEngine, passes: int | None = None, from_zero: bool = False,
            before_commit: Callable[[int, int], None] | None = None) -> bool:
        """Run until the end of every partition (then checkpoint all and return True), or stop
        silently after ``passes`` passes (a kill -9; returns False). ``from_zero`` re-delivers every
        partition from offset 0 to exercise the skip rule."""
        fence = before_commit or self.commit
        pos = {}
        for p in self.topic.partitions:
            start = engine.assign(p)
            pos[p] = 0 if from_zero or start is None else start
        done = 0
        while any(pos[p] < len(log) for p, log in self.topic.partitions.items()):
            if passes is not None and done >= passes:
                return False
            for p, log in self.topic.partitions.items():
                batch = range(pos[p], min(pos[p] + engine.settings.fetch_jobs, len(log)))
                items = []
                for off in batch:
                    if not engine.accept(p, off):
                        continue
                    job = log[off]
                    if job is None:
                        engine.reject(p, off, "DecodeError")
                    else:
                        items.append(PendingJob(p, off, job))
                engine.process(items)
                pos[p] = batch.stop
            done += 1
            for p in engine.due():
                engine.checkpoint(p, fence)
        for p in sorted(engine.parts):
            engine.checkpoint(p, fence)
        return True

    def check_exactly_once(self) -> dict[str, dict[str, Any]]:
        """Every valid job in its model's lineage once; corrupt never; rows and announcements agree."""
        out = {}
        for p, log in self.topic.partitions.items():
            manifest = read_manifest(Path(self.store.data_path) /
                                     f"checkpoints/trainer/{GROUP}/{TOPIC}/p{p:05d}.json")
            assert manifest is not None and manifest.next_offset == len(log)
            assert sum(manifest.rejected.values()) == sum(
                1 for j in log if j is None or j["job_id"] in self.topic.corrupt)
            for key, entry in manifest.models.items():
                ids = lineage_job_ids(self.store.data_path, entry.checkpoint_path)
                assert len(ids) == len(set(ids)), "a job trained twice"
                assert sorted(ids) == sorted(self.topic.valid_ids(key))
                assert entry.trained_jobs == len(ids) and entry.jobs_digest == digest_add("0" * 32, ids)
                rows = [r for r in self.store.versions if r["model_key"] == key]
                assert sorted(r["version"] for r in rows) == list(range(1, entry.version + 1))
                assert self.store.latest_model_version(key)["checkpoint_path"] == entry.checkpoint_path  # type: ignore[index]
                announced = {(m["version"], m["checkpoint_path"]) for m in self.published if m["model_key"] == key}
                assert (entry.version, entry.checkpoint_path) in announced
                assert len({v for v, _ in announced}) == len(announced), "one version, two checkpoints"
                data = (Path(self.store.data_path) / entry.checkpoint_path).read_bytes()
                assert entry.sha256 == hashlib.sha256(data).hexdigest()
                assert {m.get("checkpoint_sha256") for m in self.published
                        if (m["model_key"], m["version"]) == (key, entry.version)} == {entry.sha256}
                adapter, _ = load_checkpoint(Path(self.store.data_path) / entry.checkpoint_path, TorchAdapter,
                                             "cpu", expected_sha256=entry.sha256)
                out[key] = {"entry": entry, "state": adapter.model.state_dict()}
        return out


def same_weights(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> bool:
    return a.keys() == b.keys() and all(
        all(torch.equal(a[k]["state"][n], b[k]["state"][n]) for n in a[k]["state"]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, btc: Sequence[Candle], eth_1h: Sequence[Candle],
              topic: Topic) -> dict[str, dict[str, Any]]:
    """An uninterrupted run: what every interrupted run must end with, bit for bit."""
    h = Harness(MemStore(tmp_path_factory.mktemp("ref"), [*btc, *eth_1h]), topic)
    assert h.run(h.engine())
    return h.check_exactly_once()


def test_uninterrupted_run_trains_every_valid_job_once(reference: dict[str, dict[str, Any]]) -> None:
    assert set(reference) == {"BTCUSDT:1m", "ETHUSDT:1h"}
    v0 = init_model().state_dict()
    assert not all(torch.equal(reference["BTCUSDT:1m"]["state"][n], v0[n]) for n in v0)  # it did train


def test_training_is_deterministic_on_cpu(tmp_path: Path, btc: Sequence[Candle], eth_1h: Sequence[Candle],
                                          topic: Topic, reference: dict[str, dict[str, Any]]) -> None:
    h = Harness(MemStore(tmp_path, [*btc, *eth_1h]), topic)
    assert h.run(h.engine())
    assert same_weights(h.check_exactly_once(), reference)


def test_kill_at_random_passes_and_redelivery_keep_exactly_once(
        tmp_path: Path, btc: Sequence[Candle], eth_1h: Sequence[Candle], topic: Topic,
        reference: dict[str, dict[str, Any]]) -> None:
    h = Harness(MemStore(tmp_path, [*btc, *eth_1h]), topic)
    rng = random.Random(7)
    kills = 0
    while not h.run(h.engine(), passes=rng.randint(1, 4), from_zero=rng.random() < 0.5):
        kills += 1
    assert kills >= 2
    assert same_weights(h.check_exactly_once(), reference)


@pytest.mark.parametrize("stage", FAILPOINT_STAGES)
def test_kill_inside_each_checkpoint_step(tmp_path: Path, btc: Sequence[Candle], eth_1h: Sequence[Candle],
                                          topic: Topic, reference: dict[str, dict[str, Any]], stage: str) -> None:
    h = Harness(MemStore(tmp_path, [*btc, *eth_1h]), topic)
    with pytest.raises(FailpointHit):
        h.run(h.engine(SETTINGS.replace(failpoint=f"{stage}:3")))
    assert h.run(h.engine())
    assert same_weights(h.check_exactly_once(), reference)


def test_a_fenced_commit_commits_nothing(tmp_path: Path, btc: Sequence[Candle], eth_1h: Sequence[Candle],
                                         topic: Topic, reference: dict[str, dict[str, Any]]) -> None:
    """A member that lost its partition (commit refused by the group) must not move the manifest."""
    h = Harness(MemStore(tmp_path, [*btc, *eth_1h]), topic)
    calls = 0

    def fence(partition: int, offset: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("ILLEGAL_GENERATION")

    with pytest.raises(RuntimeError):
        h.run(h.engine(), before_commit=fence)
    before = {p: read_manifest(Path(h.store.data_path) / f"checkpoints/trainer/{GROUP}/{TOPIC}/p{p:05d}.json")
              for p in topic.partitions}
    assert all(m is None or m.next_offset < len(topic.partitions[m.partition]) for m in before.values())
    assert h.run(h.engine())
    assert same_weights(h.check_exactly_once(), reference)


def test_a_zombie_cannot_overwrite_the_new_owners_manifest(tmp_path: Path, btc: Sequence[Candle],
                                                           eth_1h: Sequence[Candle], topic: Topic) -> None:
    h = Harness(MemStore(tmp_path, [*btc, *eth_1h]), Topic({3: topic.partitions[3][:60]}, topic.corrupt))
    zombie, owner = h.engine(), h.engine()
    zombie.assign(3)
    zombie.process([PendingJob(3, o, j) for o, j in enumerate(topic.partitions[3][:20]) if j is not None])
    assert h.run(owner)  # the partition moved; the new owner trains everything and commits
    with pytest.raises(ManifestConflict):
        zombie.checkpoint(3, h.commit)
    h.check_exactly_once()


def test_a_lost_row_is_repaired_and_the_version_announced_again(
        tmp_path: Path, btc: Sequence[Candle], eth_1h: Sequence[Candle], topic: Topic) -> None:
    h = Harness(MemStore(tmp_path, [*btc, *eth_1h]), Topic({2: topic.partitions[2][:45]}, topic.corrupt))
    engine = h.engine()
    h.store.fail_rows = True
    with pytest.raises(StoreError):  # manifest committed, row not written
        h.run(engine)
    h.store.fail_rows = False
    assert h.store.versions == []
    h.published.clear()
    engine = h.engine()
    engine.assign(2)
    assert [r["version"] for r in h.store.versions] == [1]
    assert [(m["model_key"], m["version"]) for m in h.published] == [("ETHUSDT:1h", 1)]
    assert h.run(engine)
    h.check_exactly_once()


def test_nothing_new_means_no_new_version(tmp_path: Path, btc: Sequence[Candle], eth_1h: Sequence[Candle],
                                          topic: Topic) -> None:
    h = Harness(MemStore(tmp_path, [*btc, *eth_1h]), Topic({2: topic.partitions[2][:30]}, topic.corrupt))
    engine = h.engine()
    assert h.run(engine)
    versions = len(h.store.versions)
    assert engine.checkpoint(2, h.commit) is False
    assert h.run(h.engine()) and len(h.store.versions) == versions
