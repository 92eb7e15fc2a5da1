"""Read the project's candle CSVs (``open_time_ms,open,high,low,close,volume[,trades]``) into Candle
records, so the plot, the docs example and the tests feed the detector exactly what the service sees."""

from __future__ import annotations

import csv
from pathlib import Path

from reftrain.records import TIMEFRAME_MS, Candle


def series_from_filename(path: str | Path) -> tuple[str, str]:
    """('BTCUSDT', '1m') from 'BTCUSDT-1m-2025-09-22_2025-09-25.csv' (the data/ naming convention)."""
    parts = Path(path).name.split("-")
    if len(parts) < 3 or parts[1] not in TIMEFRAME_MS:
        raise ValueError(f"{path}: expected SYMBOL-TF-FIRSTDATE_LASTDATE.csv")
    return parts[0], parts[1]


def load_candles_csv(
    path: str | Path, symbol: str | None = None, timeframe: str | None = None, source: str | None = None
) -> list[Candle]:
    """All rows of one CSV as Candle dicts, in file order; symbol/timeframe default from the file name."""
    path = Path(path)
    if symbol is None or timeframe is None:
        sym, tf = series_from_filename(path)
        symbol = symbol or sym
        timeframe = timeframe or tf
    bar = TIMEFRAME_MS[timeframe]
    src = source if source is not None else f"csv:{path.name}"
    out: list[Candle] = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        for row in reader:
            open_time = int(row["open_time_ms"])
            trades: str | None = row.get("trades")
            out.append(
                Candle(
                    symbol=symbol,
                    timeframe=timeframe,
                    open_time=open_time,
                    close_time=open_time + bar - 1,
                    open=float(row["open"]),
                    high=float(row["high"]),
                    low=float(row["low"]),
                    close=float(row["close"]),
                    volume=float(row["volume"]),
                    trades=int(trades) if trades else None,
                    source=src,
                )
            )
    return out
