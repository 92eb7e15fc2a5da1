"""Per-series sequencing: decide what happens to each incoming candle before it is stored.

Every candle gets exactly one :class:`Verdict` (docs/semantics.md rule 10: bad input has a defined outcome and a
counter, never a silent drop):

=============  ==========================  ==================================================
outcome        reason (counter label)      meaning
=============  ==========================  ==================================================
ACCEPT         ``accepted``                newer than the last accepted candle: store, publish.
                                           ``gap_bars`` > 0 says how many bars are missing
                                           before it (never filled in: a made-up candle would
                                           be a lie that trains a model).
DUPLICATE      ``duplicate``               same open_time already accepted, identical values.
DUPLICATE      ``conflicting_duplicate``   same open_time already accepted, different values
                                           (a late correction: the first one stays; quarantine).
DUPLICATE      ``duplicate_unverified``    open_time accepted earlier (or at/before the point
                                           this guard was resumed from) but its values are no
                                           longer in memory, so they cannot be compared; the
                                           service may look the row up in the store.
OUT_OF_ORDER   ``out_of_order``            older than the last accepted candle and never
                                           accepted (e.g. fills a gap late): accepting it would
                                           change windows already referenced.
INVALID        validation reason           ``reftrain.validation.validate_candle`` rejected it
                                           (``high_below_low``, ``non_finite_price``, ...),
                                           or ``malformed_record`` (a field missing or of the
                                           wrong type).
=============  ==========================  ==================================================

Validation runs first, so an invalid candle is INVALID even if its open_time is a duplicate.
``check`` never changes state; ``commit`` records a candle once it is stored (write before
publish: a failed store write must not advance the guard); ``offer`` does both.

State is small and JSON-serialisable: the last accepted open_time, the runs of consecutive accepted
open times (one pair per gap, so exact duplicate detection costs O(gaps), not O(candles)), and the
``horizon`` at or before which the guard knows nothing exact (set on resume from the store's last
row, or when old runs are pruned). Candle values are kept only for the last ``memory`` candles.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from reftrain.errors import InvalidRecordError
from reftrain.records import Candle, series_key, split_series, timeframe_ms
from reftrain.validation import validate_candle

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
CONFLICTING_DUPLICATE = "conflicting_duplicate"
DUPLICATE_UNVERIFIED = "duplicate_unverified"
OUT_OF_ORDER = "out_of_order"


class Outcome(StrEnum):
    ACCEPT = "accept"
    DUPLICATE = "duplicate"
    OUT_OF_ORDER = "out_of_order"
    INVALID = "invalid"


@dataclass(frozen=True)
class Verdict:
    """What to do with one candle. ``reason`` is the stable counter / quarantine label."""

    outcome: Outcome
    reason: str
    detail: str = ""
    gap_bars: int = 0
    gap_start: int | None = None  # open_time of the first missing bar when gap_bars > 0

    @property
    def accepted(self) -> bool:
        return self.outcome is Outcome.ACCEPT


def candle_values(c: Candle) -> tuple[Any, ...]:
    """What makes two candles of one open_time 'identical' (the source label does not count)."""
    return (c["close_time"], c["open"], c["high"], c["low"], c["close"], c["volume"], c.get("trades"))


@dataclass
class GuardState:
    """Serialisable state of one series (see module doc)."""

    last_open_time: int | None = None
    horizon: int | None = None
    runs: list[tuple[int, int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "last_open_time": self.last_open_time,
            "horizon": self.horizon,
            "runs": [[a, b] for a, b in self.runs],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GuardState:
        last = d.get("last_open_time")
        horizon = d.get("horizon", last)  # only a last open_time (e.g. the store's last row)
        runs = [(int(a), int(b)) for a, b in d.get("runs", ())]
        return cls(
            last_open_time=None if last is None else int(last),
            horizon=None if horizon is None else int(horizon),
            runs=runs,
        )


def _invalid(c: Candle) -> Verdict | None:
    try:
        validate_candle(dict(c))
    except InvalidRecordError as e:
        return Verdict(Outcome.INVALID, e.reason, e.detail)
    except (KeyError, TypeError) as e:  # a field missing or of the wrong type
        return Verdict(Outcome.INVALID, "malformed_record", repr(e))
    return None


class SeriesGuard:
    """Sequencing and validation of ONE series (``symbol``, ``timeframe``)."""

    def __init__(
        self,
        symbol: str,
        timeframe: str,
        *,
        state: GuardState | None = None,
        memory: int = 1440,
        max_runs: int = 10_000,
    ) -> None:
        if memory < 1 or max_runs < 1:
            raise ValueError("memory and max_runs must be >= 1")
        self.symbol = symbol
        self.timeframe = timeframe
        self.bar_ms = timeframe_ms(timeframe)
        self.memory = memory
        self.max_runs = max_runs
        st = state or GuardState()
        self._last = st.last_open_time
        self._horizon = st.horizon
        self._starts = [a for a, _ in st.runs]
        self._ends = [b for _, b in st.runs]
        self._values: OrderedDict[int, tuple[Any, ...]] = OrderedDict()

    @classmethod
    def resume(cls, symbol: str, timeframe: str, stored_tail: Iterable[Candle], **kw: Any) -> SeriesGuard:
        """A guard that continues after the store's last rows (``stored_tail``, sorted, may be one row).

        Open times inside the tail are known exactly (values too); anything before its first row
        is below the horizon (``duplicate_unverified``).
        """
        tail = list(stored_tail)
        if not tail:
            return cls(symbol, timeframe, **kw)
        guard = cls(symbol, timeframe, state=GuardState(horizon=tail[0]["open_time"] - 1), **kw)
        for c in tail:
            guard.commit(c, validate=False)
        return guard

    @property
    def series(self) -> str:
        return series_key(self.symbol, self.timeframe)

    @property
    def last_open_time(self) -> int | None:
        return self._last

    def state(self) -> GuardState:
        return GuardState(self._last, self._horizon, list(zip(self._starts, self._ends, strict=True)))

    def _in_runs(self, t: int) -> bool:
        i = bisect.bisect_right(self._starts, t) - 1
        return i >= 0 and t <= self._ends[i] and (t - self._starts[i]) % self.bar_ms == 0

    def check(self, c: Candle) -> Verdict:
        """Classify ``c`` without changing state."""
        if c.get("symbol") != self.symbol or c.get("timeframe") != self.timeframe:
            raise ValueError(
                f"candle of {c.get('symbol')}:{c.get('timeframe')} given to guard of {self.series}"
            )
        invalid = _invalid(c)
        return invalid if invalid is not None else self._sequence(c)

    def _sequence(self, c: Candle) -> Verdict:
        t = c["open_time"]
        last = self._last
        if last is None or t > last:
            missing = 0 if last is None else (t - last) // self.bar_ms - 1
            if missing > 0 and last is not None:
                return Verdict(
                    Outcome.ACCEPT, ACCEPTED, f"{missing} bars missing", missing, last + self.bar_ms
                )
            return Verdict(Outcome.ACCEPT, ACCEPTED)
        seen = self._values.get(t)
        if seen is not None:
            if seen == candle_values(c):
                return Verdict(Outcome.DUPLICATE, DUPLICATE)
            return Verdict(
                Outcome.DUPLICATE, CONFLICTING_DUPLICATE, f"stored {seen} != new {candle_values(c)}"
            )
        if self._in_runs(t):
            return Verdict(
                Outcome.DUPLICATE, DUPLICATE_UNVERIFIED, "accepted earlier; values no longer in memory"
            )
        if self._horizon is not None and t <= self._horizon:
            return Verdict(
                Outcome.DUPLICATE, DUPLICATE_UNVERIFIED, f"at/before resume horizon {self._horizon}"
            )
        return Verdict(Outcome.OUT_OF_ORDER, OUT_OF_ORDER, f"open_time {t} < last accepted {last}")

    def commit(self, c: Candle, *, validate: bool = True) -> None:
        """Record ``c`` as accepted (call after the store write succeeded)."""
        if validate:
            v = self.check(c)
            if not v.accepted:
                raise ValueError(f"commit of a candle that is not acceptable: {v}")
        t = c["open_time"]
        if self._last is not None and t <= self._last:
            raise ValueError(f"commit out of order: {t} <= {self._last}")
        if self._ends and self._ends[-1] + self.bar_ms == t:
            self._ends[-1] = t
        else:
            self._starts.append(t)
            self._ends.append(t)
            if len(self._starts) > self.max_runs:
                oldest_end = self._ends[0]
                self._horizon = oldest_end if self._horizon is None else max(self._horizon, oldest_end)
                del self._starts[0], self._ends[0]
        self._last = t
        self._values[t] = candle_values(c)
        while len(self._values) > self.memory:
            self._values.popitem(last=False)

    def offer(self, c: Candle) -> Verdict:
        """``check`` and, when accepted, ``commit`` (for callers without a store write in between)."""
        v = self.check(c)
        if v.accepted:
            self.commit(c, validate=False)
        return v


class Sequencer:
    """One SeriesGuard per series, created on first sight; state is a JSON-able dict by series key."""

    def __init__(self, *, memory: int = 1440, max_runs: int = 10_000) -> None:
        self.memory = memory
        self.max_runs = max_runs
        self.guards: dict[str, SeriesGuard] = {}

    def guard(self, symbol: str, timeframe: str) -> SeriesGuard:
        key = series_key(symbol, timeframe)
        g = self.guards.get(key)
        if g is None:
            g = self.guards[key] = SeriesGuard(symbol, timeframe, memory=self.memory, max_runs=self.max_runs)
        return g

    def _guard_of(self, c: Candle) -> SeriesGuard:
        return self.guard(c["symbol"], c["timeframe"])

    def check(self, c: Candle) -> Verdict:
        """Validate first, so an invalid candle (unknown timeframe, empty symbol) creates no guard."""
        invalid = _invalid(c)
        return invalid if invalid is not None else self._guard_of(c)._sequence(c)

    def commit(self, c: Candle) -> None:
        self._guard_of(c).commit(c)

    def offer(self, c: Candle) -> Verdict:
        v = self.check(c)
        if v.accepted:
            self._guard_of(c).commit(c, validate=False)
        return v

    def resume(self, symbol: str, timeframe: str, stored_tail: Iterable[Candle]) -> SeriesGuard:
        """Replace the series' guard by one resumed from the store's last rows."""
        g = SeriesGuard.resume(symbol, timeframe, stored_tail, memory=self.memory, max_runs=self.max_runs)
        self.guards[g.series] = g
        return g

    def state(self) -> dict[str, dict[str, Any]]:
        return {key: g.state().to_dict() for key, g in sorted(self.guards.items())}

    @classmethod
    def from_state(cls, state: Mapping[str, Mapping[str, Any]], **kw: Any) -> Sequencer:
        """Rebuild from ``state()``; ``{"BTCUSDT:1m": {"last_open_time": t}}`` (the store's last row)
        works too: everything at or before t is then ``duplicate_unverified``."""
        seq = cls(**kw)
        for key, st in state.items():
            symbol, tf = split_series(key)
            seq.guards[key] = SeriesGuard(
                symbol, tf, state=GuardState.from_dict(st), memory=seq.memory, max_runs=seq.max_runs
            )
        return seq
