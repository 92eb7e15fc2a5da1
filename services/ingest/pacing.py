"""Replay pacing: how long to wait before publishing each replayed candle.

A replayed candle is due when it would have become available live, i.e. at its ``close_time``.
``speed`` 0 means as fast as possible (never wait); ``speed`` N means N times real time (60 replays
one 1m bar per second). ``max_sleep_s`` caps any single wait, so a 33-hour exchange outage in the
1h data does not stall a demo. Everything here is pure (the caller passes "now"), so it is
tested without sleeping.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from reftrain.records import Candle


def due_time_ms(c: Candle) -> int:
    """When a candle becomes available live: its close (open_time + bar - 1)."""
    return c["close_time"]


def replay_delays(
    times_ms: Iterable[int], speed: float, *, max_sleep_s: float | None = None
) -> Iterator[float]:
    """Seconds to sleep before each event: 0 before the first, then the market-time step / speed.

    A step that does not advance (two series at the same time, or a time going back) waits 0.
    """
    _check(speed, max_sleep_s)
    prev: int | None = None
    for t in times_ms:
        if prev is None or speed == 0:
            yield 0.0
        else:
            yield _step(t - prev, speed, max_sleep_s)
        prev = t if prev is None else max(prev, t)


def _check(speed: float, max_sleep_s: float | None) -> None:
    if speed < 0:
        raise ValueError(f"speed must be >= 0, got {speed}")
    if max_sleep_s is not None and max_sleep_s < 0:
        raise ValueError(f"max_sleep_s must be >= 0, got {max_sleep_s}")


def _step(delta_ms: int, speed: float, max_sleep_s: float | None) -> float:
    s = max(0, delta_ms) / 1000.0 / speed
    return s if max_sleep_s is None else min(s, max_sleep_s)


class ReplayClock:
    """Drift-free pacing against a wall clock: each event's wall-clock due time is the previous due
    time plus the (capped) market step / speed, so time spent processing is not added on top of
    every sleep. ``delay(t, now)`` is what to sleep (>= 0) before publishing the event at ``t``;
    a caller that fell behind gets 0 until it has caught up with the schedule."""

    def __init__(self, speed: float, *, max_sleep_s: float | None = None) -> None:
        _check(speed, max_sleep_s)
        self.speed = speed
        self.max_sleep_s = max_sleep_s
        self._prev_t: int | None = None
        self._due: float | None = None

    def delay(self, event_ms: int, now_s: float) -> float:
        if self.speed == 0:
            return 0.0
        if self._prev_t is None or self._due is None:
            self._prev_t, self._due = event_ms, now_s
            return 0.0
        self._due += _step(event_ms - self._prev_t, self.speed, self.max_sleep_s)
        self._prev_t = max(self._prev_t, event_ms)
        return max(0.0, self._due - now_s)
