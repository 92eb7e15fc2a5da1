"""Hand-made series that pin the exact rule: strictness, ties, edges, gaps, levels, confirmation time,
order, input hygiene, and the checkpoint format. Each case runs through BOTH the stream and the batch."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import fastavro
import pytest

from reftrain.candlefiles import load_candles
from reftrain.records import Candle, Pivot, pivot_id, series_key
from reftrain.validation import validate_pivot
from services.pivots.detector import (
    DEFAULT_STRENGTHS,
    CandleOutcome,
    PivotDetector,
    accepted_candles,
    detect_pivots,
    pivot_order_key,
)

ROOT = Path(__file__).resolve().parents[3]
MIN = 60_000
T0 = 1_700_000_040_000  # a 1m-aligned open_time


def candle(i: int, high: float, low: float | None = None) -> Candle:
    """Candle number i of a contiguous 1m series (gaps: pass a larger i)."""
    low = high - 1.0 if low is None else low
    open_time = T0 + i * MIN
    mid = (high + low) / 2
    return Candle(
        symbol="TEST",
        timeframe="1m",
        open_time=open_time,
        close_time=open_time + MIN - 1,
        open=mid,
        high=high,
        low=low,
        close=mid,
        volume=1.0,
        trades=None,
        source="unit",
    )


def series(highs: Sequence[float], lows: Sequence[float] | None = None) -> list[Candle]:
    if lows is None:
        return [candle(i, h) for i, h in enumerate(highs)]
    return [candle(i, h, lo) for i, (h, lo) in enumerate(zip(highs, lows, strict=True))]


def stream(candles: Sequence[Candle], strengths: Sequence[int] = DEFAULT_STRENGTHS) -> list[Pivot]:
    det = PivotDetector("TEST", "1m", strengths)
    return [p for c in candles for p in det.on_candle(c)]


def both(candles: Sequence[Candle], strengths: Sequence[int] = DEFAULT_STRENGTHS) -> list[Pivot]:
    """Run both implementations, require equality, return the pivots."""
    s = stream(candles, strengths)
    b = detect_pivots(candles, strengths)
    assert s == b
    return b


def summary(pivots: Sequence[Pivot]) -> list[tuple[int, str, int, float, int]]:
    """(level, kind, pivot index, price, confirming index) with indices relative to T0."""
    return [
        (p["level"], p["kind"], (p["pivot_time"] - T0) // MIN, p["price"], (p["confirmed_at"] - T0) // MIN)
        for p in pivots
    ]


def highs_only(pivots: Sequence[Pivot]) -> list[tuple[int, str, int, float, int]]:
    return [x for x in summary(pivots) if x[1] == "HIGH"]


# ---- level 1 -------------------------------------------------------------------------------------


def test_single_peak_is_confirmed_by_the_second_candle_after_it() -> None:
    got = highs_only(both(series([1, 2, 5, 3, 2]), (2,)))
    assert got == [(1, "HIGH", 2, 5.0, 4)]


def test_no_pivot_before_the_right_side_is_complete() -> None:
    assert highs_only(both(series([1, 2, 5, 3]), (2,))) == []


def test_first_and_last_candles_are_never_pivots() -> None:
    # The highest high sits at index 0 and at the last index: no left (right) side, no pivot.
    assert highs_only(both(series([9, 2, 3, 2, 9]), (2,))) == []


@pytest.mark.parametrize(
    "highs",
    [
        [1, 2, 5, 5, 2, 1],  # adjacent equal highs (flat top)
        [1, 5, 2, 5, 2, 1],  # equal high two bars apart, still inside the window
        [5, 2, 5, 2, 1],  # tie with the left edge of the window
    ],
)
def test_a_tie_anywhere_in_the_window_makes_no_pivot(highs: list[float]) -> None:
    """Tie rule: strict on both sides, so equal highs never make a HIGH (nor equal lows a LOW)."""
    assert highs_only(both(series(highs), (2,))) == []


def test_a_tie_just_outside_the_window_does_not_matter() -> None:
    got = highs_only(both(series([5, 1, 2, 5, 3, 2]), (2,)))
    assert got == [(1, "HIGH", 3, 5.0, 5)]


def test_equal_lows_make_no_low_but_a_strict_low_does() -> None:
    lows = [5, 4, 1, 1, 4, 5, 3, 0, 3, 4]
    highs = [x + 10 for x in lows]
    got = [x for x in summary(both(series(highs, lows), (2,))) if x[1] == "LOW"]
    assert got == [(1, "LOW", 7, 0.0, 9)]


def test_outside_bar_is_both_a_high_and_a_low_high_listed_first() -> None:
    highs = [5, 5, 9, 5, 5]
    lows = [3, 3, 1, 3, 3]
    got = summary(both(series(highs, lows), (2,)))
    assert got == [(1, "HIGH", 2, 9.0, 4), (1, "LOW", 2, 1.0, 4)]


def test_strength_one_and_three() -> None:
    assert highs_only(both(series([1, 3, 2, 4, 1]), (1,))) == [(1, "HIGH", 1, 3.0, 2), (1, "HIGH", 3, 4.0, 4)]
    # With strength 3 the 4 at index 3 needs three lower highs on each side.
    assert highs_only(both(series([1, 3, 2, 4, 1, 2, 3]), (3,))) == [(1, "HIGH", 3, 4.0, 6)]
    assert highs_only(both(series([1, 3, 2, 4, 1, 2, 4]), (3,))) == []


def test_gaps_are_not_filled_neighbours_are_the_received_candles() -> None:
    # Candle 2 is the peak; its right neighbours arrive 10 and 50 minutes later: still a pivot,
    # confirmed at the open_time of the second received candle after it.
    cs = [candle(0, 1), candle(1, 2), candle(2, 5), candle(12, 3), candle(52, 2)]
    got = highs_only(both(cs, (2,)))
    assert got == [(1, "HIGH", 2, 5.0, 52)]


# ---- higher levels -------------------------------------------------------------------------------

# Level-1 HIGHs of this series (strength 1): indices 1(3), 3(6), 5(4), 7(8), 9(5), 11(7), 13(2), each
# confirmed by the next candle. Level 2 (strength 1 among the level-1 HIGHs): 6@3 (3 < 6 > 4, confirmed
# when 4@5 is, at 6), 8@7 (4 < 8 > 5, confirmed at 10) and 7@11 (5 < 7 > 2, confirmed at 14).
L2_HIGHS = [1, 3, 0, 6, 0, 4, 0, 8, 0, 5, 0, 7, 0, 2, 0]


def test_level_two_from_level_one_highs_and_its_confirmation_time() -> None:
    got = highs_only(both(series(L2_HIGHS, [h - 0.5 for h in L2_HIGHS]), (1, 1)))
    l1 = [x for x in got if x[0] == 1]
    l2 = [x for x in got if x[0] == 2]
    assert [(i, p, c) for _, _, i, p, c in l1] == [
        (1, 3.0, 2),
        (3, 6.0, 4),
        (5, 4.0, 6),
        (7, 8.0, 8),
        (9, 5.0, 10),
        (11, 7.0, 12),
        (13, 2.0, 14),
    ]
    assert l2 == [(2, "HIGH", 3, 6.0, 6), (2, "HIGH", 7, 8.0, 10), (2, "HIGH", 11, 7.0, 14)]
    # Without the last candle 2@13 is unconfirmed, so 7@11 is not (yet) a level-2 HIGH.
    cut = L2_HIGHS[:-1]
    assert [x for x in highs_only(both(series(cut, [h - 0.5 for h in cut]), (1, 1))) if x[0] == 2] == l2[:2]


def test_level_k_plus_one_uses_only_same_kind_neighbours() -> None:
    """A level-2 HIGH is compared with level-1 HIGHs only; the LOWs in between do not count."""
    highs = [1, 3, 0, 6, 0, 4, 0]
    lows = [h - 0.5 for h in highs]
    # Deep LOWs between the highs must not affect which HIGHs are promoted.
    lows_deep = [-100 if h == 0 else lo for h, lo in zip(highs, lows, strict=True)]
    assert highs_only(both(series(highs, lows), (1, 1))) == highs_only(both(series(highs, lows_deep), (1, 1)))


def test_equal_level_one_highs_block_each_other_at_level_two() -> None:
    highs = [1, 3, 0, 6, 0, 6, 0, 2, 0]  # two level-1 HIGHs of 6: neither is a level-2 HIGH
    got = highs_only(both(series(highs, [h - 0.5 for h in highs]), (1, 1)))
    assert [x for x in got if x[0] == 2] == []


# Level-1 HIGHs 1,2,1,5,1,2,1 -> level-2 HIGHs 2,5,2 -> level-3 HIGH 5 (all strength 1).
NESTED = [0, 1, 0, 2, 0, 1, 0, 5, 0, 1, 0, 2, 0, 1, 0]


def test_a_level_k_pivot_is_also_emitted_at_every_lower_level_ordered_by_confirmation() -> None:
    pivots = both(series(NESTED, [h - 0.5 for h in NESTED]), (1, 1, 1))
    peak = [p for p in pivots if p["pivot_time"] == T0 + 7 * MIN and p["kind"] == "HIGH"]
    assert [p["level"] for p in peak] == [1, 2, 3]
    assert len({p["pivot_id"] for p in peak}) == 3
    # L1 by the next candle (8); L2 when the next L1 HIGH (1@9) is confirmed (10); L3 when the next
    # L2 HIGH (2@11) is confirmed, i.e. when its right L1 neighbour 1@13 is confirmed (14).
    assert [(p["confirmed_at"] - T0) // MIN for p in peak] == [8, 10, 14]
    assert highs_only(pivots)[-3:] == [
        (1, "HIGH", 13, 1.0, 14),
        (2, "HIGH", 11, 2.0, 14),
        (3, "HIGH", 7, 5.0, 14),
    ]
    assert pivots == sorted(pivots, key=pivot_order_key)


def test_levels_beyond_the_configured_count_are_not_emitted() -> None:
    lows = [h - 0.5 for h in NESTED]
    assert max(p["level"] for p in both(series(NESTED, lows), (1, 1, 1, 1))) == 3
    assert max(p["level"] for p in both(series(NESTED, lows), (1, 1))) == 2
    assert max(p["level"] for p in both(series(NESTED, lows), (1,))) == 1


# ---- records -------------------------------------------------------------------------------------


def test_records_match_the_contract_and_the_avro_schema() -> None:
    schema = fastavro.parse_schema(json.loads((ROOT / "schemas" / "pivot.avsc").read_text()))
    cs = load_candles(ROOT / "data" / "LTCUSD-1m-2018-04-05_2018-04-06.csv")
    pivots = detect_pivots(cs, (2, 3, 2))
    assert {p["strength"] for p in pivots if p["level"] == 2} == {3}
    for p in pivots:
        fastavro.validation.validate(p, schema, raise_errors=True)
        validate_pivot(dict(p))
        assert p["pivot_id"] == pivot_id(series_key("LTCUSD", "1m"), p["level"], p["kind"], p["pivot_time"])
        assert isinstance(p["price"], float) and isinstance(p["pivot_time"], int)


def test_invalid_strengths_are_refused() -> None:
    for bad in [(), (0,), (2, -1), (2.0,)]:
        with pytest.raises(ValueError):
            PivotDetector("TEST", "1m", bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            detect_pivots(series([1, 2, 3]), bad)  # type: ignore[arg-type]


def test_batch_refuses_unclean_input() -> None:
    cs = series([1, 2, 3])
    with pytest.raises(ValueError):
        detect_pivots([cs[0], cs[2], cs[1]])
    with pytest.raises(ValueError):
        detect_pivots([cs[0], cs[0]])
    with pytest.raises(ValueError):
        detect_pivots([candle(0, 1.0, 2.0)])


# ---- input hygiene -------------------------------------------------------------------------------


def state_without_counts(det: PivotDetector) -> dict[str, object]:
    d = det.to_dict()
    d.pop("counts")
    return d


def test_duplicate_conflict_out_of_order_and_invalid_leave_the_state_unchanged() -> None:
    cs = series([1, 2, 5, 3, 2, 1])
    det = PivotDetector("TEST", "1m", (2,))
    for c in cs[:4]:
        assert det.feed(c).outcome is CandleOutcome.ACCEPTED
    before = state_without_counts(det)
    cases = [
        (dict(cs[3]), CandleOutcome.DUPLICATE),
        ({**cs[3], "source": "other-feed"}, CandleOutcome.DUPLICATE),  # source is not a value
        ({**cs[3], "close": cs[3]["close"] + 0.25}, CandleOutcome.CONFLICT),
        ({**cs[3], "trades": 7}, CandleOutcome.CONFLICT),
        (dict(cs[1]), CandleOutcome.OUT_OF_ORDER),
        ({**cs[4], "open_time": cs[0]["open_time"] - MIN}, CandleOutcome.OUT_OF_ORDER),
        ({**cs[4], "high": float("nan")}, CandleOutcome.INVALID),
        ({**cs[4], "low": cs[4]["high"] + 1}, CandleOutcome.INVALID),
    ]
    for bad, expected in cases:
        result = det.feed(bad)  # type: ignore[arg-type]
        assert result.outcome is expected, bad
        assert result.pivots == []
        assert state_without_counts(det) == before
    assert det.counts == {
        CandleOutcome.ACCEPTED: 4,
        CandleOutcome.DUPLICATE: 2,
        CandleOutcome.CONFLICT: 2,
        CandleOutcome.OUT_OF_ORDER: 2,
        CandleOutcome.INVALID: 2,
    }
    # The rejected candles changed nothing: the peak is confirmed exactly as without them.
    assert summary(det.on_candle(cs[4])) == [(1, "HIGH", 2, 5.0, 4)]
    assert det.last_open_time == cs[4]["open_time"]


def test_accepted_candles_is_what_the_stream_accepts() -> None:
    cs = series([1, 2, 5, 3, 2, 1])
    raw = [cs[0], cs[1], cs[1], cs[0], cs[2], {**cs[2], "high": 99.0}, cs[3], cs[4], cs[5]]
    assert accepted_candles(raw) == cs  # type: ignore[arg-type]


def test_a_candle_of_another_series_is_a_routing_error() -> None:
    det = PivotDetector("TEST", "1m")
    with pytest.raises(ValueError):
        det.feed({**candle(0, 1.0), "symbol": "OTHER"})
    with pytest.raises(ValueError):
        det.feed({**candle(0, 1.0), "timeframe": "5m"})


# ---- checkpoint format ---------------------------------------------------------------------------


def test_state_is_plain_json_and_round_trips() -> None:
    det = PivotDetector("TEST", "1m", (2, 1, 3))
    for c in series(L2_HIGHS * 3):
        det.on_candle(c)
    det.feed(series([1])[0])  # one OUT_OF_ORDER, so counts are non-trivial
    text = json.dumps(det.to_dict(), allow_nan=False)
    restored = PivotDetector.from_dict(json.loads(text))
    assert restored.to_dict() == det.to_dict()
    assert restored.strengths == (2, 1, 3)
    assert restored.counts[CandleOutcome.OUT_OF_ORDER] == 1


def test_fresh_state_round_trips() -> None:
    det = PivotDetector("TEST", "1m")
    assert PivotDetector.from_dict(json.loads(json.dumps(det.to_dict()))).to_dict() == det.to_dict()


def test_from_dict_refuses_unknown_versions_and_oversized_state() -> None:
    det = PivotDetector("TEST", "1m", (2, 2))
    good = det.to_dict()
    with pytest.raises(ValueError):
        PivotDetector.from_dict({**good, "version": 99})
    with pytest.raises(ValueError):
        PivotDetector.from_dict({**good, "bars": [[T0 + i * MIN, 2.0, 1.0] for i in range(6)]})
    with pytest.raises(ValueError):
        PivotDetector.from_dict({**good, "windows": {"HIGH": [], "LOW": []}})


def test_state_stays_bounded_on_a_long_real_series() -> None:
    cs = load_candles(ROOT / "data" / "BTCUSDT-1h-2017-08-17_2024-04-21.csv")
    strengths = (2, 3, 2, 2, 4)
    det = PivotDetector("BTCUSDT", "1h", strengths)
    for c in cs:
        det.on_candle(c)
    state = det.to_dict()
    assert len(state["bars"]) <= 2 * strengths[0] + 1
    for kind in ("HIGH", "LOW"):
        for level_window, s in zip(state["windows"][kind], strengths[1:], strict=True):
            assert len(level_window) <= 2 * s + 1
    assert len(json.dumps(state)) < 4096
