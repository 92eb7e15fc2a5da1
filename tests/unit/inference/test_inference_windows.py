"""Window rules of the inference service on real candles: the window ends at the candle that just
closed and never contains anything later (no look-ahead), is never padded, tells the truth about
gaps, and one batched store read per series serves every candle exactly as a read per candle would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reftrain.records import Candle
from services.inference.windows import (
    Outcome,
    bars_spanned,
    missing_bars,
    plan_reads,
    select_window,
    target_timestamp,
)
from tests.support import real_candles
from tests.unit.inference.conftest import BTC_1H, MemStore, to_window

MIN = 60_000
HOUR = 3_600_000
ETH_200 = real_candles("ETHUSDT-1m-2025-09-22_2025-09-25.csv", limit=200)


def test_target_is_horizon_calendar_bars_after_the_inference_time() -> None:
    assert target_timestamp(1_000 * MIN, MIN, 1) == 1_001 * MIN
    assert target_timestamp(1_000 * HOUR, HOUR, 3) == 1_003 * HOUR
    with pytest.raises(ValueError, match="look-ahead"):
        target_timestamp(1_000 * MIN, MIN, 0)


def test_window_ends_at_the_candle_and_excludes_everything_after_it(btc: list[Candle]) -> None:
    block = to_window(btc)  # the store already holds 400 candles AFTER the inference time
    t = btc[599]["open_time"]
    sel = select_window(block, t, 600)
    assert sel.outcome is Outcome.OK and sel.window is not None
    w = sel.window
    assert len(w) == 600 and w.end == t and w.start == btc[0]["open_time"]
    assert int(w.open_time.max()) == t  # nothing after the inference time
    target = target_timestamp(w.end, MIN, 1)
    assert target > w.end and target not in set(w.open_time.tolist())  # the target candle is not an input
    assert np.array_equal(w.values, block.values[:600])  # the raw rows, untouched


def test_fewer_rows_than_window_size_waits_and_is_never_padded(btc: list[Candle]) -> None:
    block = to_window(btc[:599])
    sel = select_window(block, btc[598]["open_time"], 600)
    assert sel.outcome is Outcome.WAITING and sel.window is None and sel.rows_available == 599
    # the 600th candle arrives: exactly 600 rows, the earliest candle included, no filler row
    sel = select_window(to_window(btc[:600]), btc[599]["open_time"], 600)
    assert sel.outcome is Outcome.OK and sel.window is not None and len(sel.window) == 600


def test_a_candle_missing_from_the_store_gets_no_window(btc: list[Candle]) -> None:
    without = to_window(btc[:700] + btc[701:])
    sel = select_window(without, btc[700]["open_time"], 600)
    # a window ending at candle 699 would claim an inference time the model never saw
    assert sel.outcome is Outcome.NOT_IN_STORE and sel.window is None


def test_gap_inside_the_window_range_spans_more_bars_than_rows(ltc: list[Candle]) -> None:
    """LTCUSD 1m has one missing bar between rows 491 and 492: a window is 600 ROWS; its range then
    covers 601 bars until the gap leaves it, and the row count and range say so."""
    block = to_window(ltc)
    assert ltc[492]["open_time"] - ltc[491]["open_time"] == 2 * MIN
    cases = {  # last row -> (first row, bars spanned)
        599: (0, 601),
        1090: (491, 601),  # the first row is the one just before the gap: still inside
        1091: (492, 600),  # the gap has just left the window
        1100: (501, 600),
    }
    for last, (first, spanned) in cases.items():
        sel = select_window(block, ltc[last]["open_time"], 600)
        assert sel.window is not None
        w = sel.window
        assert (len(w), w.start, w.end) == (600, ltc[first]["open_time"], ltc[last]["open_time"])
        assert bars_spanned(w.start, w.end, MIN) == spanned
        assert missing_bars(w, MIN) == spanned - 600


def test_gaps_of_real_exchange_outages_are_accounted_bar_for_bar() -> None:
    candles = real_candles(BTC_1H, limit=6000)
    block = to_window(candles)
    steps = np.diff(block.open_time) // HOUR
    assert steps.max() > 1  # the file has outages in its first 6000 hours
    for last in range(599, len(candles), 37):
        sel = select_window(block, candles[last]["open_time"], 600)
        assert sel.window is not None
        first = last - 599
        assert missing_bars(sel.window, HOUR) == int((steps[first:last] - 1).sum())


def test_bars_spanned_refuses_a_misaligned_range() -> None:
    with pytest.raises(ValueError):
        bars_spanned(0, MIN + 1, MIN)
    with pytest.raises(ValueError):
        bars_spanned(MIN, 0, MIN)


def test_plan_reads_groups_a_catch_up_into_one_read_and_splits_long_spans() -> None:
    times = [i * MIN for i in range(1000, 1200)]
    (plan,) = plan_reads(times, 600, MIN)
    assert (plan.n, plan.end, len(plan.times)) == (600 + 199, 1199 * MIN, 200)
    plans = plan_reads(times, 600, MIN, max_rows=700)
    assert [len(p.times) for p in plans] == [101, 99]
    assert all(p.n <= 700 for p in plans)
    assert sorted(t for p in plans for t in p.times) == times


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=2, max_value=30),  # window size
    st.lists(st.integers(min_value=0, max_value=199), max_size=60),  # rows deleted (gaps)
    st.lists(st.integers(min_value=0, max_value=199), min_size=1, max_size=40),  # candles of the batch
    st.integers(min_value=2, max_value=80),  # max rows per read
)
def test_batched_reads_select_exactly_what_a_read_per_candle_selects(
        window_size: int, deleted: list[int], batch: list[int], max_rows: int) -> None:
    candles = ETH_200
    kept = [c for i, c in enumerate(candles) if i not in set(deleted)]
    store = MemStore(Path("/nonexistent"), kept)
    times = [candles[i]["open_time"] for i in batch]
    got = {}
    for plan in plan_reads(times, window_size, MIN, max_rows=max_rows):
        block = store.read_last("ETHUSDT", "1m", plan.n, plan.end)
        assert len(block) <= plan.n
        for t in plan.times:
            got[t] = select_window(block, t, window_size)
    assert set(got) == set(times)
    for t, sel in got.items():
        direct = store.read_last("ETHUSDT", "1m", window_size, t)
        if sel.outcome is Outcome.OK:
            assert sel.window is not None and sel.window.checksum() == direct.checksum()
            assert len(sel.window) == window_size
        elif sel.outcome is Outcome.WAITING:
            assert len(direct) < window_size and direct.end == t
        else:
            assert len(direct) == 0 or direct.end != t
