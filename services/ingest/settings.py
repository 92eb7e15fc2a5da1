"""Settings of the ingest service, read from ``INGEST_*`` variables by ``reftrain.settings.load``."""

from __future__ import annotations

from dataclasses import dataclass

from services.ingest.aggregate import DEFAULT_TARGETS
from services.ingest.indicators import DEFAULT_PERIODS


@dataclass(frozen=True)
class IngestSettings:
    #: INGEST_FILES: comma-separated CSV/Parquet/zip paths (SYMBOL-TF-....csv); replay mode.
    files: tuple[str, ...] = ()
    #: INGEST_LAYOUT: auto | simple | binance.
    layout: str = "auto"
    #: INGEST_SPEED: 0 = as fast as possible; N = N times real time (60: one 1m bar per second).
    speed: float = 0.0
    #: INGEST_MAX_SLEEP: cap of one replay wait in seconds (a 33 h exchange outage must not stall a demo).
    max_sleep: float = 60.0
    #: INGEST_DERIVE: higher timeframes aggregated from 1m and published as their own series ("" = none).
    derive: tuple[str, ...] = DEFAULT_TARGETS
    #: INGEST_SMA / INGEST_EMA: periods of the close's SMA/EMA stored with every candle.
    sma: tuple[int, ...] = DEFAULT_PERIODS
    ema: tuple[int, ...] = DEFAULT_PERIODS
    #: INGEST_WS_URL: kline WebSocket URL; when set the service runs live instead of replaying files.
    ws_url: str = ""
    #: INGEST_BATCH: candles per store commit (and per publish) during a fast replay.
    batch: int = 500
    #: INGEST_COMPACT_EVERY: flush inlined rows / merge small Parquet files every N commits (0 = never).
    compact_every: int = 200
    #: INGEST_EXIT_WHEN_DONE: exit 0 after the files are replayed (false: keep serving /metrics).
    exit_when_done: bool = True
    #: INGEST_PROGRESS: auto (a bar only when stderr is a terminal) | on | off.
    progress: str = "auto"
