"""Level 1 against an independent implementation from PyPI: finta 1.3 ``TA.WILLIAMS_FRACTAL``.

TA-Lib has no fractal function, so finta is the reference. finta's rule is WEAK: with period p it marks
bar i when ``high[i] == max(high[i-p .. i+p])`` (``BearishFractal``, i.e. a swing HIGH) and
``low[i] == min(low[i-p .. i+p])`` (``BullishFractal``, a swing LOW); rolling(center=True) leaves the first
and last p bars NaN. Ours is STRICT. So the exact relation, asserted on every real file, is

    our L1 HIGH at i  <=>  finta BearishFractal at i  AND  high[i] occurs once in high[i-p .. i+p]

(and the same for LOW with low/min), i.e. identical on every bar whose window holds no tie with the
centre, and finta additionally marks the tied extremes our tie rule refuses. Real 1m data is full of
such ties (price ticks), so the tied class is asserted to be non-empty: the mapping is exercised.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd  # type: ignore[import-untyped, unused-ignore]
import pytest

from reftrain.candlefiles import load_candles
from services.pivots.detector import detect_pivots

pytest.importorskip("finta", reason="dev dependency finta==1.3 (the level-1 cross-check) is not installed")
from finta import TA  # type: ignore[import-untyped, unused-ignore]

DATA = Path(__file__).resolve().parents[3] / "data"
FILES = sorted(p.name for p in DATA.glob("*.csv"))
PERIOD = 2


def centre_is_unique(values: npt.NDArray[np.float64], p: int) -> npt.NDArray[np.bool_]:
    """True at i when no other bar in values[i-p .. i+p] equals values[i] (False at the edges)."""
    out = np.zeros(len(values), dtype=bool)
    if len(values) < 2 * p + 1:
        return out
    windows = np.lib.stride_tricks.sliding_window_view(values, 2 * p + 1)
    out[p : len(values) - p] = (windows == windows[:, [p]]).sum(axis=1) == 1
    return out


@pytest.mark.parametrize("name", FILES)
def test_level1_equals_finta_fractals_under_the_tie_mapping(name: str) -> None:
    candles = load_candles(DATA / name)
    df = pd.DataFrame(
        {
            "open": [c["open"] for c in candles],
            "high": [c["high"] for c in candles],
            "low": [c["low"] for c in candles],
            "close": [c["close"] for c in candles],
            "volume": [c["volume"] for c in candles],
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fr = TA.WILLIAMS_FRACTAL(df, period=PERIOD)
    times = np.array([c["open_time"] for c in candles], dtype=np.int64)
    highs, lows = df["high"].to_numpy(), df["low"].to_numpy()
    finta_high = fr["BearishFractal"].fillna(0).to_numpy() == 1
    finta_low = fr["BullishFractal"].fillna(0).to_numpy() == 1
    expected_high = finta_high & centre_is_unique(highs, PERIOD)
    expected_low = finta_low & centre_is_unique(lows, PERIOD)

    l1 = detect_pivots(candles, (PERIOD,))
    index = {int(t): i for i, t in enumerate(times)}
    ours_high = np.zeros(len(candles), dtype=bool)
    ours_low = np.zeros(len(candles), dtype=bool)
    for p in l1:
        i = index[p["pivot_time"]]
        (ours_high if p["kind"] == "HIGH" else ours_low)[i] = True
        assert p["price"] == (highs[i] if p["kind"] == "HIGH" else lows[i])
        assert p["confirmed_at"] == times[i + PERIOD]

    np.testing.assert_array_equal(ours_high, expected_high)
    np.testing.assert_array_equal(ours_low, expected_low)
    # Every one of ours is a finta fractal; finta's extra ones are exactly the tied extremes.
    assert not np.any(ours_high & ~finta_high) and not np.any(ours_low & ~finta_low)
    tied = (finta_high & ~ours_high).sum() + (finta_low & ~ours_low).sum()
    assert tied > 0, "no tied fractal in this file: the mapping would be untested"
    assert ours_high.sum() > 0 and ours_low.sum() > 0
