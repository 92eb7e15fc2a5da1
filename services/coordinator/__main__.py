"""``python -m services.coordinator``: inference-refs + candles + pivots -> training-jobs.

Wiring only; the join is in join.py (pure engine), processor.py (engine per partition, changelog,
metrics), app.py (the runtime's StreamApp with event-time aligned release and a Kafka transaction
per unit of work: reftrain/streams) and settings.py (``COORDINATOR_*``). Platform settings
(broker, registry, ``TOPIC_PREFIX``, ``INSTANCE_ID``, ``HTTP_PORT``) come from reftrain.settings.
"""

from __future__ import annotations

import logging

from reftrain import service
from services.coordinator import settings as coordinator_settings
from services.coordinator.spec import SPEC

log = logging.getLogger("services.coordinator")


def body(rt: service.Runtime) -> None:
    # imported here so that ``--help`` answers without loading the Kafka client
    from services.coordinator.app import build_app

    settings = coordinator_settings.load()
    app, _ = build_app(rt.platform, settings)
    log.info("coordinator settings", extra={
        "group": app.group, "instance_id": app.instance_id, "changelog": app.changelog,
        "settings": settings.as_dict()})
    app.run(rt.stop, rt.health)


if __name__ == "__main__":
    service.main(SPEC, body)
