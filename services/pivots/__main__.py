"""``python -m services.pivots``: candles -> confirmed multi-level pivots (topic ``pivots`` + store).

Wiring only; the logic is in detector.py (rule), processor.py (state, store, emission) and
streaming.py (the app). Settings: PIVOTS_STRENGTHS, PIVOTS_BATCH_SIZE (settings.py).
"""

from __future__ import annotations

import logging

from reftrain import service
from services.pivots import settings as pivots_settings
from services.pivots.spec import SPEC

log = logging.getLogger("services.pivots")


def body(rt: service.Runtime) -> None:
    # imported here so that ``--help`` answers without loading the Kafka client
    from services.pivots.streaming import build_app

    settings = pivots_settings.load()
    log.info("pivot settings", extra={
        "strengths": list(settings.strengths), "batch_size": settings.batch_size,
        "group": SPEC.group(rt.platform.topic_prefix)})
    rt.run_with_store(lambda store: build_app(rt.platform, settings, store)[0])


if __name__ == "__main__":
    service.main(SPEC, body)
