"""Every service's ``ServiceSpec`` (services/<name>/spec.py), in data-flow order.

The one place ops, the docs tests and the deployment tests ask "which services exist, on which
port, in which group, reading and writing which topics"; see reftrain/spec.py.
"""

from __future__ import annotations

from reftrain.spec import ServiceSpec
from services.coordinator.spec import SPEC as COORDINATOR
from services.inference.spec import SPEC as INFERENCE
from services.ingest.spec import SPEC as INGEST
from services.pivots.spec import SPEC as PIVOTS
from services.trainer.spec import SPEC as TRAINER

#: In data-flow order (also the order of ops' progress table and report, and of the README table).
SPECS: tuple[ServiceSpec, ...] = (INGEST, PIVOTS, INFERENCE, COORDINATOR, TRAINER)
BY_NAME: dict[str, ServiceSpec] = {s.name: s for s in SPECS}

__all__ = ["BY_NAME", "COORDINATOR", "INFERENCE", "INGEST", "PIVOTS", "SPECS", "TRAINER"]
