"""Incremental SMA and EMA of the close, per series.

* ``sma_N`` is the mean of the last N closes, None until N candles have been seen. It is computed
  as ``math.fsum(window) / N`` on every candle rather than with a running sum: a running sum
  drifts over a long-lived stream (adds and subtracts of prices ~1e5 lose low bits every step),
  while fsum over at most a few hundred values is exact-rounded and costs microseconds.
* ``ema_N`` is None for the first N-1 candles; at the N-th candle it is SEEDED with the SMA of the
  first N closes (the common TA-Lib convention, so the value does not depend on where the stream
  happened to start more than the SMA does); after that ``ema = alpha * close + (1 - alpha) * ema``
  with ``alpha = 2 / (N + 1)``.

Indicators count candles, not time: a gap in the series does not reset them (the sequencer reports
gaps). Feed only accepted candles, in order. State is JSON-able (last closes, EMA values, counts),
so a restart resumes without re-reading history.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reftrain.records import Candle, series_key

DEFAULT_PERIODS = (20, 50, 200)


def ema_alpha(period: int) -> float:
    return 2.0 / (period + 1)


@dataclass
class _SeriesState:
    closes: deque[float]
    count: int = 0
    last_open_time: int | None = None
    ema: dict[int, float] = field(default_factory=dict)


class Indicators:
    """SMA/EMA of close for every series it is fed."""

    def __init__(
        self, sma_periods: Iterable[int] = DEFAULT_PERIODS, ema_periods: Iterable[int] = DEFAULT_PERIODS
    ) -> None:
        self.sma_periods = tuple(sorted(set(sma_periods)))
        self.ema_periods = tuple(sorted(set(ema_periods)))
        if any(p < 1 for p in self.sma_periods + self.ema_periods):
            raise ValueError("periods must be >= 1")
        self.window = max(self.sma_periods + self.ema_periods, default=1)
        self._series: dict[str, _SeriesState] = {}

    def names(self) -> list[str]:
        return [f"sma_{p}" for p in self.sma_periods] + [f"ema_{p}" for p in self.ema_periods]

    def update(self, c: Candle) -> dict[str, float | None]:
        """Add ``c`` (the next accepted candle of its series) and return every indicator's value."""
        key = series_key(c["symbol"], c["timeframe"])
        st = self._series.get(key)
        if st is None:
            st = self._series[key] = _SeriesState(deque(maxlen=self.window))
        t = c["open_time"]
        if st.last_open_time is not None and t <= st.last_open_time:
            raise ValueError(f"{key}: open_time {t} <= previous {st.last_open_time}; feed accepted candles")
        close = float(c["close"])
        st.last_open_time = t
        st.closes.append(close)
        st.count += 1
        for p in self.ema_periods:
            prev = st.ema.get(p)
            if prev is not None:
                a = ema_alpha(p)
                st.ema[p] = a * close + (1.0 - a) * prev
            elif st.count == p:
                st.ema[p] = self._mean_last(st, p)
        return self._values(st)

    @staticmethod
    def _mean_last(st: _SeriesState, p: int) -> float:
        return math.fsum(itertools.islice(reversed(st.closes), p)) / p

    def _values(self, st: _SeriesState) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for p in self.sma_periods:
            out[f"sma_{p}"] = self._mean_last(st, p) if st.count >= p else None
        for p in self.ema_periods:
            out[f"ema_{p}"] = st.ema.get(p)
        return out

    def values(self, symbol: str, timeframe: str) -> dict[str, float | None]:
        """Current values of a series (all None for a series never seen)."""
        st = self._series.get(series_key(symbol, timeframe))
        if st is None:
            empty: dict[str, float | None] = dict.fromkeys(self.names())
            return empty
        return self._values(st)

    def seed(
        self,
        symbol: str,
        timeframe: str,
        *,
        closes: Iterable[float],
        count: int,
        last_open_time: int | None,
        ema: Mapping[int, float | None],
    ) -> None:
        """Restore one series from what the store holds (a restart), without replaying its history.

        ``closes``: its last closes, oldest first (the last ``window`` are kept); ``count``: how many
        candles it has; ``ema``: the stored EMA value of each period at its last candle. An EMA that
        should exist (``count >= period``) but is missing cannot be restored: raises ValueError, and
        the caller replays the history instead.
        """
        kept = deque((float(x) for x in closes), maxlen=self.window)
        if count < len(kept) or (count and last_open_time is None):
            raise ValueError(f"inconsistent seed: count={count}, {len(kept)} closes, last={last_open_time}")
        if len(kept) < min(count, self.window):
            raise ValueError(f"seed needs the last {min(count, self.window)} closes, got {len(kept)}")
        values: dict[int, float] = {}
        for p in self.ema_periods:
            v = ema.get(p)
            if count >= p:
                if v is None:
                    raise ValueError(f"ema_{p} missing for a series of {count} candles")
                values[p] = float(v)
        self._series[series_key(symbol, timeframe)] = _SeriesState(kept, count, last_open_time, values)

    def state(self) -> dict[str, Any]:
        return {
            "sma_periods": list(self.sma_periods),
            "ema_periods": list(self.ema_periods),
            "series": {
                key: {
                    "closes": list(st.closes),
                    "count": st.count,
                    "last_open_time": st.last_open_time,
                    "ema": {str(p): v for p, v in st.ema.items()},
                }
                for key, st in sorted(self._series.items())
            },
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Indicators:
        ind = cls(state["sma_periods"], state["ema_periods"])
        for key, s in state["series"].items():
            ind._series[key] = _SeriesState(
                deque((float(x) for x in s["closes"]), maxlen=ind.window),
                int(s["count"]),
                None if s["last_open_time"] is None else int(s["last_open_time"]),
                {int(p): float(v) for p, v in s["ema"].items() if int(p) in ind.ema_periods},
            )
        return ind
