"""Incremental aggregation of base candles (1m by default) into higher timeframes.

open = first, high = max, low = min, close = last, volume = ``math.fsum`` of the volumes (the
correctly rounded sum, so the result does not depend on summation order and equals a batch
computation bit for bit), trades = sum, or None if any input candle lacks it.

Buckets are aligned to the epoch (``open_time - open_time % bar``): 1h buckets start on the hour,
1d at 00:00 UTC, 4h at 00/04/08... UTC, as Binance aligns them.

**Only complete buckets are emitted.** A bucket is emitted at the moment its last base candle
arrives, i.e. when the bucket has closed and all ``bar/base`` candles are in it. A bucket with a
missing base candle (a gap in the market data, or a start/resume in the middle of a bucket) is
NEVER emitted: a 5m candle built from 4 minutes would be an invented candle whose volume and
high/low differ from the market's. It is reported as a :class:`DroppedBucket`
(reason ``incomplete_bucket``) when the first candle of a later bucket shows it can no longer
complete, so the service can count it. ``flush()`` reports the buckets still open (end of a
finite replay).

Input must be the ACCEPTed candles of the sequencer (strictly increasing open_time per series);
anything else is a programming error and raises ValueError. Emitted candles carry
``source = "aggregate:<base>"``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reftrain.records import Candle, series_key, split_series, timeframe_ms

INCOMPLETE_BUCKET = "incomplete_bucket"
DEFAULT_TARGETS = ("5m", "15m", "1h")


@dataclass(frozen=True)
class DroppedBucket:
    """A bucket that will never be emitted because base candles are missing from it."""

    symbol: str
    timeframe: str
    open_time: int
    have: int
    need: int
    reason: str = INCOMPLETE_BUCKET


@dataclass
class AggregateOutput:
    candles: list[Candle] = field(default_factory=list)
    dropped: list[DroppedBucket] = field(default_factory=list)


@dataclass
class _Bucket:
    start: int
    count: int
    open: float
    high: float
    low: float
    close: float
    volumes: list[float]
    trades: int | None

    @classmethod
    def first(cls, start: int, c: Candle) -> _Bucket:
        return cls(start, 1, c["open"], c["high"], c["low"], c["close"], [c["volume"]], c.get("trades"))

    def add(self, c: Candle) -> None:
        self.count += 1
        self.high = max(self.high, c["high"])
        self.low = min(self.low, c["low"])
        self.close = c["close"]
        self.volumes.append(c["volume"])
        t = c.get("trades")
        self.trades = None if self.trades is None or t is None else self.trades + t

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "count": self.count,
            "open": self.open,
            "high": self.high,
            "low": self.low,
            "close": self.close,
            "volumes": list(self.volumes),
            "trades": self.trades,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> _Bucket:
        return cls(
            int(d["start"]),
            int(d["count"]),
            float(d["open"]),
            float(d["high"]),
            float(d["low"]),
            float(d["close"]),
            [float(v) for v in d["volumes"]],
            None if d["trades"] is None else int(d["trades"]),
        )


class Aggregator:
    """Aggregates every series of timeframe ``base`` into each of ``targets``."""

    def __init__(self, targets: Iterable[str] = DEFAULT_TARGETS, *, base: str = "1m") -> None:
        self.base = base
        self.base_ms = timeframe_ms(base)
        self.targets: dict[str, int] = {}
        for tf in targets:
            ms = timeframe_ms(tf)
            if ms <= self.base_ms or ms % self.base_ms:
                raise ValueError(f"target {tf} is not a multiple (> 1) of base {base}")
            self.targets[tf] = ms
        self.source = f"aggregate:{base}"
        self._last: dict[str, int] = {}
        self._buckets: dict[str, dict[str, _Bucket]] = {}

    def push(self, c: Candle) -> AggregateOutput:
        """Add one base candle; return the buckets it completed and those it proved incomplete."""
        if c["timeframe"] != self.base:
            raise ValueError(f"aggregator of {self.base} got a {c['timeframe']} candle")
        key = series_key(c["symbol"], c["timeframe"])
        t = c["open_time"]
        last = self._last.get(key)
        if last is not None and t <= last:
            raise ValueError(f"{key}: open_time {t} <= previous {last}; feed only accepted candles")
        self._last[key] = t
        out = AggregateOutput()
        buckets = self._buckets.setdefault(key, {})
        for tf, ms in self.targets.items():
            start = t - t % ms
            b = buckets.get(tf)
            if b is not None and b.start != start:
                out.dropped.append(DroppedBucket(c["symbol"], tf, b.start, b.count, ms // self.base_ms))
                b = None
            if b is None:
                b = buckets[tf] = _Bucket.first(start, c)
            else:
                b.add(c)
            if b.count == ms // self.base_ms:
                out.candles.append(self._emit(c["symbol"], tf, ms, b))
                del buckets[tf]
        return out

    def _emit(self, symbol: str, tf: str, ms: int, b: _Bucket) -> Candle:
        return Candle(
            symbol=symbol,
            timeframe=tf,
            open_time=b.start,
            close_time=b.start + ms - 1,
            open=b.open,
            high=b.high,
            low=b.low,
            close=b.close,
            volume=math.fsum(b.volumes),
            trades=b.trades,
            source=self.source,
        )

    def flush(self) -> list[DroppedBucket]:
        """Report and forget every open bucket (end of a finite input: they can no longer complete)."""
        dropped: list[DroppedBucket] = []
        for key, buckets in sorted(self._buckets.items()):
            symbol, _ = split_series(key)
            for tf, b in sorted(buckets.items(), key=lambda kv: self.targets[kv[0]]):
                dropped.append(DroppedBucket(symbol, tf, b.start, b.count, self.targets[tf] // self.base_ms))
            buckets.clear()
        return dropped

    def state(self) -> dict[str, Any]:
        """JSON-able state: last base open_time and open buckets per series."""
        return {
            "base": self.base,
            "targets": list(self.targets),
            "series": {
                key: {
                    "last_open_time": self._last[key],
                    "buckets": {tf: b.to_dict() for tf, b in self._buckets.get(key, {}).items()},
                }
                for key in sorted(self._last)
            },
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Aggregator:
        agg = cls(state["targets"], base=state["base"])
        for key, st in state["series"].items():
            agg._last[key] = int(st["last_open_time"])
            agg._buckets[key] = {
                tf: _Bucket.from_dict(b) for tf, b in st["buckets"].items() if tf in agg.targets
            }
        return agg
