"""Join configuration of the coordinator: the pivot window and the two time bounds.

Kept apart from the engine so the batch oracle reads the same knobs without importing join code.

Each knob takes one value for every timeframe or a mapping ``timeframe -> value``; a timeframe
missing from a mapping falls back to the module default. The pivot window is in milliseconds (the
design says "±5 minutes"); the two bounds are in bars of the series' timeframe, because how long a
pivot takes to confirm and how far one topic can run ahead of another both scale with the bar.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reftrain.records import timeframe_ms

DEFAULT_PIVOT_WINDOW_MS = 300_000
"""A pivot joins the refs whose inference time lies within ±5 minutes of its pivot_time (§6.6)."""

DEFAULT_MAX_PIVOT_CONFIRMATION_BARS = 500
"""D, a DATA rule: a pivot confirmed more than D bars after its pivot_time joins no ref (§6.7)."""

DEFAULT_MAX_LAG_BARS = 500
"""S, an ARRIVAL bound: an input is late when its series' watermark (max candle open_time seen) is
more than S bars past the input's event time (candle open_time, ref data_range_end, pivot
confirmed_at). Late inputs are counted and ignored; below the bound the join is exact."""

PerTimeframe = int | Mapping[str, int]


def _pick(value: PerTimeframe, timeframe: str, default: int) -> int:
    if isinstance(value, Mapping):
        return int(value.get(timeframe, default))
    return int(value)


@dataclass(frozen=True)
class Horizons:
    """The join's time bounds for one timeframe, in milliseconds (derived from JoinConfig)."""

    bar: int
    pivot_window: int
    """± around a pivot's pivot_time within which a ref's data_range_end joins it."""
    max_confirmation: int
    """D in ms: pivots with confirmed_at - pivot_time > D are never joined."""
    max_lag: int
    """S in ms: an input whose event time is more than S behind the watermark is late."""


@dataclass(frozen=True)
class JoinConfig:
    """Knobs of the join: ``pivot_window_ms`` (± ms around pivot_time), ``max_pivot_confirmation_bars``
    (D, which pivots can join at all) and ``max_lag_bars`` (S, how late an input may arrive relative
    to the candle stream). See services/coordinator/join.py for what each bound guarantees."""

    pivot_window_ms: PerTimeframe = DEFAULT_PIVOT_WINDOW_MS
    max_pivot_confirmation_bars: PerTimeframe = DEFAULT_MAX_PIVOT_CONFIRMATION_BARS
    max_lag_bars: PerTimeframe = DEFAULT_MAX_LAG_BARS

    def __post_init__(self) -> None:
        for name in ("pivot_window_ms", "max_pivot_confirmation_bars", "max_lag_bars"):
            value = getattr(self, name)
            values = list(value.values()) if isinstance(value, Mapping) else [value]
            for v in values:
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise ValueError(f"JoinConfig.{name}: expected non-negative int(s), got {value!r}")

    def pivot_window(self, timeframe: str) -> int:
        """± window around a pivot's pivot_time, in ms, for this timeframe."""
        return _pick(self.pivot_window_ms, timeframe, DEFAULT_PIVOT_WINDOW_MS)

    def max_confirmation(self, timeframe: str) -> int:
        """D in ms for this timeframe; raises ValueError for an unknown timeframe."""
        bars = _pick(self.max_pivot_confirmation_bars, timeframe, DEFAULT_MAX_PIVOT_CONFIRMATION_BARS)
        return timeframe_ms(timeframe) * bars

    def horizons(self, timeframe: str) -> Horizons:
        """All bounds of one timeframe in ms; raises ValueError for an unknown timeframe."""
        bar = timeframe_ms(timeframe)
        return Horizons(
            bar=bar,
            pivot_window=self.pivot_window(timeframe),
            max_confirmation=self.max_confirmation(timeframe),
            max_lag=bar * _pick(self.max_lag_bars, timeframe, DEFAULT_MAX_LAG_BARS),
        )
