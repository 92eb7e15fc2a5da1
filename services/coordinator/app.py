"""The coordinator's stream app built from settings (used by ``__main__``, the tests and the bench)."""

from __future__ import annotations

from reftrain.settings import PlatformSettings
from services.coordinator.aligned import AlignedStreamApp
from services.coordinator.join import STATE_LAYOUT_VERSION
from services.coordinator.processor import INPUTS, CoordinatorProcessor, LatencyObserver, record_event_time
from services.coordinator.settings import CoordinatorSettings
from services.coordinator.spec import SPEC


def build_app(
    platform: PlatformSettings,
    settings: CoordinatorSettings,
    service: str = SPEC.name,
    latency_observer: LatencyObserver | None = None,
) -> tuple[AlignedStreamApp, CoordinatorProcessor]:
    """Consumes inference-refs, pivots and candles in group ``<prefix>coordinator`` (stateful,
    changelog ``<prefix><group>-state-v<layout>-changelog``), emits to training-jobs."""
    processor = CoordinatorProcessor(settings.join_config(), latency_observer)
    app = AlignedStreamApp(
        service, platform, list(INPUTS), group=SPEC.group(platform.topic_prefix), processor=processor,
        stateful=True, batch_size=settings.batch_size,
        poll_timeout_s=settings.poll_timeout_ms / 1000.0, on_batch_committed=processor.batch_committed,
        event_time=record_event_time, max_wait_s=settings.align_max_wait_ms / 1000.0,
        max_buffered=settings.align_max_buffered, store=f"state-v{STATE_LAYOUT_VERSION}",
        on_batch_aborted=processor.batch_aborted)
    return app, processor
