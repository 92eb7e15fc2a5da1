"""The worked example in docs/pivots.md, recomputed from the real file so the doc cannot drift."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from reftrain.candlefiles import load_candles
from services.pivots.detector import PivotDetector, detect_pivots

ROOT = Path(__file__).resolve().parents[3]
CSV = ROOT / "data" / "BTCUSDT-1m-2025-09-22_2025-09-25.csv"


def ms(text: str) -> int:
    return int(datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).timestamp() * 1000)


def test_worked_example_l4_low_of_2025_09_24_0411() -> None:
    candles = load_candles(CSV)
    pivots = detect_pivots(candles)
    at = ms("2025-09-24 04:11")
    chain = [(p["level"], p["kind"], p["price"], p["confirmed_at"]) for p in pivots if p["pivot_time"] == at]
    assert chain == [
        (1, "HIGH", 111608.12, ms("2025-09-24 04:13")),
        (1, "LOW", 111042.66, ms("2025-09-24 04:13")),
        (2, "LOW", 111042.66, ms("2025-09-24 04:37")),
        (3, "LOW", 111042.66, ms("2025-09-24 07:42")),
        (4, "LOW", 111042.66, ms("2025-09-24 16:04")),
    ]
    l3_lows = [(p["pivot_time"], p["price"]) for p in pivots if p["level"] == 3 and p["kind"] == "LOW"]
    i = l3_lows.index((at, 111042.66))
    assert l3_lows[i - 2 : i + 3] == [
        (ms("2025-09-23 11:08"), 112683.33),
        (ms("2025-09-23 20:35"), 111458.73),
        (at, 111042.66),
        (ms("2025-09-24 08:27"), 112411.26),
        (ms("2025-09-24 13:59"), 112808.0),
    ]
    l4 = next(p for p in pivots if p["level"] == 4)
    assert l4["pivot_id"] == "c91f2a4f8e5f015bd59990974c687782"
    # The streaming detector emits it on the 16:04 candle, together with the L3 LOW of 13:59.
    det = PivotDetector("BTCUSDT", "1m")
    for c in candles:
        out = det.on_candle(c)
        if c["open_time"] == ms("2025-09-24 16:04"):
            assert [(p["level"], p["kind"], p["pivot_time"]) for p in out][-2:] == [
                (3, "LOW", ms("2025-09-24 13:59")),
                (4, "LOW", at),
            ]
            break


def test_worked_example_tie_at_2025_09_24_2213() -> None:
    """Two equal highs 113647.58 (22:13, 22:14) are no L1 HIGH, so the 22:04 high of 113646.0 stands."""
    candles = load_candles(CSV)
    by_time = {c["open_time"]: c for c in candles}
    assert by_time[ms("2025-09-24 22:13")]["high"] == by_time[ms("2025-09-24 22:14")]["high"] == 113647.58
    highs = {(p["level"], p["pivot_time"]) for p in detect_pivots(candles) if p["kind"] == "HIGH"}
    assert (1, ms("2025-09-24 22:13")) not in highs and (1, ms("2025-09-24 22:14")) not in highs
    assert (2, ms("2025-09-24 22:04")) in highs
