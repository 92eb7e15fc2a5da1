"""``python -m services.inference``: candles -> InferenceRefs (topic ``inference-refs``), models hot-reloaded
from ``model-versions``.

Wiring only; the logic is in windows.py (window rules), refs.py (input and ref), models.py (registry)
and processor.py (the stream processor). Settings: INFERENCE_* (settings.py).

``candles`` and ``model-versions`` are consumed by ONE StreamApp group: both have the same partition
count and producers partition by the same murmur2 hash of the key (the series), so the range
assignor gives this instance the model-versions partition holding exactly its series' models.
"""

from __future__ import annotations

import contextlib
import logging

from reftrain import service
from services.inference import settings as inference_settings
from services.inference.spec import SPEC

log = logging.getLogger("services.inference")


def body(rt: service.Runtime) -> None:
    # imported here so that ``--help`` answers without loading torch and the Kafka client
    import torch

    from reftrain.model import select_device
    from reftrain.store import Store
    from reftrain.streams import ArrivalOrder, KafkaTransaction, StreamApp
    from services.inference.models import ModelRegistry
    from services.inference.processor import InferenceProcessor

    settings = inference_settings.load()
    torch.set_num_threads(settings.torch_threads)
    with contextlib.suppress(RuntimeError):  # only settable before the first parallel work
        torch.set_num_interop_threads(1)
    device = select_device(settings.device or None)
    group = SPEC.group(rt.platform.topic_prefix)
    log.info("inference settings", extra={
        "window": settings.window, "horizon": settings.horizon, "device": str(device),
        "torch_threads": settings.torch_threads, "series": list(settings.series), "group": group})
    def build(store: Store) -> StreamApp:
        registry = ModelRegistry(store, device)
        log.info("model adapter", extra={"adapter": registry.adapter_cls.kind()})
        registry.seed_model()  # build version 0 before the first batch
        processor = InferenceProcessor(store, registry, window_size=settings.window, horizon=settings.horizon,
                                       series=settings.series, max_predict_batch=settings.max_predict_batch)
        return StreamApp(SPEC.name, rt.platform, list(SPEC.inputs), group=group, processor=processor,
                         stateful=False, batch_size=settings.batch_size, release=ArrivalOrder(),
                         commit=KafkaTransaction())

    rt.run_with_store(build)

if __name__ == "__main__":
    service.main(SPEC, body)
