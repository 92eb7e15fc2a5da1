"""The idempotence contract of model-versions (docs/semantics.md, "Repeated ModelVersions") against
the real broker, registry and store.

The trainer re-announces a committed version on every assignment, so a trainer killed after its
publish announces it twice. Here ``python -m services.inference`` receives version 1, the very same
message again (twice), then a version 1 that names ANOTHER checkpoint. Proves: inference loads the
version once (the repeats are counted ``stale``, nothing reloaded), refuses the conflicting one
(dead letter ``model_version_conflict``, counted ``conflict``, model kept); the report, read from the
same topics, counts one distinct version, passes its repeat check on the identical repeats and fails
it once the conflicting message is on the topic.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ops.analysis import FAIL, PASS, REPEAT_CHECK, Analysis
from ops.report import collect
from reftrain.adapters import save_checkpoint
from reftrain.model import init_model
from reftrain.model.adapter import TorchAdapter
from reftrain.records import ModelVersion
from reftrain.settings import PlatformSettings
from reftrain.store import Store
from reftrain.topics import MODEL_VERSIONS, TopicCatalogue
from tests.integration.inference.test_inference_service import start, wait_for
from tests.support import consume_all, ensure_topics, metric, produce_records, stop_gracefully

pytestmark = pytest.mark.kafka

KEY = "BTCUSDT:1m"


def loads(port: int, outcome: str) -> float:
    return metric(port, f'reftrain_inference_model_loads_total{{outcome="{outcome}"}}')


def checkpoint(store: Store, name: str, version: int, seed: int) -> tuple[str, str]:
    """A checkpoint file as the trainer writes it: (path relative to the data path, sha256)."""
    path = store.checkpoint_dir() / KEY.replace(":", "_") / name
    sha = save_checkpoint(path, TorchAdapter.from_model(init_model(seed)),
                          {"model_key": KEY, "version": version, "trained_jobs": 0})
    return str(path.relative_to(store.data_path)), sha


def version_msg(rel: str, sha: str, created_at: int) -> dict[str, Any]:
    mv: ModelVersion = {"model_key": KEY, "version": 1, "checkpoint_path": rel, "trained_jobs": 0,
                        "metrics": {"loss": 1.0}, "created_at": created_at, "checkpoint_sha256": sha,
                        "adapter": TorchAdapter.kind()}
    return dict(mv)


def report_on(platform: PlatformSettings) -> tuple[Analysis, dict[str, Any]]:
    inp = collect(platform, stages_run={"trainer": True}, read_store=False, timeout=30)
    a = Analysis(inp)
    return a, a.sections()


def status(a: Analysis) -> str:
    return next(c.status for c in a.checks if c.name == REPEAT_CHECK)


def test_a_repeated_model_version_is_loaded_once_and_a_conflicting_one_refused(
        platform: PlatformSettings, platform_env: dict[str, str], tmp_path: Path) -> None:
    ensure_topics(platform)
    store = Store.from_settings(platform)
    log = tmp_path / "inference.log"
    try:
        proc, port = start(platform_env, log)
        try:
            wait_for(lambda: _ready(port), "inference ready", proc, log)
            # what the trainer does: checkpoint file, model_versions row, then the message
            rel, sha = checkpoint(store, "v1-a.pt", 1, seed=1)
            now = int(time.time() * 1000)
            store.record_model_version(KEY, 1, rel, 0, {"loss": 1.0}, now)
            first = version_msg(rel, sha, now)
            produce_records(platform, MODEL_VERSIONS, [(KEY, first)])
            # the key's first use loads the store's newest row (v1, outcome "store"), so this first
            # message is already the version in use: counted stale like any repeat
            wait_for(lambda: loads(port, "hot_reload") + loads(port, "store") >= 1, "version 1 loaded", proc, log)
            wait_for(lambda: loads(port, "stale") >= 1, "the first message handled", proc, log)
            loaded = loads(port, "hot_reload") + loads(port, "store")
            stale = loads(port, "stale")
            # the trainer's re-announcement: the very same message, twice
            produce_records(platform, MODEL_VERSIONS, [(KEY, first), (KEY, first)])
            wait_for(lambda: loads(port, "stale") >= stale + 2, "the two repeats", proc, log)
            assert loads(port, "hot_reload") + loads(port, "store") == loaded == 1  # loaded once
            assert metric(port, f'reftrain_inference_model_version{{model_key="{KEY}"}}') == 1
            assert loads(port, "conflict") == 0

            a, s = report_on(platform)
            assert s["counts"]["messages"][MODEL_VERSIONS] == 3
            assert s["counts"]["distinct"][MODEL_VERSIONS] == 1
            assert s["training"]["version_repeats"]["identical_repeats"] == 2
            assert status(a) == PASS

            # version 1 again, naming another checkpoint (other bytes, other sha256): refused
            other_rel, other_sha = checkpoint(store, "v1-b.pt", 1, seed=2)
            assert other_sha != sha
            produce_records(platform, MODEL_VERSIONS, [(KEY, version_msg(other_rel, other_sha, first["created_at"]))])
            wait_for(lambda: loads(port, "conflict") >= 1, "the conflicting version refused", proc, log)
            assert metric(port, f'reftrain_inference_model_version{{model_key="{KEY}"}}') == 1
            assert loads(port, "hot_reload") + loads(port, "store") == 1
        finally:
            code = stop_gracefully(proc)
        assert code == 0, log.read_text()[-3000:]
    finally:
        store.close()

    dlq = consume_all(platform, TopicCatalogue(platform).dlq(MODEL_VERSIONS), expect=1, timeout=60)
    assert len(dlq) == 1
    headers = {k: v.decode() for k, v in dlq[0].headers() or []}
    assert headers.get("error.reason") == "model_version_conflict", headers

    a, s = report_on(platform)
    assert s["counts"]["messages"][MODEL_VERSIONS] == 4 and s["counts"]["distinct"][MODEL_VERSIONS] == 1
    assert len(s["training"]["version_repeats"]["conflicts"]) == 1
    assert status(a) == FAIL


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except Exception:
        return False
