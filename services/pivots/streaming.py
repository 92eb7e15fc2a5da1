"""The pivots service's stream app, built from settings (shared by ``__main__`` and the bench).

The runtime's ``reftrain.streams.StreamApp`` with the pivot processor, arrival-order release and a
Kafka transaction per unit of work (exactly-once outputs, DLQ, changelog state). The processor's
``end_batch`` hook (called inside each transaction, after its last record, before the offsets are
sent) does the per-transaction store write and emission.
"""

from __future__ import annotations

from reftrain.settings import PlatformSettings
from reftrain.streams import ArrivalOrder, KafkaTransaction, StreamApp
from services.pivots.processor import PivotProcessor, PivotSink
from services.pivots.settings import PivotSettings
from services.pivots.spec import SPEC


def build_app(platform: PlatformSettings, settings: PivotSettings, store: PivotSink,
              service: str = SPEC.name) -> tuple[StreamApp, PivotProcessor]:
    """Consumes ``candles`` in group ``<TOPIC_PREFIX>pivots``, stateful (changelog
    ``<prefix>pivots-state-changelog``), at most ``settings.batch_size`` candles per transaction."""
    processor = PivotProcessor(settings.strengths, store)
    app = StreamApp(service, platform, list(SPEC.inputs), group=SPEC.group(platform.topic_prefix), processor=processor,
                    stateful=True, batch_size=settings.batch_size, release=ArrivalOrder(),
                    commit=KafkaTransaction())
    return app, processor
