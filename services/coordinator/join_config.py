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

DEFAULT_MAX_PIVOT_CONFIRMATION_BARS = 43_200
"""D, a DATA rule: a pivot confirmed more than D bars after its pivot_time joins no ref (§6.7).

Sized from the confirmation delays measured per level on the bundled real data (docs/architecture.md,
"Late pivots"): the slowest level-5 pivot took 7,426 bars, level 4 1,485 bars; 43,200 bars (30 days of
1m bars) leaves a ~6x margin over the slowest pivot seen, so in practice no level is cut off. Refs stay
joinable for pw + D + S; all but the last ``hot_retention_bars`` of that wait in a compact archive."""

DEFAULT_HOT_RETENTION_BARS = 500
"""H, the in-memory (hot) retention: a ref stays a full, indexed record for pw + min(H, D) + S, then
moves into the series' compact, compressed archive until pw + D + S. It changes memory and changelog
size, never which jobs are emitted. 500 bars covers every level-1/2 pivot and 99% of level-3 pivots
measured on 1m data, so only the rare level-4/5 pivots read the archive."""

DEFAULT_ARCHIVE_BUCKET_BARS = 60
"""Archived refs are grouped into one compressed changelog record per this many bars of data_range_end."""

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
    hot_confirmation: int = -1
    """min(H, D) in ms: refs are kept hot (full, indexed) for pw + this + S, then archived until
    pw + D + S. -1 (default) means D: nothing is ever archived."""
    archive_bucket: int = 0
    """Span of one archive bucket in ms (bucket starts are multiples of it)."""

    @property
    def hot(self) -> int:
        """The hot confirmation horizon in ms (D when no hot retention is set)."""
        return self.max_confirmation if self.hot_confirmation < 0 else self.hot_confirmation

    @property
    def archives(self) -> bool:
        """True when refs outlive the hot tier (D > H): late pivots then also search the archive."""
        return self.hot < self.max_confirmation


@dataclass(frozen=True)
class JoinConfig:
    """Knobs of the join: ``pivot_window_ms`` (± ms around pivot_time), ``max_pivot_confirmation_bars``
    (D, which pivots can join at all), ``max_lag_bars`` (S, how late an input may arrive relative
    to the candle stream) and ``hot_retention_bars`` (H, memory only). See
    services/coordinator/join.py for what each bound guarantees."""

    pivot_window_ms: PerTimeframe = DEFAULT_PIVOT_WINDOW_MS
    max_pivot_confirmation_bars: PerTimeframe = DEFAULT_MAX_PIVOT_CONFIRMATION_BARS
    max_lag_bars: PerTimeframe = DEFAULT_MAX_LAG_BARS
    hot_retention_bars: PerTimeframe = DEFAULT_HOT_RETENTION_BARS
    """H: how many of the D bars a ref waits for late pivots as a full in-memory record; the rest in
    the compact archive (join.py, "Archive"). Changes memory, not results."""
    archive_bucket_bars: int = DEFAULT_ARCHIVE_BUCKET_BARS

    def __post_init__(self) -> None:
        if isinstance(self.archive_bucket_bars, bool) or not isinstance(self.archive_bucket_bars, int) \
                or self.archive_bucket_bars < 1:
            raise ValueError(f"JoinConfig.archive_bucket_bars: expected an int >= 1, got {self.archive_bucket_bars!r}")
        for name in ("pivot_window_ms", "max_pivot_confirmation_bars", "max_lag_bars", "hot_retention_bars"):
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
        d = self.max_confirmation(timeframe)
        return Horizons(
            bar=bar,
            pivot_window=self.pivot_window(timeframe),
            max_confirmation=d,
            max_lag=bar * _pick(self.max_lag_bars, timeframe, DEFAULT_MAX_LAG_BARS),
            hot_confirmation=min(d, bar * _pick(self.hot_retention_bars, timeframe, DEFAULT_HOT_RETENTION_BARS)),
            archive_bucket=bar * self.archive_bucket_bars,
        )
