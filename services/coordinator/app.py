"""The coordinator's stream app built from settings (used by ``__main__``, the tests and the bench):
the runtime's ``StreamApp`` with the coordinator's processor, event-time aligned release (the join
equals its batch oracle only if no input is consumed late) and a Kafka transaction per unit of work."""

from __future__ import annotations

from reftrain.settings import PlatformSettings
from reftrain.streams import AlignmentMetrics, EventTimeAligned, KafkaTransaction, StreamApp
from services.coordinator import metrics
from services.coordinator.join import STATE_LAYOUT_VERSION
from services.coordinator.processor import INPUTS, CoordinatorProcessor, LatencyObserver, record_event_time
from services.coordinator.settings import CoordinatorSettings
from services.coordinator.spec import SPEC

ALIGNMENT_METRICS = AlignmentMetrics(held=metrics.HELD_RECORDS, timeouts=metrics.ALIGNMENT_TIMEOUTS,
                                     pauses=metrics.PAUSES_TOTAL, paused=metrics.PAUSED_PARTITIONS)


def build_app(
    platform: PlatformSettings,
    settings: CoordinatorSettings,
    service: str = SPEC.name,
    latency_observer: LatencyObserver | None = None,
) -> tuple[StreamApp, CoordinatorProcessor]:
    """Consumes inference-refs, pivots and candles in group ``<prefix>coordinator`` (stateful,
    changelog ``<prefix><group>-state-v<layout>-changelog``), emits to training-jobs."""
    processor = CoordinatorProcessor(settings.join_config(), latency_observer)
    release = EventTimeAligned(record_event_time, max_wait_s=settings.align_max_wait_ms / 1000.0,
                               max_buffered=settings.align_max_buffered, metrics=ALIGNMENT_METRICS)
    app = StreamApp(
        service, platform, list(INPUTS), group=SPEC.group(platform.topic_prefix), processor=processor,
        stateful=True, batch_size=settings.batch_size, poll_timeout_s=settings.poll_timeout_ms / 1000.0,
        release=release, commit=KafkaTransaction(), store=f"state-v{STATE_LAYOUT_VERSION}",
        on_batch_committed=processor.batch_committed, on_batch_aborted=processor.batch_aborted)
    return app, processor
