"""Incremental SMA/EMA equal batch computations over the real data (within 1e-9 relative)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reftrain.records import Candle
from services.ingest.indicators import DEFAULT_PERIODS, Indicators, ema_alpha

DATA = Path(__file__).resolve().parents[3] / "data"
ALL_FILES = sorted(p.name for p in DATA.glob("*.csv"))
LTC = "LTCUSD-1m-2018-04-05_2018-04-06.csv"
Loader = Callable[[str], list[Candle]]
REL = 1e-9


def batch_ema(closes: list[float], period: int) -> list[float | None]:
    """The definition: None for the first period-1 closes, the SMA of the first `period` closes at
    index period-1, then alpha * close + (1 - alpha) * previous."""
    out: list[float | None] = [None] * min(len(closes), period - 1)
    if len(closes) < period:
        return out
    a = ema_alpha(period)
    ema = sum(closes[:period]) / period
    out.append(ema)
    for c in closes[period:]:
        ema = a * c + (1 - a) * ema
        out.append(ema)
    return out


def close_enough(got: list[float | None], want: list[float | None]) -> None:
    assert len(got) == len(want)
    assert [g is None for g in got] == [w is None for w in want]
    g = np.array([x for x in got if x is not None])
    w = np.array([x for x in want if x is not None])
    if len(g):
        worst = float(np.max(np.abs(g - w) / np.abs(w)))
        assert worst <= REL, worst


@pytest.mark.parametrize("name", ALL_FILES)
def test_equal_to_batch_on_real_data(load_real: Loader, name: str) -> None:
    candles = load_real(name)
    ind = Indicators()
    rows = [ind.update(c) for c in candles]
    closes = pd.Series([c["close"] for c in candles], dtype="float64")
    for p in DEFAULT_PERIODS:
        sma = closes.rolling(p).mean()
        close_enough([r[f"sma_{p}"] for r in rows], [None if math.isnan(x) else x for x in sma])
        mine = batch_ema(closes.tolist(), p)
        close_enough([r[f"ema_{p}"] for r in rows], mine)
        # independent cross-check: pandas' recursive EWM started from the same seed
        seeded = pd.Series([mine[p - 1], *closes.iloc[p:].tolist()]).ewm(span=p, adjust=False).mean()
        close_enough([r[f"ema_{p}"] for r in rows][p - 1 :], seeded.tolist())
    assert ind.values(candles[0]["symbol"], candles[0]["timeframe"]) == rows[-1]


def test_none_until_enough_candles(load_real: Loader) -> None:
    candles = load_real(LTC)[:25]
    ind = Indicators(sma_periods=(3, 20), ema_periods=(3,))
    rows = [ind.update(c) for c in candles]
    assert [r["sma_3"] is None for r in rows[:4]] == [True, True, False, False]
    assert rows[2]["ema_3"] == rows[2]["sma_3"] == math.fsum(c["close"] for c in candles[:3]) / 3
    assert rows[18]["sma_20"] is None
    assert rows[19]["sma_20"] is not None
    assert ind.names() == ["sma_3", "sma_20", "ema_3"]
    assert ind.values("NOPE", "1m") == {"sma_3": None, "sma_20": None, "ema_3": None}


def test_series_are_independent_and_order_is_enforced(load_real: Loader) -> None:
    btc = load_real("BTCUSD-1m-2017-09-03_2017-09-04.csv")[:30]
    eth = load_real("ETHUSD-1m-2017-09-03_2017-09-04.csv")[:30]
    mixed = Indicators((5,), (5,))
    for b, e in zip(btc, eth, strict=True):
        mixed.update(b)
        mixed.update(e)
    alone = Indicators((5,), (5,))
    for b in btc:
        alone.update(b)
    assert mixed.values("BTCUSD", "1m") == alone.values("BTCUSD", "1m")
    with pytest.raises(ValueError, match="feed accepted candles"):
        mixed.update(btc[0])
    with pytest.raises(ValueError, match=">= 1"):
        Indicators((0,))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(split=st.integers(0, 600))
def test_state_round_trip(load_real: Loader, split: int) -> None:
    candles = load_real(LTC)[:600]
    whole = Indicators()
    expected = [whole.update(c) for c in candles]
    first = Indicators()
    for c in candles[:split]:
        first.update(c)
    second = Indicators.from_state(json.loads(json.dumps(first.state())))
    assert [second.update(c) for c in candles[split:]] == expected[split:]
