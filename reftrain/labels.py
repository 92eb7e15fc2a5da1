"""The one label rule of the project: what a CANDLE or PIVOT job teaches, and what a ref is scored on.

Torch-free and Kafka-free, so the trainer (every adapter), the ``make run`` report and the offline
backtest import the SAME functions: a model is always scored on the targets it was trained on.

Action label of a CANDLE job (the action head's target)::

    vol   = std(log(close_i / close_{i-1}))  over the ref's window   (window_vol; floor MIN_VOL)
    move  = log(target_close / last_close)
    label = BUY if move > HOLD_BAND * vol, SELL if move < -HOLD_BAND * vol, else HOLD

The band is relative to the window's own volatility: a fixed band (the seed's 2 bp) makes "HOLD or
move" mostly a question of the volatility regime, which scale-free inputs cannot see.
``HOLD_BAND = 0.3`` gives 33-36% HOLD on the bundled 1m files (0.35: 36-41%; measured, see
docs/architecture.md, "Training adapters and targets").

Pivot label of a PIVOT job (the pivot head's target, a prediction AT the window end)::

    FUTURE_LOW   the job's pivot is a LOW with pivot_time  > data_range_end (still to come)
    FUTURE_HIGH  the job's pivot is a HIGH with pivot_time > data_range_end
    PAST         pivot_time <= data_range_end (already inside the window: no future information;
                 these are the negatives)

A pivot job only says that a swing of some level was confirmed within the coordinator's pivot
window of the ref; pivots below ``MIN_PIVOT_LEVEL`` teach nothing (label None).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

ACTIONS: tuple[str, str, str] = ("BUY", "SELL", "HOLD")
ACTION_INDEX: dict[str, int] = {a: i for i, a in enumerate(ACTIONS)}
PIVOT_CLASSES: tuple[str, str, str] = ("FUTURE_LOW", "FUTURE_HIGH", "PAST")
PIVOT_INDEX: dict[str, int] = {c: i for i, c in enumerate(PIVOT_CLASSES)}

HOLD_BAND = 0.3
"""HOLD when |log move| <= HOLD_BAND * window volatility."""
MIN_VOL = 1e-6
"""Floor of the window volatility (a flat window would give a zero band)."""
MIN_PIVOT_LEVEL = 1
"""Pivots of a lower level are not trained on (1 = every confirmed swing)."""


def window_vol(closes: npt.ArrayLike) -> float:
    """Std of the close-to-close log returns of a window's closes (floored at MIN_VOL).

    Equal to the built-in scheme's ``ret_scale`` for the same window, so the report can also use it.
    """
    c = np.asarray(closes, dtype=np.float64)
    if c.ndim != 1 or c.shape[0] < 2 or not np.all(np.isfinite(c)) or np.any(c <= 0.0):
        raise ValueError("window_vol needs >= 2 positive finite closes")
    return max(float(np.std(np.log(c[1:] / c[:-1]))), MIN_VOL)


def action_label(last_close: float, close: float, vol: float, band: float = HOLD_BAND) -> str:
    """BUY / SELL / HOLD of the realised move ``log(close / last_close)`` against ``band * vol``."""
    if not (last_close > 0 and close > 0 and math.isfinite(last_close) and math.isfinite(close)):
        raise ValueError(f"prices must be positive and finite: {last_close!r}, {close!r}")
    move = math.log(close / last_close)
    threshold = band * max(vol, MIN_VOL)
    if move > threshold:
        return "BUY"
    if move < -threshold:
        return "SELL"
    return "HOLD"


def pivot_label(data_range_end: int, pivot: Mapping[str, Any], min_level: int = MIN_PIVOT_LEVEL) -> str | None:
    """FUTURE_LOW / FUTURE_HIGH / PAST for a pivot job of a ref ending at ``data_range_end``."""
    kind, level = pivot["kind"], pivot["level"]
    if kind not in ("LOW", "HIGH"):
        raise ValueError(f"pivot kind must be LOW or HIGH, got {kind!r}")
    if int(level) < min_level:
        return None
    if int(pivot["pivot_time"]) <= int(data_range_end):
        return "PAST"
    return "FUTURE_LOW" if kind == "LOW" else "FUTURE_HIGH"


def previous_move(prev_close: float, last_close: float, vol: float, band: float = HOLD_BAND) -> str:
    """The naive 'previous move' forecast: the label the last bar would have had."""
    return action_label(prev_close, last_close, vol, band)


def label_mix(labels: Sequence[str]) -> dict[str, float]:
    """Share of each label (keys in the order they first appear sorted by name)."""
    n = len(labels)
    out: dict[str, float] = {}
    for lab in sorted(set(labels)):
        out[lab] = sum(1 for x in labels if x == lab) / n
    return out
