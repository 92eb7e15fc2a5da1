"""Settings of the coordinator service (environment ``COORDINATOR_*``), validated at start-up so a bad
value stops the service with a clear message instead of producing a wrong join.

The join knobs map onto ``JoinConfig`` (services/coordinator/join_config.py); each has one value for every
timeframe plus an optional per-timeframe override, e.g.::

    COORDINATOR_PIVOT_WINDOW_MS=300000
    COORDINATOR_PIVOT_WINDOW_MS_BY_TIMEFRAME="1h=1800000,4h=7200000"

A timeframe missing from an override takes the plain value (not the module default), which is what
an operator who sets ``COORDINATOR_PIVOT_WINDOW_MS`` alone expects.

The transactional identity is the platform's ``INSTANCE_ID`` (reftrain.settings): keep it stable per
replica so a restarted replica fences its killed predecessor at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from reftrain.records import TIMEFRAME_MS
from reftrain.settings import Settings
from services.coordinator.join_config import (
    DEFAULT_HOT_RETENTION_BARS,
    DEFAULT_MAX_LAG_BARS,
    DEFAULT_MAX_PIVOT_CONFIRMATION_BARS,
    DEFAULT_PIVOT_WINDOW_MS,
    JoinConfig,
)

#: A per-timeframe override map: ``1h=1800000,4h=7200000``; every value >= 0.
Overrides = dict[str, Annotated[int, Field(ge=0)]]


class CoordinatorSettings(Settings):
    """Join knobs (see join_config.py for what each bound guarantees), alignment and transaction knobs."""

    model_config = SettingsConfigDict(env_prefix="COORDINATOR_")

    #: ± ms around a pivot's pivot_time within which a ref's data_range_end joins it (docs/semantics.md, rule 6).
    pivot_window_ms: int = Field(default=DEFAULT_PIVOT_WINDOW_MS, ge=0)
    pivot_window_ms_by_timeframe: Overrides = Field(default_factory=dict)
    #: D: pivots confirmed more than D bars after pivot_time join nothing (a data rule, §6.7).
    max_confirmation_bars: int = Field(default=DEFAULT_MAX_PIVOT_CONFIRMATION_BARS, ge=0)
    max_confirmation_bars_by_timeframe: Overrides = Field(default_factory=dict)
    #: S: an input whose event time is more than S bars behind its series' candle watermark is late.
    max_lag_bars: int = Field(default=DEFAULT_MAX_LAG_BARS, ge=0)
    max_lag_bars_by_timeframe: Overrides = Field(default_factory=dict)
    #: H: of the D bars a ref waits for pivots, how many it waits as a full in-memory record; after
    #: that it waits in the compact archive (memory and changelog size only, never the jobs).
    hot_retention_bars: int = Field(default=DEFAULT_HOT_RETENTION_BARS, ge=0)
    hot_retention_bars_by_timeframe: Overrides = Field(default_factory=dict)
    #: Messages per consume call (and at most per transaction).
    batch_size: int = Field(default=500, ge=1)
    #: How long one consume call waits to fill a batch: bounds the batching delay a live input sees
    #: (join latency) against the number of transactions per second.
    poll_timeout_ms: int = Field(default=200, ge=1)
    #: Event-time alignment: how long a held record waits for an input partition that is neither
    #: caught up nor delivering (e.g. an open transaction at its tail) before it stops waiting.
    align_max_wait_ms: int = Field(default=5_000, ge=0)
    #: Records held per input topic-partition before that partition is paused (memory bound).
    align_max_buffered: int = Field(default=20_000, ge=1)

    @field_validator("pivot_window_ms_by_timeframe", "max_confirmation_bars_by_timeframe",
                     "max_lag_bars_by_timeframe", "hot_retention_bars_by_timeframe")
    @classmethod
    def _known_timeframes(cls, overrides: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(overrides) - set(TIMEFRAME_MS))
        if unknown:
            raise ValueError(f"unknown timeframes {unknown}; known: {sorted(TIMEFRAME_MS)}")
        return overrides

    def join_config(self) -> JoinConfig:
        """The engine's config: plain values expanded over every timeframe, overrides on top."""

        def expand(base: int, overrides: Mapping[str, int]) -> dict[str, int]:
            return {tf: int(overrides.get(tf, base)) for tf in TIMEFRAME_MS}

        return JoinConfig(
            pivot_window_ms=expand(self.pivot_window_ms, self.pivot_window_ms_by_timeframe),
            max_pivot_confirmation_bars=expand(self.max_confirmation_bars,
                                               self.max_confirmation_bars_by_timeframe),
            max_lag_bars=expand(self.max_lag_bars, self.max_lag_bars_by_timeframe),
            hot_retention_bars=expand(self.hot_retention_bars, self.hot_retention_bars_by_timeframe),
        )


def load(environ: Mapping[str, str] | None = None) -> CoordinatorSettings:
    return CoordinatorSettings.from_env(environ)
