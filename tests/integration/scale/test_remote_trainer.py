"""The remote trainer (issue #19): a trainer process with no lake folder at all, only Kafka, the
catalog and S3, trains on jobs whose windows the ingest SERVICE wrote to S3 from real candles,
checkpoints to S3, and publishes versions that inference (its ModelRegistry, over S3) loads.

How "no access to the lake folder" is made real: the trainer runs in its own mount namespace where
S3Proxy's backing folder (the only place on this host where the bucket's files exist) is covered by
an empty tmpfs (``unshare --mount``, as root; without it the folder stays visible and the rest of
the test still runs), its environment names only ``s3://`` (no local path), and its working
directory is an empty scratch folder that must still be empty afterwards. Every byte it reads or writes of the
lake, the checkpoints and its manifest goes over the S3 API.

The jobs are synthesised from the same real candles the way inference and the coordinator build
them (ops/fixtures/trainer.py): no inference/coordinator runs here, to keep this CI-sized (~30 s).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition

from reftrain.adapters import read_header
from reftrain.blobs import Blobs, S3Blobs
from reftrain.settings import PlatformSettings
from reftrain.store import Store
from reftrain.streams import consumer_config
from reftrain.topics import MODEL_VERSIONS, TRAINING_JOBS
from services.inference.models import ModelRegistry
from services.trainer.lineage import lineage_job_ids, manifest_relpath, read_manifest_at
from services.trainer.spec import SPEC as TRAINER_SPEC
from tests.integration.scale.conftest import S3
from tests.support import (
    REPO,
    consume_all,
    decode_all,
    ensure_topics,
    free_port,
    produce_records,
    real_candles,
)
from tests.unit.trainer.trainer_synth import BTC_1M, synth_jobs

pytestmark = pytest.mark.kafka  # the session stack's Kafka, registry and catalog + a private S3Proxy

N_CANDLES, WINDOW = 800, 600
KEY = "BTCUSDT:1m"


def _hidden_namespace_ok() -> bool:
    return bool(shutil.which("unshare")) and subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True).returncode == 0


def _env(p: PlatformSettings, s3: S3, home: Path) -> dict[str, str]:
    """Only what a trainer on another host would get: brokers, registry, catalog (and its password
    file), the bucket."""
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(home), "LOG_FORMAT": "json",
            **p.connection_env(), **s3.env}


def _ingest(p: PlatformSettings, s3: S3, tmp: Path) -> None:
    """The ingest service replays the first N_CANDLES rows of the real file into the S3 lake."""
    src = REPO / "data" / BTC_1M
    part = tmp / "src" / BTC_1M
    part.parent.mkdir()
    part.write_text("".join(src.read_text().splitlines(keepends=True)[:N_CANDLES + 1]))
    env = {**_env(p, s3, tmp), "INGEST_FILES": str(part), "INGEST_DERIVE": "", "INGEST_SPEED": "0",
           "INGEST_PROGRESS": "off", "HTTP_PORT": "0"}
    out = subprocess.run([sys.executable, "-m", "services.ingest"], env=env, cwd=tmp, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def _watermarks(p: PlatformSettings, topic: str) -> dict[int, int]:
    c = Consumer(consumer_config(p, f"wm-{time.time_ns()}"))
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        marks = {q: c.get_watermark_offsets(TopicPartition(topic, q), timeout=10)[1] for q in parts}
        return {q: hi for q, hi in marks.items() if hi > 0}
    finally:
        c.close()


class _NoRowsYet:
    """The store as an inference instance saw it before the trainer's first version: no model_versions
    row (so it starts on version 0), the same bucket for checkpoints."""

    def __init__(self, store: Store) -> None:
        self.data_path = store.data_path
        self._store = store

    def latest_model_version(self, model_key: str) -> None:
        return None

    def blobs(self) -> Blobs:
        return self._store.blobs()


def test_a_trainer_without_the_lake_folder_trains_over_s3_and_inference_loads_it(
        s3_platform: PlatformSettings, s3: S3, tmp_path: Path) -> None:
    # Without a private mount namespace (not root) the folder stays visible; everything else holds.
    hidden = _hidden_namespace_ok()
    p = s3_platform
    catalogue = ensure_topics(p)
    _ingest(p, s3, tmp_path)
    candles = real_candles(BTC_1M, limit=N_CANDLES)
    store = Store.from_settings(p)
    assert store.count_candles("BTCUSDT", "1m") == N_CANDLES  # ingest wrote them, over S3
    prefix = p.store_data_path.removeprefix("s3://")
    assert list((s3.backing / prefix).rglob("*.parquet")), "ingest left no Parquet object in the bucket"

    jobs = synth_jobs(candles, WINDOW, max_pivot_jobs=10)
    produce_records(p, TRAINING_JOBS, [(j["model_key"], dict(j)) for j in jobs])
    topic = catalogue.name(TRAINING_JOBS)
    ends = _watermarks(p, topic)
    assert sum(ends.values()) == len(jobs)

    scratch = tmp_path / "trainer-cwd"
    scratch.mkdir()
    port = free_port()
    env = {**_env(p, s3, scratch), "HTTP_PORT": str(port), "INSTANCE_ID": "remote-1", "TRAINER_DEVICE": "cpu",
           "TRAINER_BATCH": "32", "TRAINER_FETCH_JOBS": "64", "TRAINER_CHECKPOINT_JOBS": "64",
           "TRAINER_CHECKPOINT_SECONDS": "2"}
    hide = f"mount -t tmpfs none {s3.backing} && test -z \"$(ls -A {s3.backing})\" && exec \"$@\""
    cmd = [sys.executable, "-m", "services.trainer"]
    if hidden:
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", hide, "sh", *cmd]
    log = tmp_path / "trainer.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=scratch, stdout=out, stderr=subprocess.STDOUT)
    blobs = store.blobs()
    assert isinstance(blobs, S3Blobs)
    group = TRAINER_SPEC.group(p.topic_prefix)
    try:
        deadline = time.monotonic() + 120
        while True:
            manifests = {q: read_manifest_at(blobs, manifest_relpath(group, topic, q)) for q in ends}
            if all(m is not None and m.next_offset == ends[q] for q, m in manifests.items()):
                break
            assert proc.poll() is None, f"trainer exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not done: {manifests}\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    # Nothing was written locally: the scratch folder is empty and the trainer never saw the bucket's files.
    assert not list(scratch.iterdir())
    text = log.read_text()
    assert "checkpoint committed" in text and str(s3.backing) not in text
    # The manifest and the checkpoints are objects in the bucket, and each job is in the lineage once.
    entry = next(m for m in manifests.values() if m is not None).models[KEY]
    assert (s3.backing / prefix / entry.checkpoint_path).is_file()
    assert sorted(lineage_job_ids(blobs, entry.checkpoint_path)) == sorted(j["job_id"] for j in jobs)
    assert entry.trained_jobs == len(jobs) and entry.version >= 2
    row = store.latest_model_version(KEY)
    assert row is not None and (row["version"], row["checkpoint_path"]) == (entry.version, entry.checkpoint_path)

    # Inference (its model registry, another process's view: the store's S3 blobs) loads every version.
    published: list[dict[str, Any]] = decode_all(p, MODEL_VERSIONS, consume_all(
        p, catalogue.name(MODEL_VERSIONS), timeout=30, idle=3))
    versions = sorted(int(mv["version"]) for mv in published if mv["model_key"] == KEY)
    assert versions == list(range(1, entry.version + 1))
    last = max((mv for mv in published if mv["model_key"] == KEY), key=lambda mv: mv["version"])
    assert last["checkpoint_sha256"] == entry.sha256
    inference_store = Store.from_settings(p)
    # (a) a new inference instance: the store's newest row, its checkpoint read over S3
    loaded = ModelRegistry(inference_store, device="cpu").current(KEY)
    assert (loaded.version, loaded.checkpoint_path) == (entry.version, entry.checkpoint_path)
    # (b) a running one (still on version 0): hot reload of every published ModelVersion, in order
    running = ModelRegistry(_NoRowsYet(inference_store), device="cpu")
    assert running.current(KEY).version == 0
    for mv in sorted((mv for mv in published if mv["model_key"] == KEY), key=lambda mv: mv["version"]):
        assert running.apply(mv)  # type: ignore[arg-type]
    assert running.current(KEY).version == entry.version
    _, state = read_header(blobs.read(entry.checkpoint_path))
    assert loaded.adapter.save_state() == state  # the weights inference runs are the trainer's
    window = inference_store.read_last("BTCUSDT", "1m", WINDOW)
    params = loaded.adapter.norm_params(window)
    pred = loaded.adapter.predict(np.stack([loaded.adapter.features(window, params)]), [params])[0]
    assert abs(pred.probs["buy"] + pred.probs["sell"] + pred.probs["hold"] - 1.0) < 1e-5
    print(json.dumps({"jobs": len(jobs), "version": entry.version, "checkpoint": entry.checkpoint_path}))
    inference_store.close()
    store.close()
