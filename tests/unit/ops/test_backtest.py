"""The walk-forward backtest: no look-ahead (perturbing the future leaves every earlier prediction
and baseline bit-identical), the oracle's job semantics, and the metric functions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ops import scoring
from ops.backtest import WalkForward, load_csv, markdown_sections, segment_jobs, summarise
from reftrain.adapters.linear import LinearAdapter
from reftrain.records import Candle
from services.coordinator.join_config import JoinConfig

BTC = "BTCUSDT-1m-2025-09-22_2025-09-25.csv"
W, K = 100, 420  # a short window keeps the test in seconds; the future starts at bar K


def _perturbed(candles: list[Candle], k: int) -> list[Candle]:
    """Bars from ``k`` on scaled by a wobbling factor (a different future; bars before k identical).
    Synthetic on purpose: real data has no 'other future' to compare with."""
    out = [dict(c) for c in candles]
    for i in range(k, len(out)):
        f = 1.0 + 0.004 * math.sin(i)
        for key in ("open", "high", "low", "close"):
            out[i][key] = candles[i][key] * f  # type: ignore[literal-required]
        out[i]["volume"] = candles[i]["volume"] * (1.5 + math.cos(i))
    return out  # type: ignore[return-value]


def _walk(candles: list[Candle]) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    wf = WalkForward(LinearAdapter, window=W, batch=16, block=16)
    wf.run(candles[:300], score=False)  # a training segment first, as for the real files
    s = wf.run(candles[300:], score=True)
    return s.rows, s.pivots


def test_no_target_calibration_or_baseline_uses_data_at_or_after_the_prediction() -> None:
    candles = load_csv(BTC)[:300 + 700]
    rows_a, piv_a = _walk(candles)
    rows_b, piv_b = _walk(_perturbed(candles, 300 + K))
    assert len(rows_a) > 400 and len(piv_a) > 100
    before = [(a, b) for a, b in zip(rows_a, rows_b, strict=True) if a["t"] < K]  # type: ignore[operator]
    after = [(a, b) for a, b in zip(rows_a, rows_b, strict=True) if a["t"] >= K]  # type: ignore[operator]
    assert len(before) > 200 and after
    for a, b in before:  # model output (incl. its calibration) and the class prior: bit-identical
        assert a["t"] == b["t"] and a["probs"] == b["probs"] and a["prior"] == b["prior"]
        assert a["pred_close_bp"] == b["pred_close_bp"]
    assert any(a["probs"] != b["probs"] for a, b in after)  # the test can see a change
    pa = [p for p in piv_a if p["t"] < K]  # type: ignore[operator]
    pb = [p for p in piv_b if p["t"] < K]  # type: ignore[operator]
    # the pivot head's prediction and base rate of every earlier ref are unchanged too (the SET of
    # pivot jobs of a ref near K may differ: a different future confirms different pivots)
    by_t_b = {p["t"]: (p["probs"], p["base"]) for p in pb}
    assert pa and all(by_t_b.get(p["t"], (p["probs"], p["base"])) == (p["probs"], p["base"]) for p in pa)


def test_jobs_follow_the_coordinators_oracle_and_become_available_only_when_resolved() -> None:
    candles = load_csv(BTC)[:400]
    jobs, ts, _ = segment_jobs(candles, W, LinearAdapter.create().norm_params, JoinConfig())
    assert ts[0] == W - 1
    cj = [j for j in jobs if j.trigger == "CANDLE"]
    assert [j.t for j in cj] == ts[:-1]  # one CANDLE job per ref with a target candle
    assert all(j.avail == j.t + 1 for j in cj)
    pj = [j for j in jobs if j.trigger == "PIVOT"]
    assert pj and all(j.avail >= j.t or j.payload["pivot_time"] <= candles[j.t]["open_time"] for j in pj)
    assert all(candles[j.avail]["open_time"] == j.payload["confirmed_at"] for j in pj)


def test_metric_functions() -> None:
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    y = np.array([0, 0, 2])
    assert scoring.log_loss(p, y) == pytest.approx(-(math.log(0.7) + math.log(0.1) + math.log(0.6)) / 3)
    expect = ((0.09 + 0.04 + 0.01) + (0.81 + 0.64 + 0.01) + (0.04 + 0.04 + 0.16)) / 3
    assert scoring.brier(p, y) == pytest.approx(expect)
    lo, hi = scoring.wilson(50, 100)
    assert lo == pytest.approx(0.404, abs=1e-3) and hi == pytest.approx(0.596, abs=1e-3)
    rel = scoring.reliability(np.array([0.75, 0.75, 0.35, 0.35]), np.array([True, False, True, True]))
    assert rel["ece"] == pytest.approx(0.5 * 0.25 + 0.5 * 0.65)
    pos = np.array([1.0, 1.0, -1.0, 0.0])
    r = np.array([0.001, -0.002, -0.001, 0.005])
    out = scoring.pnl(pos, r, fee_bp=7.5)
    assert out["turnover"] == 4.0 and out["gross_bp"] == pytest.approx(0.0)
    assert out["net_bp"] == pytest.approx(-30.0)


def test_summary_renders_every_section() -> None:
    candles = load_csv(BTC)[:600]
    wf = WalkForward(LinearAdapter, window=W, batch=16, block=16)
    s = wf.run(candles, score=True)
    summary = summarise([s], fee_bp=7.5)
    md = markdown_sections(summary, "t")
    for needle in ("acc always-HOLD", "log loss prior", "ECE", "hit rate", "close MAE", "PnL", "vol high",
                   "Pivot head", "Reliability"):
        assert needle in md
    assert summary["overall"]["n"] == len(s.rows)
