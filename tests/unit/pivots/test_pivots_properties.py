"""Property-based checks (hypothesis) on SYNTHETIC series.

Why synthetic here: the real files (test_pivots_realdata.py) fix one strength tuple and one shape of
market, while these generators reach what real data hits rarely or never: prices drawn from a tiny
alphabet so ties occur in almost every window (at every level, not only level 1), long flat runs,
outside bars, very short series, mixed strengths 1..3 per level, irregular gaps, and raw feeds with
injected duplicates, corrections, late and invalid candles. The properties are the contract:
stream == batch, no repainting, and checkpoint/restore equivalence.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st

from reftrain.records import Candle, Pivot
from services.pivots.detector import CandleOutcome, PivotDetector, accepted_candles, detect_pivots

MIN = 60_000
T0 = 1_600_000_020_000  # 1m-aligned
PROFILE = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_candle(open_time: int, high: float, low: float, close: float) -> Candle:
    return Candle(
        symbol="SYN",
        timeframe="1m",
        open_time=open_time,
        close_time=open_time + MIN - 1,
        open=close,
        high=high,
        low=low,
        close=close,
        volume=1.0,
        trades=None,
        source="hypothesis",
    )


_STEPS = (1, 1, 1, 1, 1, 1, 2, 5)  # bars between open_times: mostly contiguous, some gaps


@st.composite
def clean_series(draw: st.DrawFn, max_len: int = 400) -> list[Candle]:
    """Strictly increasing open_times (with random gaps), high >= low, ties at every level.

    One byte per candle keeps generation cheap and still shrinks well (byte 0 is a contiguous flat
    candle). Bits 3-4 give the high-low span, bits 5-7 the time step. Three shapes for the high:
    "tiny" (bits 0-2 mod 5: ties in nearly every window, at level 2 too), "wide" (the whole byte: few
    ties, deep levels) and "walk" (a random walk with steps -4..4: trends and flat stretches).
    """
    n = draw(st.integers(0, max_len))
    data = draw(st.binary(min_size=n, max_size=n))
    shape = draw(st.sampled_from(["tiny", "wide", "walk"]))
    out: list[Candle] = []
    t, level = T0, 1000
    for b in data:
        span, step = (b >> 3) & 3, _STEPS[b >> 5]
        if shape == "tiny":
            h = (b & 7) % 5
        elif shape == "wide":
            h = b
        else:
            level += b % 9 - 4
            h = level
        t += step * MIN
        out.append(make_candle(t, 100.0 + h, 100.0 + h - span, 100.0 + h - span / 2))
    return out


strength_tuples = st.lists(st.sampled_from([1, 1, 2, 3]), min_size=1, max_size=5).map(tuple)


def run_stream(candles: list[Candle], strengths: tuple[int, ...]) -> list[Pivot]:
    det = PivotDetector("SYN", "1m", strengths)
    return [p for c in candles for p in det.on_candle(c)]


@PROFILE
@given(candles=clean_series(), strengths=strength_tuples)
def test_stream_equals_batch(candles: list[Candle], strengths: tuple[int, ...]) -> None:
    batch = detect_pivots(candles, strengths)
    assert run_stream(candles, strengths) == batch
    target(float(max((p["level"] for p in batch), default=0)), label="deepest level reached")


@PROFILE
@given(candles=clean_series(), strengths=strength_tuples, data=st.data())
def test_no_repainting(candles: list[Candle], strengths: tuple[int, ...], data: st.DataObject) -> None:
    """Pivots known after candle n are exactly the first pivots of the full run, unchanged."""
    full = detect_pivots(candles, strengths)
    det = PivotDetector("SYN", "1m", strengths)
    emitted: list[Pivot] = []
    cuts = set(data.draw(st.lists(st.integers(1, max(1, len(candles))), max_size=4)))
    for n, c in enumerate(candles, start=1):
        new = det.on_candle(c)
        assert all(p["confirmed_at"] == c["open_time"] > p["pivot_time"] for p in new)
        emitted.extend(new)
        assert emitted == full[: len(emitted)]
        if n in cuts:
            assert detect_pivots(candles[:n], strengths) == emitted
    assert emitted == full
    assert len({p["pivot_id"] for p in full}) == len(full)


@PROFILE
@given(candles=clean_series(), strengths=strength_tuples, data=st.data())
def test_restore_equivalence(candles: list[Candle], strengths: tuple[int, ...], data: st.DataObject) -> None:
    """Checkpoint (through JSON text) and restore at random points: identical output to one run."""
    cuts = set(data.draw(st.lists(st.integers(0, max(0, len(candles) - 1)), max_size=6)))
    det = PivotDetector("SYN", "1m", strengths)
    got: list[Pivot] = []
    for i, c in enumerate(candles):
        if i in cuts:
            state = json.loads(json.dumps(det.to_dict(), allow_nan=False))
            det = PivotDetector.from_dict(state)
        got.extend(det.on_candle(c))
    assert got == run_stream(candles, strengths)
    final = det.to_dict()
    assert PivotDetector.from_dict(json.loads(json.dumps(final))).to_dict() == final


@dataclass
class Injection:
    kind: CandleOutcome
    at: int  # inserted after the at-th clean candle (1-based)
    ref: int  # which earlier clean candle it imitates (0-based, for OUT_OF_ORDER)


@st.composite
def dirty_feeds(draw: st.DrawFn) -> tuple[list[Candle], list[Candle], Counter[CandleOutcome]]:
    """A clean series plus junk inserted into it: returns (clean, raw feed, expected junk outcomes)."""
    clean = draw(clean_series(max_len=150))
    if not clean:
        return clean, [], Counter()
    bad_kinds = [
        CandleOutcome.DUPLICATE,
        CandleOutcome.CONFLICT,
        CandleOutcome.OUT_OF_ORDER,
        CandleOutcome.INVALID,
    ]
    injections = draw(
        st.lists(
            st.builds(
                Injection,
                kind=st.sampled_from(bad_kinds),
                at=st.integers(1, len(clean)),
                ref=st.integers(0, len(clean) - 1),
            ),
            max_size=30,
        )
    )
    by_pos: dict[int, list[Injection]] = {}
    for inj in injections:
        by_pos.setdefault(inj.at, []).append(inj)
    raw: list[Candle] = []
    expected: Counter[CandleOutcome] = Counter()
    for i, c in enumerate(clean, start=1):
        raw.append(c)
        for inj in by_pos.get(i, []):
            last = clean[i - 1]
            if inj.kind is CandleOutcome.DUPLICATE:
                raw.append({**last, "source": "redelivery"})
            elif inj.kind is CandleOutcome.CONFLICT:
                raw.append({**last, "close": last["close"] + 0.125, "volume": 2.0})
            elif inj.kind is CandleOutcome.OUT_OF_ORDER:
                if i < 2:
                    continue  # nothing older than the first candle to imitate
                raw.append({**clean[inj.ref % (i - 1)], "high": 1e6})  # even extreme values change nothing
            else:
                raw.append({**last, "open_time": last["open_time"] + MIN, "high": float("nan")})
            expected[inj.kind] += 1
    return clean, raw, expected


@PROFILE
@given(feed=dirty_feeds(), strengths=strength_tuples)
def test_dirty_feed_gives_the_pivots_of_the_clean_series(
    feed: tuple[list[Candle], list[Candle], Counter[CandleOutcome]], strengths: tuple[int, ...]
) -> None:
    clean, raw, expected = feed
    det = PivotDetector("SYN", "1m", strengths)
    got: list[Pivot] = []
    for c in raw:
        result = det.feed(c)
        if result.outcome is not CandleOutcome.ACCEPTED:
            assert result.pivots == []
        got.extend(result.pivots)
    assert got == detect_pivots(clean, strengths)
    assert accepted_candles(raw) == clean
    assert det.counts[CandleOutcome.ACCEPTED] == len(clean)
    for kind, n in expected.items():
        assert det.counts[kind] == n, kind
