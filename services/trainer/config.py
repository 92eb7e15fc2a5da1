"""Transitional alias of services/trainer/settings.py and spec.py, kept only because
services/trainer/kafka_loop.py (being replaced by the reftrain.streams runtime, issue 15 item 1)
still imports it. New code imports ``services.trainer.settings`` / ``services.trainer.spec``."""

from __future__ import annotations

from services.trainer.settings import FAILPOINT_STAGES, TrainerSettings, load
from services.trainer.spec import SERVICE, SPEC

group_id = SPEC.group

__all__ = ["FAILPOINT_STAGES", "SERVICE", "TrainerSettings", "group_id", "load"]
