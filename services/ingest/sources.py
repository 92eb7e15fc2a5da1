"""Read candles from files: CSV, Parquet, or a Binance dump zip, in the ``simple`` (data/) or the
``binance`` layout, and interleave several series in market order.

The parsing is reftrain.candlefiles, the project's one candle-file reader (layouts, ms/us
timestamps, RowError per bad row): see its docstring. Parsed candles are NOT validated here (NaN,
high < low, ...): that is the sequencer's job, so every candle source goes through one validation.
"""

from __future__ import annotations

import heapq
import io
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from reftrain.candlefiles import (
    BINANCE_COLUMNS,
    FILE_NAME_RE,
    TEXT_OPTIONS,
    Layout,
    RowError,
    SourceFormatError,
    SourceItem,
    iter_csv_numbered,
    iter_csv_rows,
    iter_parquet_numbered,
    parse_file_name,
    symbol_timeframe,
)
from services.ingest import limits

__all__ = ["BINANCE_COLUMNS", "FILE_NAME_RE", "Layout", "RowError", "SourceFormatError", "SourceItem", "iter_csv_rows",
           "merge_numbered", "merge_sources", "parse_file_name", "read_candles", "read_numbered"]


def read_candles(
    path: str | Path,
    *,
    symbol: str | None = None,
    timeframe: str | None = None,
    layout: Layout = "auto",
) -> Iterator[SourceItem]:
    """Candles (or RowErrors) of one file, in file order; ``source`` is the file name.

    ``symbol``/``timeframe`` default to the ones in the file name (SYMBOL-TF-...). ``.parquet`` is
    read through duckdb; ``.zip`` must hold one CSV (a Binance dump). File-level problems raise
    SourceFormatError before the first row; row-level problems yield RowError.
    """
    for _, item in read_numbered(path, symbol=symbol, timeframe=timeframe, layout=layout):
        yield item


def read_numbered(
    path: str | Path,
    *,
    symbol: str | None = None,
    timeframe: str | None = None,
    layout: Layout = "auto",
) -> Iterator[tuple[int, SourceItem]]:
    """``read_candles`` with each item's row number (CSV: physical line, header = 1; Parquet:
    1-based row index), so (file name, row) identifies a row across restarts."""
    p = Path(path)
    symbol, timeframe = symbol_timeframe(p.name, symbol, timeframe)
    source = p.name
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        yield from iter_parquet_numbered(p, symbol=symbol, timeframe=timeframe, source=source, layout=layout)
    elif suffix == ".zip":
        with zipfile.ZipFile(p) as zf:
            members = [m for m in zf.namelist() if m.lower().endswith(".csv")]
            if len(members) != 1:
                raise SourceFormatError(f"{p.name}: expected one .csv inside, found {members}")
            too_big = limits.check_zip_member(zf.getinfo(members[0]))
            if too_big:
                raise SourceFormatError(f"{p.name}: {too_big}")
            with zf.open(members[0]) as raw:
                text = io.TextIOWrapper(raw, **TEXT_OPTIONS)
                yield from iter_csv_numbered(
                    limits.bounded_lines(text), symbol=symbol, timeframe=timeframe, source=source, layout=layout
                )
    else:
        with p.open("r", **TEXT_OPTIONS) as fh:
            yield from iter_csv_numbered(
                limits.bounded_lines(fh), symbol=symbol, timeframe=timeframe, source=source, layout=layout
            )


def merge_sources(streams: Iterable[Iterable[SourceItem]]) -> Iterator[SourceItem]:
    """Interleave several files' items by candle close_time (ties: the earlier stream first), for a
    multi-series replay in market order. Each stream must be in time order (files are); a RowError
    keeps its place right after the item that preceded it in its own stream."""
    for _, item in merge_numbered(((0, i) for i in s) for s in streams):
        yield item


def merge_numbered(
    streams: Iterable[Iterable[tuple[int, SourceItem]]],
) -> Iterator[tuple[int, SourceItem]]:
    """``merge_sources`` for the (row, item) pairs of ``read_numbered``."""

    def keyed(
        i: int, items: Iterable[tuple[int, SourceItem]]
    ) -> Iterator[tuple[int, int, int, tuple[int, SourceItem]]]:
        key = -1
        for seq, pair in enumerate(items):
            item = pair[1]
            if not isinstance(item, RowError):
                key = max(key, item["close_time"])
            yield key, i, seq, pair

    for _, _, _, pair in heapq.merge(*(keyed(i, s) for i, s in enumerate(streams))):
        yield pair
