"""What the coordinator is (name, port, group, topics, settings, readiness), declared once: see
reftrain/spec.py."""

from __future__ import annotations

from reftrain.spec import ServiceSpec
from reftrain.topics import CANDLES, INFERENCE_REFS, PIVOTS, TRAINING_JOBS
from services.coordinator.settings import CoordinatorSettings

SPEC = ServiceSpec(
    name="coordinator",
    description="joins refs with target candles and nearby pivots, exactly once",
    default_port=8004,
    inputs=(INFERENCE_REFS, CANDLES, PIVOTS),
    outputs=(TRAINING_JOBS,),
    settings_class=CoordinatorSettings,
    env_prefix="COORDINATOR_",
    readiness="partitions are assigned and their join state is restored from the changelog",
    state="changelog",
)
SERVICE = SPEC.name
