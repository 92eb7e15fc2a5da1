"""What pivots is (name, port, group, topics, settings, readiness), declared once: see reftrain/spec.py."""

from __future__ import annotations

from reftrain.spec import ServiceSpec
from reftrain.topics import CANDLES, PIVOTS
from services.pivots.settings import PivotSettings

SPEC = ServiceSpec(
    name="pivots",
    description="multi-level Williams swing pivots, emitted once when confirmed",
    default_port=8002,
    inputs=(CANDLES,),
    outputs=(PIVOTS,),
    settings_class=PivotSettings,
    env_prefix="PIVOTS_",
    readiness="partitions are assigned and their state is restored from the changelog",
    state="changelog + store",
)
SERVICE = SPEC.name
