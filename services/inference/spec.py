"""What inference is (name, port, group, topics, settings, readiness), declared once: see reftrain/spec.py."""

from __future__ import annotations

from reftrain.spec import ServiceSpec
from reftrain.topics import CANDLES, INFERENCE_REFS, MODEL_VERSIONS
from services.inference.settings import InferenceSettings

SPEC = ServiceSpec(
    name="inference",
    description="predicts on the last 600 candles, logs the prediction by reference",
    default_port=8003,
    inputs=(CANDLES, MODEL_VERSIONS),
    outputs=(INFERENCE_REFS,),
    settings_class=InferenceSettings,
    env_prefix="INFERENCE_",
    readiness="partitions are assigned (models are loaded from the store on demand)",
    state="store (reads windows)",
)
SERVICE = SPEC.name
