"""``python -m services.trainer``: train each model on its verified training jobs, exactly once per
lineage, and publish its versions (topic ``model-versions`` + store table ``model_versions``).

Wiring only; the logic is in windows.py (fetch + verify), batch.py (inputs, targets, steps),
lineage.py (the exactly-once protocol), engine.py (models and checkpoints) and processor.py (the
runtime's StreamApp with the checkpoint commit policy: reftrain/streams). Settings: ``TRAINER_*``
(settings.py).
"""

from __future__ import annotations

import logging

from reftrain import service
from services.trainer import settings as trainer_settings
from services.trainer.spec import SPEC

log = logging.getLogger("services.trainer")


def body(rt: service.Runtime) -> None:
    # imported here so that ``--help`` answers without loading torch and the Kafka client
    from services.trainer.processor import build_app

    settings = trainer_settings.load()
    rt.run_with_store(lambda store: build_app(rt.platform, settings, store)[0])


if __name__ == "__main__":
    service.main(SPEC, body)
