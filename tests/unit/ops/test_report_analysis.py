"""The report's analysis without a broker: real candles (data/), pivots from the batch detector, refs
made up here (a fixed prediction per candle: the predictions are synthetic, the market data is not),
jobs from the oracle. Checks that every invariant passes on consistent inputs and that each one
catches the fault it exists for (a lost job, a duplicate, a job the oracle does not know)."""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import pytest

from ops.analysis import FAIL, PASS, REPEAT_CHECK, Analysis, Inputs, percentiles
from ops.kafkaview import Msg
from ops.promtext import parse
from reftrain.records import inference_id, series_key
from services.coordinator.join_config import JoinConfig
from services.coordinator.oracle import batch_join
from services.pivots.detector import detect_pivots
from tests.support import real_candles

FILE = "BTCUSDT-1m-2025-10-29_2025-11-01.csv"
N, WINDOW = 700, 600


def _msgs(topic: str, values: list[dict[str, Any]], t0: int, step: int = 10) -> list[Msg]:
    return [Msg(topic, 0, i, t0 + i * step, None, v) for i, v in enumerate(values)]


def _ref(candles: list[Any], end: int, version: int) -> dict[str, Any]:
    c = candles[end]
    series = series_key(c["symbol"], c["timeframe"])
    return {
        "inference_id": inference_id(series, c["open_time"], series, version), "model_key": series,
        "model_version": version, "symbol": c["symbol"], "timeframe": c["timeframe"],
        "data_range_start": candles[end - WINDOW + 1]["open_time"], "data_range_end": c["open_time"],
        "window_size": WINDOW, "window_checksum": "0" * 64,
        "norm_params": {"scheme": "logret-v1", "params": {"first_ref_close": 1.0, "last_close": c["close"],
                                                          "ret_scale": 1e-3, "logvol_mean": 0.0, "logvol_std": 1.0}},
        "predicted_action": ("BUY", "SELL", "HOLD")[end % 3], "action_probs": {"buy": 0.4, "sell": 0.3, "hold": 0.3},
        "predicted_candle": None, "confidence": 0.4, "target_timestamp": c["open_time"] + 60_000, "created_at": 0,
    }


@pytest.fixture(scope="module")
def inputs() -> Inputs:
    candles = real_candles(FILE, limit=N)
    pivots = detect_pivots(candles)
    refs = [_ref(candles, i, 0 if i < 650 else 1) for i in range(WINDOW - 1, N)]
    jobs = batch_join(refs, candles, pivots)  # type: ignore[arg-type]
    t0 = 1_700_000_000_000
    versions = [{"model_key": "BTCUSDT:1m", "version": 1, "checkpoint_path": "x", "trained_jobs": 50,
                 "metrics": {"loss": 1.2}, "created_at": 0}]
    coordinator = parse(
        "reftrain_coordinator_inputs_total{kind=\"ref\",outcome=\"accepted\"} 101\n"
        "reftrain_coordinator_pending_refs 101\n")
    return Inputs(
        messages={"candles": _msgs("candles", list(candles), t0),
                  "pivots": _msgs("pivots", list(pivots), t0 + 5),
                  "inference-refs": _msgs("inference-refs", refs, t0 + WINDOW * 10),
                  # jobs published after the version: every ref's version saw no later outcome
                  "training-jobs": _msgs("training-jobs", list(jobs), t0 + 10_000_000, step=1),
                  "model-versions": _msgs("model-versions", versions, t0 + 100)},
        metrics={"coordinator": coordinator},
        stages_run=dict.fromkeys(("ingest", "pivots", "inference", "coordinator", "trainer"), True),
    )


def _status(a: Analysis, name: str) -> str:
    return next(c.status for c in a.checks if c.name == name)


def test_consistent_inputs_pass_every_check(inputs: Inputs) -> None:
    a = Analysis(inputs)
    s = a.sections()
    failed = [(c.name, c.detail) for c in a.checks if c.status != PASS]
    assert failed == []
    assert s["counts"]["per_series"]["BTCUSDT:1m"]["refs"] == N - WINDOW + 1
    assert s["coverage"]["sum"] == s["coverage"]["refs"] == N - WINDOW + 1
    assert s["coverage"]["buckets"]["pending, awaiting target candle"] == 1  # the last ref's target is beyond
    eo = s["exactly_once"]
    assert eo["oracle"] == eo["emitted_distinct"] > N - WINDOW
    acc = s["training"]["accuracy"]
    assert acc["overall"]["n"] == N - WINDOW  # every ref with a target candle scored
    assert set(acc["by_version"]) == {0, 1}
    sc = acc["scores"]["all"]  # ops.scoring, the same functions as make backtest
    assert sc["n"] == N - WINDOW and sc["log_loss"]["model"] > 0 and sc["log_loss"]["class_prior"] > 0
    assert sum(acc["labels"].values()) == N - WINDOW
    assert sc["label_mix"]["HOLD"] == pytest.approx(acc["labels"].get("HOLD", 0) / (N - WINDOW))
    assert sc["accuracy"]["always_hold"] == pytest.approx(acc["overall"]["always_hold"], abs=1e-3)


def test_lost_duplicate_and_unknown_jobs_fail_exactly_once(inputs: Inputs) -> None:
    jobs = inputs.messages["training-jobs"]
    for broken, field in ((jobs[1:], "missing"), ([*jobs, jobs[3]], "duplicates")):
        inp = copy.copy(inputs)
        inp.messages = {**inputs.messages, "training-jobs": broken}
        a = Analysis(inp)
        eo = a.exactly_once()
        assert eo[field] == 1
        assert _status(a, "exactly-once: job ids == oracle batch_join") == FAIL
    bogus = copy.deepcopy(jobs[0])
    assert bogus.value is not None
    bogus.value["job_id"] = "f" * 32
    inp = copy.copy(inputs)
    inp.messages = {**inputs.messages, "training-jobs": [*jobs, bogus]}
    a = Analysis(inp)
    assert a.exactly_once()["extra"] == 1


def test_missing_jobs_of_a_late_ref_are_explained_only_with_the_coordinators_late_count(inputs: Inputs) -> None:
    """A ref the coordinator ignored as late (join.py: its series' candles were more than S bars
    ahead when it arrived, e.g. predicted after an inference outage) has no jobs: exactly-once
    holds against the oracle of the ACCEPTED inputs, if the coordinator counted that many late refs
    and the topics show the ref could have been late. Any other missing job still fails."""
    refs = inputs.messages["inference-refs"]
    first = refs[0].value
    assert first is not None
    last_candle = inputs.messages["candles"][-1]
    # published when the candles topic was 100 bars (> S = 50) past the ref's window end
    late_ref = Msg(refs[0].topic, 0, refs[0].offset, last_candle.timestamp, None, first)
    jobs = inputs.messages["training-jobs"]
    kept = [m for m in jobs if (m.value or {})["ref"]["inference_id"] != first["inference_id"]]
    assert len(jobs) - len(kept) > 0
    name = "exactly-once: job ids == oracle batch_join"

    def run(ref_msg: Msg, job_msgs: list[Msg], late: int) -> tuple[str, dict[str, Any]]:
        inp = copy.copy(inputs)
        inp.join_config = JoinConfig(max_lag_bars=50)
        inp.messages = {**inputs.messages, "inference-refs": [ref_msg, *refs[1:]], "training-jobs": job_msgs}
        inp.metrics = {"coordinator": parse(f'reftrain_coordinator_late_inputs_total{{kind="ref"}} {late}\n')}
        a = Analysis(inp)
        eo = a.exactly_once()
        return _status(a, name), eo

    status, eo = run(late_ref, kept, late=1)
    assert status == PASS, eo
    assert eo["missing"] == len(jobs) - len(kept) and eo["late_attribution"]["refs"] == 1
    assert run(late_ref, kept, late=0)[0] == FAIL  # the coordinator did not ignore any ref
    # published before the candles were S ahead (the fixture's candles span 7 s: well before them)
    early = Msg(refs[0].topic, 0, refs[0].offset, inputs.messages["candles"][0].timestamp - 60_000, None, first)
    assert run(early, kept, late=1)[0] == FAIL
    # one job lost of a ref that has others: not a late ref, whatever the counters say
    per_ref = Counter((m.value or {})["ref"]["inference_id"] for m in kept)
    victim = next(i for i, m in enumerate(kept) if per_ref[(m.value or {})["ref"]["inference_id"]] > 1)
    assert run(late_ref, kept[:victim] + kept[victim + 1:], late=5)[0] == FAIL


def test_a_version_that_saw_later_outcomes_is_not_scored(inputs: Inputs) -> None:
    """Jobs published BEFORE version 1 resolve after some v1 refs: those refs are excluded."""
    inp = copy.copy(inputs)
    jobs = [Msg(m.topic, m.partition, m.offset, 0, m.key, m.value) for m in inputs.messages["training-jobs"]]
    inp.messages = {**inputs.messages, "training-jobs": jobs}
    acc = Analysis(inp).training()["accuracy"]
    assert acc["excluded_leak"] > 0
    assert all(v == 0 for v in acc["by_version"])


def test_a_repeated_model_version_counts_once_and_a_conflicting_one_fails(inputs: Inputs) -> None:
    """docs/semantics.md "Repeated ModelVersions": the trainer's re-announcement of a committed
    version (same checkpoint) is one version; the same version naming another checkpoint FAILs."""
    (mv,) = inputs.messages["model-versions"]
    assert mv.value is not None
    same = Msg(mv.topic, 0, 1, mv.timestamp + 50, None, dict(mv.value, checkpoint_sha256=None))
    inp = copy.copy(inputs)
    inp.messages = {**inputs.messages, "model-versions": [mv, same]}
    a = Analysis(inp)
    s = a.sections()
    assert s["counts"]["messages"]["model-versions"] == 2 and s["counts"]["distinct"]["model-versions"] == 1
    assert s["training"]["version_repeats"]["identical_repeats"] == 1
    assert s["training"]["models"]["BTCUSDT:1m"]["versions"] == 1
    assert [c.name for c in a.checks if c.status != PASS] == []
    other = Msg(mv.topic, 0, 2, mv.timestamp + 60, None, dict(mv.value, checkpoint_path="y"))
    inp.messages = {**inputs.messages, "model-versions": [mv, same, other]}
    a = Analysis(inp)
    assert a.training()["version_repeats"]["conflicts"] == ["BTCUSDT:1m v1: x (?) vs y (?)"]
    assert _status(a, REPEAT_CHECK) == FAIL


def test_percentiles_nearest_rank() -> None:
    p = percentiles(list(range(1, 101)))
    assert (p["p50"], p["p90"], p["p99"], p["max"], p["n"]) == (50, 90, 99, 100, 100)
    assert percentiles([])["p50"] is None


def test_report_renders_the_model_vs_baselines_tables(inputs: Inputs) -> None:
    from ops import report

    rep = report.build(inputs, title="t", meta={}, stages=[], with_plots=False)
    md = report.render_markdown(rep)
    assert "Model vs baselines (ops.scoring" in md and "Reliability of confidence" in md
    assert "log loss prior" in md
