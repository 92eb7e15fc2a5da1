"""Kafka through SASL_SSL (SCRAM-SHA-512, TLS with the stack's own CA): deploy/local/stack.sh sasl-up
starts a separate broker whose only client listener is SASL_SSL; the services get nothing but
KAFKA_BOOTSTRAP_SERVERS and KAFKA_CONFIG_FILE (the one client passthrough), real candles flow
ingest -> candles -> pivots -> pivots over it, and a service with a wrong password is refused, says
so clearly, and stays up (not ready) instead of crash-looping.

The registry and the catalog are the usual stack's (they do not depend on the broker). Broker
start-up takes ~60 s on a loaded machine, so the module is marked slow."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.init import init_cluster
from ops.kafkaview import read_messages
from ops.stages import STACK, parse_stack_env
from reftrain.records import Candle
from reftrain.settings import PlatformSettings
from reftrain.topics import CANDLES, PIVOTS, TopicCatalogue
from services.pivots.detector import accepted_candles, detect_pivots
from tests.faults.support import Service, wait_for
from tests.support import REPO, decode_all, real_candles

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

BTC_FILE = "BTCUSDT-1m-2025-10-29_2025-11-01.csv"


@pytest.fixture(scope="module")
def sasl_env() -> Iterator[dict[str, str]]:
    """Variables of a running SASL_SSL broker; started (and stopped afterwards) if not running.
    REFTRAIN_STACK_DIR / REFTRAIN_SASL_KAFKA_PORT / REFTRAIN_SASL_CONTROLLER_PORT choose where."""
    env = {**os.environ, "REFTRAIN_STACK_DIR": os.environ.get("REFTRAIN_SASL_STACK_DIR",
                                                              str(REPO / ".local" / "sasl-stack"))}
    pid = Path(env["REFTRAIN_STACK_DIR"]) / "kafka-sasl.pid"
    was_up = pid.exists() and subprocess.run(["kill", "-0", pid.read_text().strip()]).returncode == 0
    subprocess.run([str(STACK), "sasl-up"], env=env, check=True)
    out = subprocess.run([str(STACK), "sasl-env"], env=env, check=True, capture_output=True, text=True).stdout
    yield parse_stack_env(out)
    if not was_up:
        subprocess.run([str(STACK), "sasl-down"], env=env, check=False)


def _sasl(platform: PlatformSettings, sasl_env: dict[str, str]) -> PlatformSettings:
    return platform.replace(kafka_bootstrap_servers=sasl_env["KAFKA_BOOTSTRAP_SERVERS"],
                   kafka_config_file=sasl_env["KAFKA_CONFIG_FILE"])


def test_services_run_through_sasl_ssl(platform: PlatformSettings, platform_env: dict[str, str],
                                       sasl_env: dict[str, str], tmp_path: Path) -> None:
    sp = _sasl(platform, sasl_env)
    assert "sasl.password" not in repr(sp) and "sasl" not in sp.kafka_bootstrap_servers
    init_cluster.prepare(sp)  # topics on the SASL broker (schemas: the fixture registered them)
    header, *rows = (REPO / "data" / BTC_FILE).read_text().splitlines()[:121]
    src = tmp_path / BTC_FILE
    src.write_text("\n".join([header, *rows]) + "\n")
    env = {**platform_env, **sasl_env}
    procs = [Service("pivots", env, tmp_path).start(),
             Service("ingest", env, tmp_path, {"INGEST_FILES": str(src), "INGEST_DERIVE": "",
                                               "INGEST_EXIT_WHEN_DONE": "false", "INGEST_PROGRESS": "off"}).start()]
    try:
        ingest = procs[1]
        wait_for(lambda: ingest.metrics().total("reftrain_ingest_replay_complete") == 1, 180,
                 "ingest to replay through SASL_SSL", procs)
        cat = TopicCatalogue(sp)
        candles_msgs, _ = read_messages(sp, cat.name(CANDLES), timeout=30)
        assert len(candles_msgs) == len(rows)
        candles: list[Candle] = [c for c in real_candles(BTC_FILE, limit=len(rows))]  # type: ignore[misc]
        want = {p["pivot_id"] for p in detect_pivots(accepted_candles(candles))}
        assert want, "120 real candles confirm some pivots"

        def all_pivots() -> bool:
            msgs, _ = read_messages(sp, cat.name(PIVOTS), timeout=30)
            return {p["pivot_id"] for p in decode_all(sp, PIVOTS, msgs)} == want

        wait_for(all_pivots, 120, "pivots == batch detect_pivots, read over SASL_SSL", procs, every=2.0)
        for s in procs:
            s.assert_healthy()
    finally:
        for s in procs:
            s.kill()


def test_wrong_password_is_refused_clearly_without_a_crash_loop(
        platform: PlatformSettings, platform_env: dict[str, str], sasl_env: dict[str, str], tmp_path: Path) -> None:
    wrong = f"wrong-{time.time_ns()}"
    env = {**platform_env, **sasl_env, "KAFKA_SASL_PASSWORD": wrong}  # overrides the file's password
    svc = Service("pivots", env, tmp_path).start()
    try:
        wait_for(lambda: "refused this client's credentials" in svc.tail(200), 120, "a clear refusal", [svc])
        t_refused = time.monotonic()
        time.sleep(5)
        assert svc.running(), svc.tail()  # still the same process: no crash loop
        assert svc.status("/healthz") == 200 and svc.status("/readyz") == 503
        assert svc.metrics().total("reftrain_kafka_auth_failures_total") > 0
        log = svc.log_path.read_text()
        assert wrong not in log
        assert log.count("refused this client's credentials") <= 1 + int((time.monotonic() - t_refused) / 60)
    finally:
        svc.kill()


def test_make_run_loop_through_sasl_ssl(stack: dict[str, str], sasl_env: dict[str, str], tmp_path: Path) -> None:
    """The whole loop (ops.run: ingest, pivots, inference, coordinator, a trainer publishing model
    versions, inference subscribed to them) with Kafka only reachable through SASL_SSL: the report's
    exactly-once and DLQ checks pass and model versions advance; no password in anything the run
    wrote. Real candles, a 20-candle inference window, unpaced (so every ref is made by v0: the
    hot reload itself is tests/e2e's, on a paced run)."""
    import json

    run_id = f"sasl-{time.time_ns() % 10**8}"
    env = {**os.environ, **stack, **sasl_env, "PYTHONPATH": str(REPO)}
    res = subprocess.run(
        [sys.executable, "-m", "ops.run", "--run-id", run_id, "--out", str(tmp_path), "--candles", "150",
         "--speed", "0", "--trainers", "1", "--no-progress", "--no-plots", "--idle", "8", "--timeout", "400",
         "--cleanup", "--env", "INFERENCE_WINDOW=20", "--env", "TRAINER_CHECKPOINT_JOBS=32", "--env",
         "TRAINER_CHECKPOINT_SECONDS=5"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert (tmp_path / run_id / "report.json").exists(), (res.stdout + res.stderr)[-4000:]
    report = json.loads((tmp_path / run_id / "report.json").read_text())
    checks = {c["name"]: c["status"] for c in report["checks"]}
    assert checks.get("exactly-once: job ids == oracle batch_join") == "pass", (checks, res.stdout[-3000:])
    assert checks.get("no DLQ entries") == "pass", checks
    assert checks.get("model versions advanced") == "pass", checks
    run_json = json.loads((tmp_path / run_id / "run.json").read_text())
    assert run_json["platform"]["kafka_bootstrap_servers"] == sasl_env["KAFKA_BOOTSTRAP_SERVERS"]
    password = next(line.split("=", 1)[1] for line in Path(sasl_env["KAFKA_CONFIG_FILE"]).read_text().splitlines()
                    if line.startswith("sasl.password="))
    leaked = [str(p) for p in (tmp_path / run_id).rglob("*")
              if p.is_file() and p.suffix in (".json", ".md", ".log") and password in p.read_text(errors="replace")]
    assert not leaked and password not in res.stdout + res.stderr
