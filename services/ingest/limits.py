"""Input limits of the ingest service: what an untrusted file or WebSocket message may cost.

Kept apart from the parsers so the limits are in one place. Each limit has a defined outcome:
- a zip whose CSV declares more than ``MAX_ZIP_UNCOMPRESSED_BYTES`` is refused as a whole
  (SourceFormatError, a clear error before the first row; Python's zipfile never inflates more than
  the declared size, so the declaration is the bound);
- a line longer than ``MAX_LINE_CHARS`` is quarantined as ``line_too_long`` (store + candles.dlq,
  counted in reftrain_ingest_invalid_total) and read past in bounded chunks, never held whole;
- a symbol that is not ``[A-Z0-9]{2,20}`` is quarantined as ``bad_symbol``, and series beyond
  ``MAX_SERIES`` distinct ones per process as ``too_many_series``: every new series creates metric
  labels and state downstream, so their number must be bounded.
The values can be changed with INGEST_MAX_* variables (reftrain.settings reads them).
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from reftrain.candlefiles import OverlongLine
from reftrain.settings import Settings

#: One WebSocket message (a kline event is ~600 bytes); a bigger one closes the connection (1009)
#: and the stream reconnects with back-off. The connection also has an open timeout (10 s) and
#: keepalive pings (20 s interval, 20 s pong timeout), so a silent peer is dropped, not waited on.
WS_MAX_MESSAGE_BYTES = 64 * 1024

#: Binance symbols are upper-case letters and digits (BTCUSDT, 1000SHIBUSDT).
SYMBOL_RE = re.compile(r"[A-Z0-9]{2,20}")


class IngestLimits(Settings):
    model_config = SettingsConfigDict(env_prefix="INGEST_")

    #: INGEST_MAX_ZIP_UNCOMPRESSED_BYTES: a month of 1s klines is ~250 MB; 1 GiB leaves room.
    max_zip_uncompressed_bytes: int = Field(default=1 << 30, ge=1)
    #: INGEST_MAX_LINE_CHARS: a Binance kline row is ~150 characters.
    max_line_chars: int = Field(default=4096, ge=1)
    #: INGEST_MAX_SERIES: distinct input series (symbol:timeframe) one ingest process accepts.
    max_series: int = Field(default=64, ge=1)


def load() -> IngestLimits:
    return IngestLimits.from_env()




def bounded_lines(stream: IO[str], max_chars: int | None = None) -> Iterator[str]:
    """Lines of a text stream, never more than ``max_chars`` held at once: a longer line is yielded
    as an OverlongLine holding its start, and the remainder is read and dropped in chunks."""
    limit = max_chars if max_chars is not None else load().max_line_chars
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit or line.endswith("\n"):
            yield line
            continue
        total = len(line)
        while True:  # skip to the end of this line
            rest = stream.readline(65536)
            total += len(rest.rstrip("\r\n"))
            if not rest or rest.endswith("\n"):
                break
        out = OverlongLine(line[:limit])
        out.length = total  # characters, without the line break
        yield out


def check_zip_member(info: zipfile.ZipInfo, max_bytes: int | None = None) -> str | None:
    """Why a zip member may not be read (its declared uncompressed size), or None."""
    limit = max_bytes if max_bytes is not None else load().max_zip_uncompressed_bytes
    if info.file_size > limit:
        return (f"{info.filename} declares {info.file_size} bytes uncompressed "
                f"(from {info.compress_size} compressed); the limit is {limit} (INGEST_MAX_ZIP_UNCOMPRESSED_BYTES)")
    return None


@dataclass
class SymbolGate:
    """Admits a candle's series if its symbol is well-formed and the series is one of the first
    ``max_series`` seen by this process."""

    max_series: int = field(default_factory=lambda: load().max_series)
    seen: set[str] = field(default_factory=set)

    def refuse(self, symbol: object, timeframe: object) -> tuple[str, str] | None:
        """(reason, detail) when the candle must be quarantined, else None."""
        if not isinstance(symbol, str) or not SYMBOL_RE.fullmatch(symbol):
            return "bad_symbol", f"symbol {str(symbol)[:40]!r} is not [A-Z0-9]{{2,20}}"
        series = f"{symbol}:{timeframe}"
        if series not in self.seen:
            if len(self.seen) >= self.max_series:
                return "too_many_series", (f"{series} would be series #{len(self.seen) + 1}; the limit is "
                                           f"{self.max_series} (INGEST_MAX_SERIES)")
            self.seen.add(series)
        return None
