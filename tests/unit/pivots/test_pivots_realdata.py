"""Stream == batch, restore equivalence and no repainting on every REAL candle file in data/."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import pytest

from reftrain.candlefiles import load_candles
from reftrain.records import Candle, Pivot
from services.pivots.detector import DEFAULT_STRENGTHS, CandleOutcome, PivotDetector, detect_pivots

DATA = Path(__file__).resolve().parents[3] / "data"
FILES = sorted(p.name for p in DATA.glob("*.csv"))


@cache
def load(name: str) -> tuple[Candle, ...]:
    return tuple(load_candles(DATA / name))


def run_stream(candles: Sequence[Candle], strengths: Sequence[int] = DEFAULT_STRENGTHS) -> list[Pivot]:
    c0 = candles[0]
    det = PivotDetector(c0["symbol"], c0["timeframe"], strengths)
    out: list[Pivot] = []
    for c in candles:
        result = det.feed(c)
        assert result.outcome is CandleOutcome.ACCEPTED
        out.extend(result.pivots)
    return out


def test_every_data_file_is_found() -> None:
    assert len(FILES) >= 9, FILES


@pytest.mark.parametrize("name", FILES)
def test_stream_equals_batch_on_real_data(name: str) -> None:
    candles = load(name)
    batch = detect_pivots(candles)
    assert run_stream(candles) == batch
    assert len({p["pivot_id"] for p in batch}) == len(batch)
    # Real structure: plenty of level-1 pivots and at least level 3 on every file.
    assert sum(p["level"] == 1 for p in batch) > len(candles) / 20
    assert max(p["level"] for p in batch) >= 3


@pytest.mark.parametrize("strengths", [(1, 1, 1, 1, 1), (3, 2), (2, 4, 1, 3, 2, 2, 2)])
def test_stream_equals_batch_with_other_strengths(strengths: tuple[int, ...]) -> None:
    candles = load("ETHUSDT-1h-2017-08-21_2020-09-08.csv")  # has 18 gaps (151 missing hours)
    assert run_stream(candles, strengths) == detect_pivots(candles, strengths)


@pytest.mark.parametrize("name", FILES)
def test_restore_from_checkpoint_continues_exactly(name: str) -> None:
    """Split at random points, checkpoint through JSON, restore into a NEW detector, carry on."""
    candles = load(name)
    rng = random.Random(name)
    cuts = sorted(rng.sample(range(1, len(candles)), 6))
    expected = detect_pivots(candles)
    c0 = candles[0]
    det = PivotDetector(c0["symbol"], c0["timeframe"])
    got: list[Pivot] = []
    for i, c in enumerate(candles):
        if i in cuts:
            det = PivotDetector.from_dict(json.loads(json.dumps(det.to_dict())))
        got.extend(det.on_candle(c))
    assert got == expected
    assert det.counts[CandleOutcome.ACCEPTED] == len(candles)


@pytest.mark.parametrize(
    "name", ["BTCUSDT-1m-2025-09-22_2025-09-25.csv", "LTCUSD-1m-2018-04-05_2018-04-06.csv"]
)
def test_no_repainting_on_real_data(name: str) -> None:
    """What is confirmed by candle n is final: more candles only append, never change or remove."""
    candles = load(name)
    full = detect_pivots(candles)
    c0 = candles[0]
    det = PivotDetector(c0["symbol"], c0["timeframe"])
    emitted: list[Pivot] = []
    checkpoints = set(random.Random(7).sample(range(len(candles)), 25))
    for n, c in enumerate(candles, start=1):
        new = det.on_candle(c)
        assert all(p["confirmed_at"] == c["open_time"] for p in new)
        emitted.extend(new)
        if n in checkpoints:
            prefix = detect_pivots(candles[:n])
            assert prefix == emitted
            assert prefix == full[: len(prefix)]
            assert [p for p in full if p["confirmed_at"] <= c["open_time"]] == prefix
    assert emitted == full


def test_replayed_feed_with_redeliveries_gives_the_same_pivots() -> None:
    """An at-least-once feed (every candle delivered twice, some old ones again) changes nothing."""
    candles = load("BTCUSD-1m-2017-09-03_2017-09-04.csv")
    c0 = candles[0]
    det = PivotDetector(c0["symbol"], c0["timeframe"])
    got: list[Pivot] = []
    for i, c in enumerate(candles):
        got.extend(det.on_candle(c))
        got.extend(det.on_candle(dict(c)))  # type: ignore[arg-type]
        if i >= 10 and i % 97 == 0:
            got.extend(det.on_candle(candles[i - 10]))
    assert got == detect_pivots(candles)
    assert det.counts[CandleOutcome.DUPLICATE] == len(candles)
    late = sum(1 for i in range(len(candles)) if i >= 10 and i % 97 == 0)
    assert det.counts[CandleOutcome.OUT_OF_ORDER] == late
