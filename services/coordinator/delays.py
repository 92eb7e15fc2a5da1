"""Pivot confirmation delays per level, in bars: what D (max_confirmation_bars) and H
(hot_retention_bars) of the coordinator are sized from (docs/architecture.md, "Late pivots").

    python -m services.coordinator.delays data/*.csv

Reads candle CSVs in the data/ layout (open_time_ms,open,high,low,close,volume[,trades]; symbol and
timeframe from the file name), runs the pivots service's detector (default strengths) and prints, per
timeframe and level, how many bars after its pivot_time each pivot was confirmed.
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from reftrain.records import TIMEFRAME_MS, Candle
from services.pivots.detector import detect_pivots


def read_candles(path: Path) -> list[Candle]:
    """Candles of one data/ file (``SYMBOL-TF-FIRST_LAST.csv``)."""
    symbol, timeframe = path.name.split("-")[:2]
    bar = TIMEFRAME_MS[timeframe]
    with path.open(newline="") as fh:
        return [Candle(symbol=symbol, timeframe=timeframe, open_time=int(r["open_time_ms"]),
                       close_time=int(r["open_time_ms"]) + bar - 1, open=float(r["open"]),
                       high=float(r["high"]), low=float(r["low"]), close=float(r["close"]),
                       volume=float(r["volume"]), trades=None, source=path.name)
                for r in csv.DictReader(fh)]


def confirmation_delays(candles: Sequence[Candle]) -> dict[int, list[int]]:
    """Level -> (confirmed_at - pivot_time) in bars of every pivot the detector finds."""
    if not candles:
        return {}
    bar = TIMEFRAME_MS[candles[0]["timeframe"]]
    out: dict[int, list[int]] = defaultdict(list)
    for p in detect_pivots(candles):
        out[p["level"]].append((p["confirmed_at"] - p["pivot_time"]) // bar)
    return dict(out)


def _pct(xs: list[int], q: float) -> int:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]


def main(argv: Sequence[str]) -> int:
    by: dict[tuple[str, int], list[int]] = defaultdict(list)
    for name in argv:
        path = Path(name)
        for level, delays in confirmation_delays(read_candles(path)).items():
            by[(path.name.split("-")[1], level)].extend(delays)
    print("| timeframe | level | pivots | p50 | p90 | p99 | max |")
    print("|---|---|---|---|---|---|---|")
    for (tf, level), d in sorted(by.items()):
        print(f"| {tf} | {level} | {len(d):,} | {_pct(d, .5):,} | {_pct(d, .9):,} | {_pct(d, .99):,} | {max(d):,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
