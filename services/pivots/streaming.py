"""The pivots service's stream app, built from settings (shared by ``__main__`` and the bench).

A plain ``reftrain.streams.StreamApp``: exactly-once transactions, DLQ, changelog state. The
processor's ``end_batch`` hook (called by StreamApp inside each transaction, after its last record,
before the offsets are sent) does the per-transaction store write and emission.
"""

from __future__ import annotations

from reftrain.settings import PlatformSettings
from reftrain.streams import StreamApp
from reftrain.topics import CANDLES
from services.pivots.config import SERVICE, PivotSettings, group_id
from services.pivots.processor import PivotProcessor, PivotSink


def build_app(platform: PlatformSettings, settings: PivotSettings, store: PivotSink,
              service: str = SERVICE) -> tuple[StreamApp, PivotProcessor]:
    """Consumes ``candles`` in group ``<TOPIC_PREFIX>pivots``, stateful (changelog
    ``<prefix>pivots-state-changelog``), at most ``settings.batch_size`` candles per transaction."""
    processor = PivotProcessor(settings.strengths, store)
    app = StreamApp(service, platform, [CANDLES], group=group_id(platform.topic_prefix), processor=processor,
                    stateful=True, batch_size=settings.batch_size)
    return app, processor
