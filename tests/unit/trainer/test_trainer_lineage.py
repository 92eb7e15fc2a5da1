"""The bookkeeping of the exactly-once protocol: digests, the manifest (atomic, compare-and-swap),
checkpoint triggers, the skip rule, and settings validation."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from reftrain.errors import ConfigError
from services.trainer import settings as config
from services.trainer.lineage import (
    EMPTY_DIGEST,
    ManifestConflict,
    ModelEntry,
    PartitionManifest,
    already_in_lineage,
    checkpoint_due,
    checkpoint_relpath,
    digest_add,
    manifest_relpath,
    read_manifest,
    write_manifest,
)
from services.trainer.spec import SPEC as TRAINER_SPEC


def test_digest_is_order_independent_and_counts_repeats() -> None:
    ids = [f"{i:032x}" for i in range(50)]
    shuffled = ids[:]
    random.Random(1).shuffle(shuffled)
    assert digest_add(EMPTY_DIGEST, ids) == digest_add(EMPTY_DIGEST, shuffled)
    assert digest_add(digest_add(EMPTY_DIGEST, ids[:20]), ids[20:]) == digest_add(EMPTY_DIGEST, ids)
    assert digest_add(EMPTY_DIGEST, ids + ids[:1]) != digest_add(EMPTY_DIGEST, ids)  # a job twice shows


def test_paths_are_file_safe_and_versioned() -> None:
    assert checkpoint_relpath("BTCUSDT:1m", 7, "abc") == "checkpoints/models/BTCUSDT%3A1m/v00000007-abc.pt"
    assert manifest_relpath("t-trainer", "t-training-jobs", 3) == \
        "checkpoints/trainer/t-trainer/t-training-jobs/p00003.json"


def test_manifest_round_trips_and_refuses_a_foreign_writer(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    assert read_manifest(path) is None
    m1 = PartitionManifest("g", "t", 3, next_offset=40, seq=1,
                           models={"BTCUSDT:1m": ModelEntry(1, "checkpoints/x.pt", 38, "ab" * 16, 5)},
                           rejected={"checksum_mismatch": 2}, updated_at=5)
    write_manifest(path, m1, expected_seq=0)
    assert read_manifest(path) == m1
    m2 = PartitionManifest("g", "t", 3, next_offset=80, seq=2)
    with pytest.raises(ManifestConflict):  # another owner's view: it did not load seq 1
        write_manifest(path, m2, expected_seq=0)
    assert read_manifest(path) == m1
    write_manifest(path, m2, expected_seq=1)
    assert read_manifest(path) == m2
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]  # no temp file left behind


def test_checkpoint_triggers() -> None:
    assert not checkpoint_due(0, 10_000, 100, 30)  # nothing new: never
    assert checkpoint_due(100, 0, 100, 30)  # by count
    assert not checkpoint_due(99, 29.9, 100, 30)
    assert checkpoint_due(1, 30, 100, 30)  # by time, with unsaved work
    assert not checkpoint_due(1, 10_000, 100, 0)  # time trigger off


def test_skip_rule() -> None:
    assert not already_in_lineage(0, None)  # no manifest: everything is new
    assert already_in_lineage(39, 40) and not already_in_lineage(40, 40)


@pytest.mark.parametrize("env", [{"TRAINER_BATCH": "0"}, {"TRAINER_CHECKPOINT_SECONDS": "-1"},
                                 {"TRAINER_FAILPOINT": "somewhere:1"}, {"TRAINER_FAILPOINT": "after_fence:0"},
                                 {"TRAINER_LR": "0"}])
def test_bad_settings_stop_the_service(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        config.load(env)


def test_settings_from_environment() -> None:
    s = config.load({"TRAINER_BATCH": "16", "TRAINER_CHECKPOINT_JOBS": "64", "TRAINER_CHECKPOINT_SECONDS": "2.5",
                     "TRAINER_FAILPOINT": "after_manifest:2"})
    assert (s.batch, s.checkpoint_jobs, s.checkpoint_seconds) == (16, 64, 2.5)
    assert s.failpoint == "after_manifest:2"
    assert TRAINER_SPEC.group("t1-") == "t1-trainer"
