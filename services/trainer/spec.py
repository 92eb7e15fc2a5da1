"""What the trainer is (name, port, group, topics, settings, readiness), declared once: see reftrain/spec.py."""

from __future__ import annotations

from reftrain.spec import ServiceSpec
from reftrain.topics import MODEL_VERSIONS, TRAINING_JOBS
from services.trainer.settings import TrainerSettings

SPEC = ServiceSpec(
    name="trainer",
    description="re-reads and verifies windows, trains, checkpoints with offsets",
    default_port=8005,
    inputs=(TRAINING_JOBS,),
    outputs=(MODEL_VERSIONS,),
    settings_class=TrainerSettings,
    env_prefix="TRAINER_",
    readiness="partitions are assigned and each one's model and offsets are restored from its checkpoint",
    state="checkpoints in the store",
)
SERVICE = SPEC.name
