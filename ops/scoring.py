"""Metrics a quant would ask for, as pure numpy functions shared by ``make backtest``
(ops/backtest.py) and the ``make run`` report (ops/analysis.py): the same numbers mean the same thing.

Conventions: ``probs`` rows are (BUY, SELL, HOLD) as ``reftrain.labels.ACTIONS``; ``y`` are label
indices; ``prior`` rows are the class-prior baseline's probabilities (fitted on data before each
prediction by the caller). Everything returns plain floats/ints/lists (JSON-ready).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

EPS = 1e-12
HOLD = 2


def log_loss(p: npt.NDArray[np.float64], y: npt.NDArray[np.int64]) -> float | None:
    if len(y) == 0:
        return None
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], EPS, None))))


def brier(p: npt.NDArray[np.float64], y: npt.NDArray[np.int64]) -> float | None:
    if len(y) == 0:
        return None
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def accuracy(pred: npt.NDArray[np.int64], y: npt.NDArray[np.int64]) -> float | None:
    return float(np.mean(pred == y)) if len(y) else None


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float | None, float | None]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return None, None
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return c - h, c + h


def reliability(conf: npt.NDArray[np.float64], correct: npt.NDArray[np.bool_], bins: int = 10) -> dict[str, Any]:
    """Reliability table of ``confidence`` (equal-width bins on [0, 1]) and its ECE."""
    rows = []
    ece = 0.0
    n = len(conf)
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        sel = (conf >= lo) & ((conf < hi) if b < bins - 1 else (conf <= hi))
        m = int(sel.sum())
        if m == 0:
            continue
        mc, acc = float(conf[sel].mean()), float(correct[sel].mean())
        ece += m / n * abs(mc - acc)
        rows.append({"bin": f"{lo:.1f}-{hi:.1f}", "n": m, "mean_confidence": mc, "accuracy": acc})
    return {"table": rows, "ece": float(ece) if n else None, "n": n}


def pnl(positions: npt.NDArray[np.float64], log_rets: npt.NDArray[np.float64], fee_bp: float) -> dict[str, float]:
    """PnL (sum of log returns, in bp) of holding ``positions[i]`` over ``log_rets[i]`` in time order,
    paying ``fee_bp`` per side on every change of position (turnover = sum |change|, from flat)."""
    prev = np.concatenate([[0.0], positions[:-1]]) if len(positions) else positions
    turnover = float(np.sum(np.abs(positions - prev)))
    gross = float(np.sum(positions * log_rets)) * 1e4
    return {"gross_bp": gross, "fees_bp": turnover * fee_bp, "net_bp": gross - turnover * fee_bp,
            "turnover": turnover, "bars_in_market": float(np.sum(positions != 0))}


def action_block(probs: npt.NDArray[np.float64], y: npt.NDArray[np.int64], prior: npt.NDArray[np.float64],
                 prev_label: npt.NDArray[np.int64], log_ret: npt.NDArray[np.float64],
                 pred_close_bp: npt.NDArray[np.float64] | None, fee_bp: float) -> dict[str, Any]:
    """Every action-head number for one group of scored predictions (rows in time order).

    ``prev_label``: the previous bar's label (-1 when unknown); ``log_ret``: realised log return of
    the target bar vs the last close; ``pred_close_bp``: predicted close vs last close in bp.
    """
    n = len(y)
    pred = np.argmax(probs, axis=1) if n else np.zeros(0, dtype=np.int64)
    conf = probs[np.arange(n), pred] if n else np.zeros(0)
    known = prev_label >= 0
    directional = pred != HOLD
    moved = log_ret != 0
    hits_sel = directional & moved
    hits = int(np.sum(np.sign(log_ret[hits_sel]) == np.where(pred[hits_sel] == 0, 1.0, -1.0)))
    lo, hi = wilson(hits, int(hits_sel.sum()))
    positions = np.where(pred == 0, 1.0, np.where(pred == 1, -1.0, 0.0))
    out: dict[str, Any] = {
        "n": n,
        "label_mix": {a: float(np.mean(y == i)) if n else None for i, a in enumerate(("BUY", "SELL", "HOLD"))},
        "predicted_mix": {a: float(np.mean(pred == i)) if n else None for i, a in enumerate(("BUY", "SELL", "HOLD"))},
        "accuracy": {"model": accuracy(pred, y), "class_prior": accuracy(np.argmax(prior, axis=1), y),
                     "always_hold": accuracy(np.full(n, HOLD), y),
                     "previous_move": accuracy(prev_label[known], y[known])},
        "log_loss": {"model": log_loss(probs, y), "class_prior": log_loss(prior, y)},
        "brier": {"model": brier(probs, y), "class_prior": brier(prior, y)},
        "reliability": reliability(conf, pred == y),
        "directional": {"n": int(hits_sel.sum()), "hit_rate": hits / max(int(hits_sel.sum()), 1)
                        if hits_sel.any() else None, "ci95": [lo, hi]},
        "pnl": {"model": pnl(positions, log_ret, fee_bp),
                "buy_and_hold": pnl(np.ones(n), log_ret, fee_bp),
                "flat": pnl(np.zeros(n), log_ret, fee_bp), "fee_bp_per_side": fee_bp},
    }
    if pred_close_bp is not None:
        actual_bp = log_ret * 1e4
        out["candle_close_mae_bp"] = {"model": float(np.mean(np.abs(pred_close_bp - actual_bp))) if n else None,
                                      "no_change": float(np.mean(np.abs(actual_bp))) if n else None}
    return out


def pivot_block(probs: npt.NDArray[np.float64], y: npt.NDArray[np.int64], base: npt.NDArray[np.float64]
                ) -> dict[str, Any]:
    """Pivot head vs its base rate (class frequencies of earlier pivot jobs) on pivot jobs."""
    classes = ("FUTURE_LOW", "FUTURE_HIGH", "PAST")
    return {"n": len(y), "label_mix": {c: float(np.mean(y == i)) if len(y) else None for i, c in enumerate(classes)},
            "log_loss": {"model": log_loss(probs, y), "base_rate": log_loss(base, y)},
            "accuracy": {"model": accuracy(np.argmax(probs, axis=1) if len(y) else y, y),
                         "base_rate": accuracy(np.argmax(base, axis=1) if len(y) else y, y)}}


def terciles(values: Sequence[float]) -> tuple[float, float]:
    """Cut points of the volatility terciles (low / mid / high) of a group."""
    v = np.asarray(values, dtype=np.float64)
    return float(np.quantile(v, 1 / 3)), float(np.quantile(v, 2 / 3))
