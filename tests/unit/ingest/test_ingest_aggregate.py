"""Streaming aggregation equals a batch pandas resample (complete buckets only) on every real file."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reftrain.records import TIMEFRAME_MS, Candle
from reftrain.validation import validate_candle
from services.ingest.aggregate import INCOMPLETE_BUCKET, Aggregator, DroppedBucket

DATA = Path(__file__).resolve().parents[3] / "data"
ONE_MINUTE = sorted(p.name for p in DATA.glob("*-1m-*.csv"))
ONE_HOUR = sorted(p.name for p in DATA.glob("*-1h-*.csv"))
LTC = "LTCUSD-1m-2018-04-05_2018-04-06.csv"
Loader = Callable[[str], list[Candle]]


def batch_resample(candles: list[Candle], tf: str) -> tuple[list[Candle], int]:
    """Complete buckets of a pandas resample, as Candles, and the number of incomplete ones.

    pandas groups the rows and computes open/high/low/close/count. The volume is ``math.fsum`` over
    each bucket's rows (as the streaming side does), so it is compared exactly; pandas' own sum,
    which adds in another order, is checked to agree within 1e-12 relative (a few ulps).
    """
    base_ms = TIMEFRAME_MS[candles[0]["timeframe"]]
    ms = TIMEFRAME_MS[tf]
    df = pd.DataFrame(candles)
    df.index = pd.to_datetime(df["open_time"], unit="ms", utc=True)
    df["trades_f"] = df["trades"].astype("float64")  # NaN where None; trade counts are exact in float64
    r = df.resample(pd.Timedelta(milliseconds=ms), origin="epoch", label="left", closed="left")
    agg = pd.DataFrame(
        {
            "open": r["open"].first(),
            "high": r["high"].max(),
            "low": r["low"].min(),
            "close": r["close"].last(),
            "pandas_volume": r["volume"].sum(),
            "trades": r["trades_f"].sum(min_count=1),
            "trades_n": r["trades_f"].count(),
            "n": r["open"].size(),
        }
    )
    need = ms // base_ms
    complete = agg[agg["n"] == need]
    times = np.array([c["open_time"] for c in candles], dtype=np.int64)
    volumes = [c["volume"] for c in candles]
    starts = complete.index.as_unit("ms").asi8.tolist()  # pandas 3 infers the unit: ask for ms
    lo = np.searchsorted(times, starts, side="left").tolist()
    hi = np.searchsorted(times, [s + ms for s in starts], side="left").tolist()
    out: list[Candle] = []
    rows = zip(
        starts,
        lo,
        hi,
        *(
            complete[k].tolist()
            for k in ("open", "high", "low", "close", "pandas_volume", "trades", "trades_n")
        ),
        strict=True,
    )
    for start, a, b, o, h, low, c, pandas_volume, trades, trades_n in rows:
        assert b - a == need
        volume = math.fsum(volumes[a:b])
        assert math.isclose(pandas_volume, volume, rel_tol=1e-12)
        out.append(
            Candle(
                symbol=candles[0]["symbol"],
                timeframe=tf,
                open_time=start,
                close_time=start + ms - 1,
                open=o,
                high=h,
                low=low,
                close=c,
                volume=volume,
                trades=int(trades) if trades_n == need else None,
                source=f"aggregate:{candles[0]['timeframe']}",
            )
        )
    incomplete = int(((agg["n"] > 0) & (agg["n"] < need)).sum())
    return out, incomplete


def stream(agg: Aggregator, candles: list[Candle]) -> tuple[dict[str, list[Candle]], list[DroppedBucket]]:
    emitted: dict[str, list[Candle]] = {tf: [] for tf in agg.targets}
    dropped: list[DroppedBucket] = []
    for c in candles:
        out = agg.push(c)
        for e in out.candles:
            emitted[e["timeframe"]].append(e)
        dropped.extend(out.dropped)
    return emitted, dropped


@pytest.mark.parametrize(
    ("name", "targets"),
    [(n, ("3m", "5m", "15m", "30m", "1h", "4h", "1d")) for n in ONE_MINUTE]
    + [(n, ("4h", "1d")) for n in ONE_HOUR],
)
def test_equals_batch_resample_on_real_data(load_real: Loader, name: str, targets: tuple[str, ...]) -> None:
    candles = load_real(name)
    base = candles[0]["timeframe"]
    agg = Aggregator(targets, base=base)
    emitted, dropped = stream(agg, candles)
    dropped += agg.flush()
    for tf in targets:
        expected, incomplete = batch_resample(candles, tf)
        assert emitted[tf] == expected, tf  # exact: floats compared with ==
        assert len([d for d in dropped if d.timeframe == tf]) == incomplete, tf
        for c in emitted[tf]:
            validate_candle(dict(c))
    # the 1m files of Sep/Oct 2025 hold ~72 complete hours each: the comparison is not vacuous
    if base == "1m":
        assert len(emitted["1h"]) >= 46
        assert len(emitted["5m"]) >= 570


def test_gap_inside_a_bucket_is_not_emitted(load_real: Loader) -> None:
    """LTCUSD misses 2018-04-05 08:12: the 5m, 15m and 1h buckets around it are dropped, counted."""
    agg = Aggregator(("5m", "15m", "1h"))
    emitted, dropped = stream(agg, load_real(LTC))
    t0 = 1_522_886_400_000  # 2018-04-05 00:00 UTC
    at = {d.timeframe: (d.open_time - t0) // 60_000 for d in dropped}
    assert sorted(dropped, key=lambda d: d.timeframe) == [
        DroppedBucket("LTCUSD", "15m", t0 + 480 * 60_000, 14, 15, INCOMPLETE_BUCKET),
        DroppedBucket("LTCUSD", "1h", t0 + 480 * 60_000, 59, 60, INCOMPLETE_BUCKET),
        DroppedBucket("LTCUSD", "5m", t0 + 490 * 60_000, 4, 5, INCOMPLETE_BUCKET),
    ]
    assert at == {"5m": 490, "15m": 480, "1h": 480}
    assert len(emitted["1h"]) == 47  # 48 hours, one incomplete
    assert len(emitted["5m"]) == 575
    assert all(c["source"] == "aggregate:1m" for c in emitted["5m"])


def test_emits_exactly_when_the_last_minute_closes(load_real: Loader) -> None:
    candles = load_real("BTCUSD-1m-2017-09-03_2017-09-04.csv")[:10]
    agg = Aggregator(("5m",))
    outs = [agg.push(c).candles for c in candles]
    assert [len(o) for o in outs] == [0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    (five,) = outs[4]
    assert five["close_time"] == candles[4]["close_time"]
    assert five["volume"] == math.fsum(c["volume"] for c in candles[:5])
    assert five["trades"] is None


def test_trades_none_if_any_none() -> None:
    def mk(t: int, trades: int | None) -> Candle:
        return Candle(
            symbol="X", timeframe="1m", open_time=t * 60_000, close_time=t * 60_000 + 59_999, open=1.0,
            high=2.0, low=0.5, close=1.5, volume=1.0, trades=trades, source="s",
        )  # fmt: skip

    agg = Aggregator(("3m",))
    out = [agg.push(mk(t, tr)).candles for t, tr in enumerate([1, 2, 3, 4, None, 6])]
    assert [o[0]["trades"] for o in out if o] == [6, None]


def test_misuse_raises(load_real: Loader) -> None:
    candles = load_real(LTC)[:3]
    with pytest.raises(ValueError, match="not a multiple"):
        Aggregator(("1m",))
    with pytest.raises(ValueError, match="not a multiple"):
        Aggregator(("5m",), base="3m")
    agg = Aggregator()
    agg.push(candles[1])
    with pytest.raises(ValueError, match="feed only accepted"):
        agg.push(candles[0])
    with pytest.raises(ValueError, match="got a 1h candle"):
        agg.push({**candles[2], "timeframe": "1h"})


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(split=st.integers(0, 2879))
def test_state_round_trip(load_real: Loader, split: int) -> None:
    candles = load_real(LTC)
    targets = ("5m", "15m", "1h", "4h")
    whole, whole_dropped = stream(Aggregator(targets), candles)
    first = Aggregator(targets)
    a, a_dropped = stream(first, candles[:split])
    state: dict[str, Any] = json.loads(json.dumps(first.state()))
    b, b_dropped = stream(Aggregator.from_state(state), candles[split:])
    assert {tf: a[tf] + b[tf] for tf in targets} == whole
    assert a_dropped + b_dropped == whole_dropped
