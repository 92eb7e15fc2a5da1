"""Fetching the windows of a whole batch of jobs in one pass, an in-memory per-series cache, and
the verification of each window against its reference (docs/semantics.md, rule 4 and Store).

Why: a 600-row window read through DuckLake costs 6-8 ms; a slice of an in-memory array costs
microseconds. Consecutive jobs of a series share 599 of their 600 rows, so the fetcher reads, per
series, only the rows its cache lacks (one ``Store.read_ranges`` call for every series of the batch,
one query per series) and slices each job's window from memory.

The cache is safe because stored candles never change: the store de-duplicates on
(symbol, timeframe, open_time) and never updates a row. It can only be *incomplete* (a gap filled
after the cache read that range); so a cached window that fails verification is read again directly
from the store before the job is rejected. A job is therefore rejected only for what the store
holds, never for what the cache happens to hold.

Outcomes of verification (``WindowMismatchError.reason``), checked in this order:

* ``window_missing``: no candle of the series in ``[data_range_start, data_range_end]``;
* ``row_count_mismatch``: the range holds a different number of rows than ``window_size``
  (a gap appeared, or the ref is wrong);
* ``checksum_mismatch``: same row count but ``reftrain.window.window_checksum`` differs from
  ``window_checksum`` (a late correction, or a corrupted ref).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from reftrain.errors import WindowMismatchError
from reftrain.window import COLUMNS, Window


class WindowSource(Protocol):
    """What the fetcher needs from ``reftrain.store.Store``."""

    def read_ranges(self, requests: Iterable[tuple[str, str, int, int]]) -> dict[tuple[str, str], Window]: ...


@dataclass(frozen=True)
class WindowRequest:
    """The window a ref names and what it must look like."""

    symbol: str
    timeframe: str
    start: int
    end: int
    size: int
    checksum: str

    @classmethod
    def from_ref(cls, ref: Mapping[str, Any]) -> WindowRequest:
        return cls(str(ref["symbol"]), str(ref["timeframe"]), int(ref["data_range_start"]),
                   int(ref["data_range_end"]), int(ref["window_size"]), str(ref["window_checksum"]))

    @property
    def series(self) -> tuple[str, str]:
        return (self.symbol, self.timeframe)


def verify_window(window: Window, request: WindowRequest) -> None:
    """Raise ``WindowMismatchError(reason)`` unless ``window`` is exactly the referenced window."""
    n = len(window)
    if n == 0:
        raise WindowMismatchError("window_missing", f"{request.symbol}:{request.timeframe} has no candle in "
                                                    f"[{request.start}, {request.end}]")
    if n != request.size:
        raise WindowMismatchError("row_count_mismatch", f"{n} rows in [{request.start}, {request.end}], "
                                                        f"ref says {request.size}")
    actual = window.checksum()
    if actual != request.checksum:
        raise WindowMismatchError("checksum_mismatch", f"store {actual[:16]}..., ref {request.checksum[:16]}...")


@dataclass
class SeriesCache:
    """Rows of one series whose open_time lies in ``[lo, hi]`` (every such row the store held when
    it was read), sorted. Grows at either end; trimmed from the front to a row budget."""

    symbol: str
    timeframe: str
    lo: int
    hi: int
    open_time: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]

    def covers(self, start: int, end: int) -> bool:
        return self.lo <= start and end <= self.hi

    def slice(self, start: int, end: int) -> Window:
        return Window(self.symbol, self.timeframe, self.open_time, self.values).slice_range(start, end)

    def plan(self, lo: int, hi: int) -> tuple[int, int, str] | None:
        """The one range to read so that ``[lo, hi]`` is covered: (start, end, how) with how in
        append / prepend / replace; None when already covered."""
        if self.covers(lo, hi):
            return None
        if self.lo <= lo <= self.hi + 1:  # overlaps or touches the end: read only what follows
            return (self.hi + 1, hi, "append")
        if hi >= self.lo - 1 and hi <= self.hi:  # overlaps or touches the start
            return (lo, self.lo - 1, "prepend")
        return (lo, hi, "replace")

    def merge(self, window: Window, start: int, end: int, how: str) -> None:
        if how == "append":
            self.open_time = np.concatenate([self.open_time, window.open_time])
            self.values = np.concatenate([self.values, window.values])
            self.hi = end
        elif how == "prepend":
            self.open_time = np.concatenate([window.open_time, self.open_time])
            self.values = np.concatenate([window.values, self.values])
            self.lo = start
        else:
            self.open_time, self.values, self.lo, self.hi = window.open_time, window.values, start, end

    def trim(self, max_rows: int) -> None:
        """Keep the newest ``max_rows`` rows; the covered range shrinks to what is kept."""
        extra = len(self.open_time) - max_rows
        if extra > 0:
            self.open_time = self.open_time[extra:].copy()
            self.values = self.values[extra:].copy()
            self.lo = int(self.open_time[0])

    @property
    def rows(self) -> int:
        return len(self.open_time)


@dataclass
class FetchStats:
    """What one ``fetch`` did (for metrics, tests and the bench)."""

    store_calls: int = 0
    rows_read: int = 0
    from_cache: int = 0
    #: series whose span was read again because a cached window failed verification
    rereads: int = 0
    seconds: float = 0.0


@dataclass
class WindowFetcher:
    """Batched, cached, verified window fetch. Not thread-safe (one per trainer loop)."""

    source: WindowSource
    max_rows_per_series: int = 50_000
    caches: dict[tuple[str, str], SeriesCache] = field(default_factory=dict)

    def fetch(self, requests: Sequence[WindowRequest]) -> tuple[list[Window | WindowMismatchError], FetchStats]:
        """For each request its verified window, or the WindowMismatchError saying why not.

        One ``read_ranges`` call for the whole batch covering only what the caches lack, plus a
        second one, only when some cached window failed verification, that re-reads those series."""
        t0 = time.perf_counter()
        stats = FetchStats()
        spans: dict[tuple[str, str], tuple[int, int]] = {}
        for r in requests:
            lo, hi = spans.get(r.series, (r.start, r.end))
            spans[r.series] = (min(lo, r.start), max(hi, r.end))
        plans: dict[tuple[str, str], tuple[int, int, str]] = {}
        for series, (lo, hi) in spans.items():
            cache = self.caches.get(series)
            plan = (lo, hi, "replace") if cache is None else cache.plan(lo, hi)
            if plan is not None:
                plans[series] = plan
        if plans:
            got = self.source.read_ranges([(s[0], s[1], start, end) for s, (start, end, _) in plans.items()])
            stats.store_calls += 1
            for series, (start, end, how) in plans.items():
                window = got.get(series) or _empty(*series)
                stats.rows_read += len(window)
                cache = self.caches.get(series)
                if cache is None:
                    cache = SeriesCache(series[0], series[1], start, end, window.open_time, window.values)
                    self.caches[series] = cache
                else:
                    cache.merge(window, start, end, how)
        out: list[Window | WindowMismatchError] = []
        failed: dict[tuple[str, str], list[int]] = {}
        for i, r in enumerate(requests):
            window = self.caches[r.series].slice(r.start, r.end)
            try:
                verify_window(window, r)
                stats.from_cache += 1
                out.append(window)
            except WindowMismatchError as exc:
                out.append(exc)
                failed.setdefault(r.series, []).append(i)
        if failed:
            # The cache may lack rows the store gained after it read them (a gap filled late): read
            # each such series' span again, directly, before any job of it is rejected.
            got = self.source.read_ranges([(s[0], s[1], *spans[s]) for s in failed])
            stats.store_calls += 1
            for series, indexes in failed.items():
                window = got.get(series) or _empty(*series)
                stats.rows_read += len(window)
                stats.rereads += 1
                lo, hi = spans[series]
                self.caches[series] = SeriesCache(series[0], series[1], lo, hi, window.open_time, window.values)
                for i in indexes:
                    r = requests[i]
                    fresh = self.caches[series].slice(r.start, r.end)
                    try:
                        verify_window(fresh, r)
                        out[i] = fresh
                    except WindowMismatchError as exc:
                        out[i] = exc
        for cache in self.caches.values():
            cache.trim(self.max_rows_per_series)
        stats.seconds = time.perf_counter() - t0
        return out, stats


def _empty(symbol: str, timeframe: str) -> Window:
    return Window(symbol, timeframe, np.empty(0, dtype=np.int64), np.empty((0, len(COLUMNS)), dtype=np.float64))
