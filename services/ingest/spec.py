"""What ingest is (name, port, topics, settings, readiness), declared once: see reftrain/spec.py."""

from __future__ import annotations

from reftrain.spec import ServiceSpec
from reftrain.topics import CANDLES
from services.ingest.settings import IngestSettings

SPEC = ServiceSpec(
    name="ingest",
    description="validates, de-duplicates, derives 5m/15m/1h, SMA/EMA; writes the store before publishing",
    default_port=8001,
    inputs=(),
    external_inputs=("CSV/Parquet files", "Binance kline WebSocket"),
    outputs=(CANDLES,),
    settings_class=IngestSettings,
    env_prefix="INGEST_",
    readiness="the store/topic resume is done and the replay (or live stream) has started",
    state="store (candles, indicators)",
    replay=True,
)
SERVICE = SPEC.name
