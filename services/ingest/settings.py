"""Settings of the ingest service (environment ``INGEST_*``), validated at start-up so a bad value
stops the service with a clear message before anything is written."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from reftrain.errors import ConfigError
from reftrain.settings import Settings
from services.ingest.aggregate import DEFAULT_TARGETS
from services.ingest.indicators import DEFAULT_PERIODS


class IngestSettings(Settings):
    model_config = SettingsConfigDict(env_prefix="INGEST_")

    #: INGEST_FILES: comma-separated CSV/Parquet/zip paths (SYMBOL-TF-....csv); replay mode.
    files: tuple[str, ...] = ()
    #: INGEST_LAYOUT: auto | simple | binance.
    layout: Literal["auto", "simple", "binance"] = "auto"
    #: INGEST_SPEED: 0 = as fast as possible; N = N times real time (60: one 1m bar per second).
    speed: float = Field(default=0.0, ge=0)
    #: INGEST_MAX_SLEEP: cap of one replay wait in seconds (a 33 h exchange outage must not stall a demo).
    max_sleep: float = Field(default=60.0, ge=0)
    #: INGEST_DERIVE: higher timeframes aggregated from 1m and published as their own series ("" = none).
    derive: tuple[str, ...] = DEFAULT_TARGETS
    #: INGEST_SMA / INGEST_EMA: periods of the close's SMA/EMA stored with every candle.
    sma: tuple[Annotated[int, Field(ge=1)], ...] = DEFAULT_PERIODS
    ema: tuple[Annotated[int, Field(ge=1)], ...] = DEFAULT_PERIODS
    #: INGEST_WS_URL: kline WebSocket URL; when set the service runs live instead of replaying files.
    ws_url: str = ""
    #: INGEST_WS_IDLE_TIMEOUT: seconds without any WebSocket message before the connection is closed
    #: and reopened with back-off (Binance sends an update every ~2 s; 0 = never).
    ws_idle_timeout: float = 30.0
    #: INGEST_BATCH: candles per store commit (and per publish) during a fast replay.
    batch: int = Field(default=500, ge=1)
    #: INGEST_COMPACT_EVERY: flush inlined rows / merge small Parquet files every N commits (0 = never).
    compact_every: int = Field(default=200, ge=0)
    #: INGEST_EXIT_WHEN_DONE: exit 0 after the files are replayed (false: keep serving /metrics).
    exit_when_done: bool = True
    #: INGEST_PROGRESS: auto (a bar only when stderr is a terminal) | on | off.
    progress: Literal["auto", "on", "off"] = "auto"


def load(environ: Mapping[str, str] | None = None) -> IngestSettings:
    """The settings from ``INGEST_*``; one of INGEST_FILES (replay) or INGEST_WS_URL (live) is required
    to run (the model alone may be empty, so ``--help`` and the docs can show the defaults)."""
    cfg = IngestSettings.from_env(environ)
    if not cfg.files and not cfg.ws_url:
        raise ConfigError("set INGEST_FILES (replay) or INGEST_WS_URL (live)")
    return cfg
