"""The second adapter through the real loop: inference and trainer run
``MODEL_ADAPTER=reftrain.adapters.linear:LinearAdapter`` (numpy, no torch in the model) against the
real stack on REAL Binance BTCUSDT 1m candles.

inference (linear, version 0) -> refs of scheme linfeat-v1 -> jobs from the coordinator's oracle
(``batch_join`` over those refs, the real candles and the real pivots) -> trainer (linear) -> a
verified, sha256-announced checkpoint of the linear adapter -> inference hot-reloads it and predicts
with version 1. Proves the interface is real: nothing in the services knows which model runs.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from reftrain.adapters import read_header
from reftrain.adapters.linear import LinearAdapter
from reftrain.settings import PlatformSettings
from reftrain.store import Store
from reftrain.topics import CANDLES, INFERENCE_REFS, MODEL_VERSIONS, TRAINING_JOBS
from services.coordinator.oracle import batch_join
from services.pivots.detector import detect_pivots
from services.trainer.lineage import lineage_job_ids
from tests.support import (
    consume_all,
    decode_all,
    ensure_topics,
    free_port,
    metric,
    produce_records,
    real_candles,
    start_service,
    stop_gracefully,
)

pytestmark = pytest.mark.kafka

BTC = "BTCUSDT-1m-2025-09-22_2025-09-25.csv"
KEY = "BTCUSDT:1m"
LINEAR = {"MODEL_ADAPTER": "reftrain.adapters.linear:LinearAdapter", "LOG_LEVEL": "INFO"}


def wait_for(cond: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], log: Path,
             timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except OSError:
            pass
        if proc.poll() is not None:
            raise AssertionError(f"{what}: service exited {proc.returncode}\n{log.read_text()[-3000:]}")
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}\n{log.read_text()[-3000:]}")


def test_linear_adapter_runs_the_loop_end_to_end(platform: PlatformSettings, platform_env: dict[str, str],
                                                 tmp_path: Path) -> None:
    cat = ensure_topics(platform)
    candles = real_candles(BTC, limit=760)
    store = Store.from_settings(platform)
    store.append_candles(candles)  # ingest writes before it publishes
    store.close()
    produce_records(platform, CANDLES, [(KEY, dict(c)) for c in candles[:700]])

    inf_log, inf_port = tmp_path / "inference.log", free_port()
    inference = start_service("services.inference", platform_env,
                              {**LINEAR, "HTTP_PORT": str(inf_port), "INSTANCE_ID": "inference-0"}, inf_log)
    tr_log, tr_port = tmp_path / "trainer.log", free_port()
    trainer: subprocess.Popen[bytes] | None = start_service("services.trainer", platform_env, {
        **LINEAR, "HTTP_PORT": str(tr_port), "INSTANCE_ID": "trainer-0", "TRAINER_DEVICE": "cpu",
        "TRAINER_CHECKPOINT_SECONDS": "1"}, tr_log)  # starts while inference predicts: it idles until jobs come
    try:
        refs_metric = f'reftrain_inference_refs_total{{series="{KEY}"}}'
        wait_for(lambda: metric(inf_port, refs_metric) >= 101, "101 refs", inference, inf_log)
        refs = decode_all(platform, INFERENCE_REFS, consume_all(platform, cat.name(INFERENCE_REFS), expect=101))
        assert len(refs) == 101 and {r["norm_params"]["scheme"] for r in refs} == {LinearAdapter.scheme}
        assert {r["model_version"] for r in refs} == {0}

        # the coordinator's definition of the jobs over these refs (CANDLE + PIVOT)
        jobs = batch_join(refs, candles, detect_pivots(candles))
        assert {j["trigger"] for j in jobs} == {"CANDLE", "PIVOT"}
        produce_records(platform, TRAINING_JOBS, [(j["model_key"], dict(j)) for j in jobs])

        assert trainer is not None
        versions = consume_all(platform, cat.name(MODEL_VERSIONS), expect=1, timeout=300)
        mv = decode_all(platform, MODEL_VERSIONS, versions)[0]
        assert mv["adapter"] == LinearAdapter.kind() and mv["version"] >= 1
        data = (Path(platform.store_data_path) / mv["checkpoint_path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == mv["checkpoint_sha256"]
        header, _ = read_header(data)
        assert (header["adapter"], header["scheme"]) == (LinearAdapter.name, LinearAdapter.scheme)
        trained = ('reftrain_trainer_jobs_trained_total{trigger="CANDLE"}',
                   'reftrain_trainer_jobs_trained_total{trigger="PIVOT"}')
        wait_for(lambda: sum(metric(tr_port, m) for m in trained) >= len(jobs), "every job trained", trainer, tr_log)
        assert stop_gracefully(trainer) == 0
        trainer = None
        # exactly once: the lineage of the newest checkpoint lists every job id once
        newest = decode_all(platform, MODEL_VERSIONS, consume_all(platform, cat.name(MODEL_VERSIONS), timeout=5))
        last = max(newest, key=lambda m: m["version"])
        ids = lineage_job_ids(platform.store_data_path, last["checkpoint_path"])
        assert sorted(ids) == sorted(j["job_id"] for j in jobs)

        # inference hot-reloads the linear checkpoint and predicts with it
        wait_for(lambda: metric(inf_port, f'reftrain_inference_model_version{{model_key="{KEY}"}}') == last["version"],
                 "hot reload", inference, inf_log)
        produce_records(platform, CANDLES, [(KEY, dict(c)) for c in candles[700:720]])
        wait_for(lambda: metric(inf_port, refs_metric) >= 121, "refs of the new version", inference, inf_log)
        refs = decode_all(platform, INFERENCE_REFS, consume_all(platform, cat.name(INFERENCE_REFS), expect=121))
        assert [r["model_version"] for r in refs[101:]] == [last["version"]] * 20
        assert refs[101]["action_probs"] != refs[0]["action_probs"]  # a trained model, not the uniform v0
    finally:
        if trainer is not None:
            stop_gracefully(trainer)
        assert stop_gracefully(inference) == 0, inf_log.read_text()[-3000:]
