"""Per-series ring buffer of the newest candles, so a window comes from memory, not from the store.

Pure (numpy only: no Kafka, no store, no torch). Why it is exact: ingest writes a candle to the
store before it publishes it (docs/semantics.md rule 1) and publishes exactly the values it stored,
so the rows the inference service consumes from ``candles`` ARE the store's rows. A ``SeriesRing``
holds a contiguous run of the store's rows of one series, ``[start, end]``, with no row of the
store missing inside it:

* it is **seeded** from a store read (``reset``): a ``read_last`` block is every stored row of its
  range, and when it returned fewer rows than asked it is the series' whole history up to ``end``;
* it is **appended** only a candle exactly one bar after ``end`` (``follows``): no stored row can
  lie between two consecutive aligned open times;
* anything else (the first candle after an assignment, a candle after a gap, a late back-fill, a
  candle that was not in the store) is not appended: the caller **repairs** the ring from the
  store (``reset`` again) or drops it (``SeriesRing`` is then rebuilt on the next candle).

It is trimmed to no fewer than ``window_size`` rows, so "fewer than ``window_size`` rows held"
always means "the whole history is held and it is too short": such a series waits for history
WITHOUT a store read per candle (a 5m/1h series with a short history used to be re-read in full
on every batch).

Windows handed out are views into the current arrays. An append writes past every view and a
trim or reset allocates NEW arrays, so a view never changes after it was taken (a batch selects
all its windows first and predicts them afterwards).
"""

from __future__ import annotations

import numpy as np

from reftrain.window import COLUMNS, Window


class SeriesRing:
    """The newest rows of one series, exactly as the store holds them (see the module doc)."""

    def __init__(self, symbol: str, timeframe: str, bar_ms: int, window_size: int,
                 capacity: int | None = None) -> None:
        if window_size < 1 or bar_ms < 1:
            raise ValueError("window_size and bar_ms must be >= 1")
        self.symbol = symbol
        self.timeframe = timeframe
        self.bar_ms = bar_ms
        self.window_size = window_size
        #: rows kept before a trim; 2x the window makes a trim (one copy of window_size rows) rare.
        self.capacity = max(capacity or 2 * window_size, window_size + 1)
        self._t = np.empty(self.capacity, dtype=np.int64)
        self._v = np.empty((self.capacity, len(COLUMNS)), dtype=np.float64)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def end(self) -> int | None:
        """open_time of the newest row held (None when empty)."""
        return int(self._t[self._n - 1]) if self._n else None

    def follows(self, open_time: int) -> bool:
        """True when ``open_time`` is exactly one bar after the newest row: it can be appended."""
        return self._n > 0 and open_time == int(self._t[self._n - 1]) + self.bar_ms

    def reset(self, block: Window) -> None:
        """Hold the newest ``capacity`` rows of ``block``: a store read (every stored row of its
        range, oldest first). New arrays: views handed out before stay valid."""
        keep = min(len(block), self.capacity)
        self._t = np.empty(self.capacity, dtype=np.int64)
        self._v = np.empty((self.capacity, len(COLUMNS)), dtype=np.float64)
        if keep:
            self._t[:keep] = block.open_time[-keep:]
            self._v[:keep] = block.values[-keep:]
        self._n = keep

    def append(self, open_time: int, row: tuple[float, ...] | list[float]) -> None:
        """Add the candle one bar after ``end`` (its OHLCV in COLUMNS order)."""
        if not self.follows(open_time):
            raise ValueError(f"{open_time} does not follow {self.end} by one {self.bar_ms} ms bar")
        if self._n == self.capacity:  # trim to window_size - 1 rows (+ this one) into NEW arrays
            keep = self.window_size - 1
            t = np.empty(self.capacity, dtype=np.int64)
            v = np.empty((self.capacity, len(COLUMNS)), dtype=np.float64)
            t[:keep] = self._t[self._n - keep:self._n]
            v[:keep] = self._v[self._n - keep:self._n]
            self._t, self._v, self._n = t, v, keep
        self._t[self._n] = open_time
        self._v[self._n] = row
        self._n += 1

    def window(self) -> Window | None:
        """The last ``window_size`` rows (a view), or None while fewer are held (= the whole,
        too short history)."""
        if self._n < self.window_size:
            return None
        lo, hi = self._n - self.window_size, self._n
        return Window(self.symbol, self.timeframe, self._t[lo:hi], self._v[lo:hi])
