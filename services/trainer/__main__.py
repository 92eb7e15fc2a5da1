"""``python -m services.trainer``: train each model on its verified training jobs, exactly once per
lineage, and publish its versions (topic ``model-versions`` + store table ``model_versions``).

Wiring only; the logic is in windows.py (fetch + verify), batch.py (inputs, targets, steps),
lineage.py (the exactly-once protocol), engine.py (models and checkpoints) and kafka_loop.py (the
consumer group). Settings: ``TRAINER_*`` (settings.py).
"""

from __future__ import annotations

import logging

from reftrain import service
from services.trainer import settings as trainer_settings
from services.trainer.spec import SPEC

log = logging.getLogger("services.trainer")


def body(rt: service.Runtime) -> None:
    # imported here so that ``--help`` answers without loading torch and the Kafka client
    from reftrain.store import Store
    from services.trainer.kafka_loop import TrainerLoop

    settings = trainer_settings.load()
    store = Store.from_settings(rt.platform)
    try:
        TrainerLoop(rt.platform, settings, store, rt.health).run(rt.stop)
    finally:
        store.close()


if __name__ == "__main__":
    service.main(SPEC, body)
