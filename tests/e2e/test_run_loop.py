"""End to end: the `make run` path (ops.run) on a shortened REAL series, asserting the report's invariants.

One run of the whole loop (module fixture): the last 800 candles of the bundled Binance BTCUSDT and
ETHUSDT 1m files (2025-10-29 window) go through ingest -> pivots -> inference -> coordinator ->
two trainer processes -> model versions -> inference again, on the real local stack, each service
its own process. The assertions are the report's invariants (counts add up, exactly-once equality
with the offline oracle, model versions advanced and used by inference, pivots equal to the batch
detector) plus the process hygiene the issue asks for (no process left running, also after Ctrl-C).

All five services are REQUIRED (``RunConfig.require``): a missing one fails the run and the test
instead of silently testing a subset.

Settings differ from `make run` only where the short series needs it: a slower replay (5 bars/s)
and more frequent trainer checkpoints, so trained versions reach inference within ~200 predicted
candles even on a loaded 2-core CI box.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from ops.analysis import PASS
from ops.procs import pid_alive
from ops.report import report_for_run
from ops.run import DEFAULT_FILES, RunConfig, RunResult, cleanup_run, run
from ops.stages import STAGES

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]
CANDLES = 800
WARMUP = 599  # inference window (600) - 1: the first ref is made at candle 600
ALL_STAGES = tuple(s.name for s in STAGES)


@pytest.fixture(scope="module")
def result(stack: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunResult]:
    config = RunConfig(
        files=DEFAULT_FILES,
        candles=CANDLES,
        speed=300.0,
        trainers=2,
        idle_s=10.0,
        timeout_s=600.0,
        out_root=tmp_path_factory.mktemp("runs"),
        require=ALL_STAGES,
        env={"TRAINER_CHECKPOINT_JOBS": "64", "TRAINER_CHECKPOINT_SECONDS": "5"},
    )
    res = run(config, Console(width=150))
    yield res
    if (res.run_dir / "run.json").exists():
        cleanup_run(res.run_dir)


def _check(res: RunResult, name: str) -> str:
    assert res.report is not None, f"no report: {res.failure}"
    c = res.report.check(name)
    assert c is not None, f"no check {name!r}"
    return f"{c.status}: {c.detail}"


def test_run_completes_drained_with_every_stage(result: RunResult) -> None:
    assert result.failure is None, result.failure
    assert result.drained
    assert result.stages_run == dict.fromkeys(ALL_STAGES, True)
    assert result.report is not None
    failed = [f"{c.name}: {c.detail}" for c in result.report.checks if c.status != PASS]
    assert not failed, failed
    assert result.exit_code == 0


def test_counts_add_up(result: RunResult) -> None:
    assert result.report is not None
    s = result.report.sections
    per_series = s["counts"]["per_series"]
    for series in ("BTCUSDT:1m", "ETHUSDT:1m"):
        assert per_series[series]["candles"] == CANDLES
        assert per_series[series]["refs"] == CANDLES - WARMUP  # one ref per candle with a full window
        assert per_series[series]["jobs CANDLE"] == CANDLES - WARMUP - 1  # the last ref's target is beyond
    cov = s["coverage"]
    assert cov["sum"] == cov["refs"] == sum(cov["buckets"].values()) == 2 * (CANDLES - WARMUP)
    assert cov["buckets"].get("target candle recorded but no CANDLE job", 0) == 0
    coord = cov["coordinator_metrics"]
    assert coord["accepted"] == coord["expired joined"] + coord["expired no_target_candle"] + coord["pending at stop"]
    assert coord["accepted"] + coord["late"] == cov["refs"]
    jobs = s["counts"]["jobs_by_trigger"]
    assert sum(jobs.values()) == s["counts"]["distinct"]["training-jobs"]
    assert all(n == 0 for n in s["counts"]["dlq"].values()), s["counts"]["dlq"]
    assert _check(result, "join coverage adds up").startswith(PASS)
    assert _check(result, "coordinator: accepted refs = expired + pending").startswith(PASS)
    assert _check(result, "coordinator metrics agree with the topics").startswith(PASS)


def test_exactly_once_equals_oracle(result: RunResult) -> None:
    assert result.report is not None
    eo = result.report.sections["exactly_once"]
    assert eo["oracle"] > 0
    assert eo["emitted_distinct"] == eo["oracle"] == eo["emitted_messages"]
    assert (eo["missing"], eo["extra"], eo["mismatched"], eo["duplicates"]) == (0, 0, 0, 0)
    assert _check(result, "exactly-once: job ids == oracle batch_join").startswith(PASS)


def test_model_versions_advanced_and_used(result: RunResult) -> None:
    assert result.report is not None
    tr = result.report.sections["training"]
    for key in ("BTCUSDT:1m", "ETHUSDT:1m"):
        assert tr["models"][key]["last"] >= 2, tr["models"]
        assert tr["models"][key]["trained_jobs_last"] > 0
    assert any(v >= 1 for v in tr["refs_by_model_version"]), tr["refs_by_model_version"]
    assert _check(result, "model versions advanced").startswith(PASS)
    assert _check(result, "inference used trained versions").startswith(PASS)
    assert _check(result, "store model_versions == model-versions topic").startswith(PASS)
    acc = tr["accuracy"]
    assert acc["overall"]["n"] + acc["excluded_leak"] + acc["no_target"] == 2 * (CANDLES - WARMUP)


def test_pivots_equal_batch_detector(result: RunResult) -> None:
    assert _check(result, "pivots stream == batch detect_pivots").startswith(PASS)


def test_no_process_left_running(result: RunResult) -> None:
    # 2 ingest processes (unpaced warm-up, then paced) + pivots, inference, coordinator, 2 trainers
    assert len(result.pids) >= 7  # more if a crashed service was restarted (reported)
    assert [p for p in result.pids if pid_alive(p)] == []


def test_report_files_and_rebuild(result: RunResult) -> None:
    d = result.run_dir
    for name in ("report.md", "report.html", "report.json", "run.json", "img/price_pivots.png", "img/loss.png",
                 "img/accuracy.png", "logs/coordinator.log", "logs/trainer-2.log", "metrics/coordinator.prom"):
        assert (d / name).is_file(), name
    first = json.loads((d / "report.json").read_text())
    # `python -m ops.report --run DIR` rebuilds the same numbers from the topics and saved /metrics
    again = report_for_run(d, with_plots=False)
    assert again.ok
    assert first["sections"]["exactly_once"] == json.loads(json.dumps(again.to_json()["sections"]["exactly_once"]))
    assert first["sections"]["coverage"] == json.loads(json.dumps(again.to_json()["sections"]["coverage"]))


def test_ctrl_c_stops_every_process(stack: dict[str, str], tmp_path: Path) -> None:
    """SIGINT to `python -m ops.run` while services run: every service is stopped (none left), the
    run exits 130, and a partial report is still written."""
    out = tmp_path / "runs"
    run_id = f"e2e-interrupt-{uuid.uuid4().hex[:6]}"
    proc = subprocess.Popen([sys.executable, "-m", "ops.run", "--candles", "700", "--run-id", run_id,
                             "--out", str(out), "--no-progress", "--no-plots", "--cleanup"],
                            cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    run_dir = out / run_id
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if (run_dir / "logs" / "ingest-warmup.log").exists():  # consumers ready, replay started
                break
            time.sleep(1)
        assert proc.poll() is None, proc.communicate()[0].decode(errors="replace")[-3000:]
        time.sleep(3)
        pids = {k: v for k, v in json.loads((run_dir / "run.json").read_text())["pids"].items() if v}
        # pivots, inference, coordinator, trainer-1 and the warm-up ingest (the paced one is not started yet)
        assert len(pids) >= 5, pids
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=180)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, output[-3000:]
    assert "interrupted" in output
    alive = {name: pid for name, pid in pids.items() if pid_alive(pid)}
    assert alive == {}, output[-3000:]
    assert (run_dir / "report.md").is_file()
