"""The one reader of candle files (CSV, Parquet, a Binance dump's CSV), pure and without Kafka: used
by ingest (services/ingest/sources.py), the pivots plot, ops.fixtures, the tests and the benches,
so all of them turn the bundled data/ files into the same candles.

Read candles from files: CSV, Parquet, or a Binance dump zip, in two layouts.

Layouts:

* ``simple`` (the layout of ``data/``): a header ``open_time_ms,open,high,low,close,volume[,trades]``.
  ``close_time`` is derived as ``open_time + bar_ms - 1``.
* ``binance`` (data.binance.vision kline dumps): 12 columns ``open_time, open, high, low, close,
  volume, close_time, quote_volume, trades, taker_buy_base, taker_buy_quote, ignore``, normally
  without a header (futures dumps carry one; it is accepted). ``close_time`` is taken from the file,
  so a bar whose close_time disagrees with its timeframe is caught by validation, not hidden.

Timestamps are epoch milliseconds; values in ``[1e14, 1e17)`` are microseconds (Binance spot dumps
since 2025-01-01) and are converted to ms. An open time that is not a whole millisecond is a row
error (it cannot be an aligned bar); a close time in us is floored (``...999_999 us`` ->
``...999 ms``, the same Binance convention).

Rows come back in file order. A row that cannot be turned into a Candle yields a :class:`RowError`
(reason, row number, raw text) instead of raising, so one bad line never stops a file and the
service can quarantine it; :func:`load_candles` is the strict form for trusted files (data/), which
raises on the first bad row. Parsed candles are NOT validated here (NaN, high < low, ...): that is
ingest's sequencer's job, so every candle source goes through one validation.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from reftrain.records import TIMEFRAME_MS, Candle

Layout = Literal["auto", "simple", "binance"]

#: File names like ``BTCUSDT-1m-2025-09-22_2025-09-25.csv`` or Binance's ``BTCUSDT-1m-2025-01.zip``.
FILE_NAME_RE = re.compile(r"^(?P<symbol>[A-Za-z0-9]+)-(?P<tf>[0-9]+[smhdwM])-.*\.(?:csv|parquet|zip)$")

BINANCE_COLUMNS = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "trades",
    "taker_buy_base",
    "taker_buy_quote",
    "ignore",
)

_ALIASES = {
    "open_time_ms": "open_time",
    "open_time": "open_time",
    "close_time_ms": "close_time",
    "close_time": "close_time",
    "open": "open",
    "high": "high",
    "low": "low",
    "close": "close",
    "volume": "volume",
    "trades": "trades",
    "count": "trades",
    "num_trades": "trades",
    "number_of_trades": "trades",
}
_REQUIRED = ("open_time", "open", "high", "low", "close", "volume")

_US_MIN = 10**14  # 1e14 ms is the year 5138; 1e14 us is 1973: above it a timestamp is in us
_US_MAX = 10**17  # 1e17 us is the year 5138: above it the value is not a timestamp we accept


class SourceFormatError(ValueError):
    """The file as a whole cannot be read (unknown layout, no symbol/timeframe, empty zip)."""


@dataclass(frozen=True)
class RowError:
    """A row that could not become a Candle; ``reason`` is a stable counter label.

    ``row`` is the 1-based physical line number for CSV (the header is line 1) and the 1-based row
    index for Parquet. ``raw`` is the row's text, for the quarantine record.
    """

    source: str
    row: int
    reason: str
    detail: str
    raw: str


SourceItem = Candle | RowError


class _RowProblem(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse_file_name(name: str) -> tuple[str, str]:
    """(symbol, timeframe) from ``SYMBOL-TF-...csv|parquet|zip``; raises SourceFormatError."""
    m = FILE_NAME_RE.match(Path(name).name)
    if not m:
        raise SourceFormatError(f"file name {name!r} does not match SYMBOL-TF-....csv|parquet|zip")
    tf = m.group("tf")
    if tf not in TIMEFRAME_MS:
        raise SourceFormatError(
            f"file name {name!r}: unknown timeframe {tf!r}; known: {sorted(TIMEFRAME_MS)}"
        )
    return m.group("symbol"), tf


def _to_epoch_ms(value: int, *, what: str, exact: bool) -> int:
    """Epoch ms from ms or us; ``exact`` rejects us values that are not whole milliseconds."""
    if value < 0 or value >= _US_MAX:
        raise _RowProblem(f"bad_{what}", f"{value} is outside the accepted ms/us range")
    if value >= _US_MIN:
        if exact and value % 1000:
            raise _RowProblem(f"bad_{what}", f"{value} us is not a whole millisecond")
        return value // 1000
    return value


def _as_int(value: Any, field: str, reason: str) -> int:
    if isinstance(value, bool):
        raise _RowProblem(reason, f"{field}={value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        delta = aware - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value):
            return int(value)
        raise _RowProblem(reason, f"{field}={value!r}")
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        f = float(text)
    except ValueError:
        raise _RowProblem(reason, f"{field}={text!r}") from None
    if math.isfinite(f) and f == int(f) and abs(f) < 2**53:
        return int(f)
    raise _RowProblem(reason, f"{field}={text!r}")


def _as_float(value: Any, field: str) -> float:
    if isinstance(value, bool):
        raise _RowProblem("bad_number", f"{field}={value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        raise _RowProblem("bad_number", f"{field}={value!r}") from None


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


@dataclass(frozen=True)
class _Columns:
    """Where each field sits in a row, and how many cells a row must have."""

    index: dict[str, int]
    width: int
    derive_close: bool

    @classmethod
    def binance(cls) -> _Columns:
        return cls({name: i for i, name in enumerate(BINANCE_COLUMNS)}, len(BINANCE_COLUMNS), False)

    @classmethod
    def positional_simple(cls, width: int) -> _Columns:
        names = ("open_time", "open", "high", "low", "close", "volume", "trades")[:width]
        return cls({n: i for i, n in enumerate(names)}, width, True)

    @classmethod
    def from_header(cls, header: Sequence[str], layout: Layout) -> _Columns:
        names = [h.strip().lower() for h in header]
        if layout == "binance" or (layout == "auto" and len(names) == 12 and "open_time_ms" not in names):
            if len(names) != 12:
                raise SourceFormatError(f"binance layout needs 12 columns, header has {len(names)}")
            return cls.binance()
        index: dict[str, int] = {}
        for i, name in enumerate(names):
            canon = _ALIASES.get(name)
            if canon is not None and canon not in index:
                index[canon] = i
        missing = [c for c in _REQUIRED if c not in index]
        if missing:
            raise SourceFormatError(f"header {header!r} lacks {missing}")
        return cls(index, len(names), "close_time" not in index)


def _looks_like_header(cells: Sequence[str]) -> bool:
    """A header names known columns; a malformed first data row must stay a (bad) data row."""
    first = cells[0].strip() if cells else ""
    try:
        float(first)
    except ValueError:
        return any(c.strip().lower() in _ALIASES for c in cells)
    return False


def _columns_without_header(width: int, layout: Layout) -> _Columns:
    if layout == "binance" or (layout == "auto" and width == 12):
        return _Columns.binance()
    if layout in ("simple", "auto") and width in (6, 7):
        return _Columns.positional_simple(width)
    raise SourceFormatError(f"cannot tell the layout of rows with {width} columns (layout={layout})")


def _build(cells: Sequence[Any], cols: _Columns, symbol: str, timeframe: str, source: str) -> Candle:
    if len(cells) != cols.width:
        raise _RowProblem("wrong_column_count", f"{len(cells)} columns, expected {cols.width}")
    ix = cols.index
    for field in _REQUIRED:
        if _is_missing(cells[ix[field]]):
            raise _RowProblem("missing_value", field)
    open_time = _to_epoch_ms(
        _as_int(cells[ix["open_time"]], "open_time", "bad_open_time"), what="open_time", exact=True
    )
    if cols.derive_close:
        close_time = open_time + TIMEFRAME_MS[timeframe] - 1
    else:
        raw_close = cells[ix["close_time"]]
        if _is_missing(raw_close):
            raise _RowProblem("missing_value", "close_time")
        close_time = _to_epoch_ms(
            _as_int(raw_close, "close_time", "bad_close_time"), what="close_time", exact=False
        )
    trades: int | None = None
    if "trades" in ix and not _is_missing(cells[ix["trades"]]):
        trades = _as_int(cells[ix["trades"]], "trades", "bad_trades")
    return Candle(
        symbol=symbol,
        timeframe=timeframe,
        open_time=open_time,
        close_time=close_time,
        open=_as_float(cells[ix["open"]], "open"),
        high=_as_float(cells[ix["high"]], "high"),
        low=_as_float(cells[ix["low"]], "low"),
        close=_as_float(cells[ix["close"]], "close"),
        volume=_as_float(cells[ix["volume"]], "volume"),
        trades=trades,
        source=source,
    )


def _fast_builder(
    cols: _Columns, symbol: str, timeframe: str, source: str
) -> Callable[[Sequence[str]], Candle | None]:
    """A parser for well-formed CSV rows (plain ints and floats); None sends the row to ``_build``,
    which knows every special case (us, blanks, '1.0e12', ...) and names the problem. This keeps
    the common case at ~5 us a row."""
    ix = cols.index
    i_ot, i_o, i_h, i_l, i_c, i_v = (ix[f] for f in _REQUIRED)
    i_ct = ix.get("close_time", -1) if not cols.derive_close else -1
    i_tr = ix.get("trades", -1)
    bar = TIMEFRAME_MS[timeframe]
    width = cols.width

    def build(cells: Sequence[str]) -> Candle | None:
        if len(cells) != width:
            return None
        try:
            ot = int(cells[i_ot])
            ct = ot + bar - 1 if i_ct < 0 else int(cells[i_ct])
            tr = int(cells[i_tr]) if i_tr >= 0 and cells[i_tr] else None
            candle = Candle(
                symbol=symbol,
                timeframe=timeframe,
                open_time=ot,
                close_time=ct,
                open=float(cells[i_o]),
                high=float(cells[i_h]),
                low=float(cells[i_l]),
                close=float(cells[i_c]),
                volume=float(cells[i_v]),
                trades=tr,
                source=source,
            )
        except ValueError:
            return None
        if not (0 <= ot < _US_MIN and 0 <= ct < _US_MIN):
            return None
        return candle

    return build


def symbol_timeframe(name: str, symbol: str | None, timeframe: str | None) -> tuple[str, str]:
    if symbol is None or timeframe is None:
        parsed_symbol, parsed_tf = parse_file_name(name)
        symbol = symbol or parsed_symbol
        timeframe = timeframe or parsed_tf
    if timeframe not in TIMEFRAME_MS:
        raise SourceFormatError(f"unknown timeframe {timeframe!r}; known: {sorted(TIMEFRAME_MS)}")
    return symbol, timeframe


#: Files are decoded with ``errors="surrogateescape"``: an undecodable byte b becomes the lone
#: surrogate U+DC00+b, so one bad byte is one quarantined row (reason ``bad_encoding``), not a
#: UnicodeDecodeError that stops the file on every restart.
TEXT_OPTIONS: dict[str, Any] = {"encoding": "utf-8-sig", "errors": "surrogateescape", "newline": ""}
_UNDECODABLE = re.compile("[\udc80-\udcff]")


def _escaped(line: str) -> str:
    """The line with its undecodable bytes written as \\xNN (printable, encodable as UTF-8)."""
    return line.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def iter_csv_rows(
    lines: Iterable[str],
    *,
    symbol: str,
    timeframe: str,
    source: str,
    layout: Layout = "auto",
) -> Iterator[SourceItem]:
    """Candles (or RowErrors) from CSV text lines; blank lines are skipped (they are not rows).

    Neither layout quotes fields, so a line is split on commas and nothing else: a stray quote
    character in one row cannot swallow the rows after it, as a CSV quoting parser would let it.
    """
    for _, item in iter_csv_numbered(lines, symbol=symbol, timeframe=timeframe, source=source, layout=layout):
        yield item


class OverlongLine(str):
    """The first characters of a line that was longer than a reader's limit (the rest was skipped):
    such a row is refused as ``line_too_long`` instead of being held or parsed whole."""

    length: int = 0


def iter_csv_numbered(
    lines: Iterable[str],
    *,
    symbol: str,
    timeframe: str,
    source: str,
    layout: Layout = "auto",
) -> Iterator[tuple[int, SourceItem]]:
    """``iter_csv_rows`` with each item's 1-based physical line number: (file, line) names a row
    stably across restarts, so a quarantined row is never quarantined twice."""
    cols: _Columns | None = None
    fast: Callable[[Sequence[str]], Candle | None] | None = None
    for line_no, line in enumerate(lines, start=1):
        if isinstance(line, OverlongLine):  # from a line-bounding reader (services.ingest.limits.bounded_lines)
            yield line_no, RowError(source, line_no, "line_too_long", f"{line.length} characters", line[:200])
            continue
        if not line.strip():
            continue
        if _UNDECODABLE.search(line):
            text = _escaped(line.rstrip("\r\n"))
            yield line_no, RowError(source, line_no, "bad_encoding", f"bytes that are not UTF-8: {text[:200]}", text)
            continue
        cells = line.rstrip("\r\n").split(",")
        if cols is None:
            if _looks_like_header(cells):
                cols = _Columns.from_header(cells, layout)
                continue
            cols = _columns_without_header(len(cells), layout)
        if fast is None:
            fast = _fast_builder(cols, symbol, timeframe, source)
        candle = fast(cells)
        if candle is not None:
            yield line_no, candle
            continue
        try:
            yield line_no, _build(cells, cols, symbol, timeframe, source)
        except _RowProblem as p:
            yield line_no, RowError(source, line_no, p.reason, p.detail, ",".join(cells))


def iter_parquet_numbered(
    path: Path, *, symbol: str, timeframe: str, source: str, layout: Layout
) -> Iterator[tuple[int, SourceItem]]:
    import duckdb  # lazy: only Parquet needs it (pyarrow is not a dependency)

    con = duckdb.connect(":memory:")
    try:
        cur = con.execute("SELECT * FROM read_parquet(?)", [str(path)])
        names = [d[0] for d in cur.description or ()]
        positional = all(re.fullmatch(r"(column)?_?[0-9]+", n.lower()) for n in names)
        cols = _columns_without_header(len(names), layout) if positional else _Columns.from_header(names, layout)
        row_no = 0
        while True:
            batch = cur.fetchmany(8192)
            if not batch:
                break
            for row in batch:
                row_no += 1
                try:
                    yield row_no, _build(row, cols, symbol, timeframe, source)
                except _RowProblem as p:
                    yield row_no, RowError(source, row_no, p.reason, p.detail, repr(tuple(row)))
    finally:
        con.close()




def load_candles(
    path: str | Path,
    *,
    symbol: str | None = None,
    timeframe: str | None = None,
    source: str | None = None,
    limit: int | None = None,
    layout: Layout = "auto",
) -> list[Candle]:
    """Every candle of one CSV file, in file order, for trusted files (the bundled data/): the first
    row that is not a candle raises SourceFormatError naming the file and line. ``symbol`` and
    ``timeframe`` default to the file name's, ``source`` to the file name; ``limit`` stops early."""
    p = Path(path)
    symbol, timeframe = symbol_timeframe(p.name, symbol, timeframe)
    out: list[Candle] = []
    if limit is not None and limit <= 0:
        return out
    with p.open("r", **TEXT_OPTIONS) as fh:
        for line, item in iter_csv_numbered(fh, symbol=symbol, timeframe=timeframe,
                                            source=p.name if source is None else source, layout=layout):
            if isinstance(item, RowError):
                raise SourceFormatError(f"{p.name} line {line}: {item.reason} ({item.detail})")
            out.append(item)
            if limit is not None and len(out) >= limit:
                break
    return out
