"""``StreamApp`` with a pre-commit hook, and the pivots app built from settings.

Why a hook: the pivots service must write each transaction's pivots to the store in one call, after
the transaction's last record and before its commit (services/pivots/processor.py). reftrain's
``StreamApp`` offers ``on_batch_committed`` (too late: after the commit) but nothing before it.
Until reftrain grows that hook, this subclass runs ``before_commit(ctx)`` at the one point in
``_process_batch`` where every record has been handled and the offsets are about to join the
transaction: the producer's ``send_offsets_to_transaction``. Whatever the hook raises aborts the
transaction exactly as a failure in ``Processor.process`` would (RestartSession and Kafka or registry
errors are caught there; the processor turns everything else into RestartSession).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, Message, Producer

from reftrain.settings import PlatformSettings
from reftrain.streams import Context, StreamApp
from reftrain.topics import CANDLES
from services.pivots.config import SERVICE, PivotSettings, group_id
from services.pivots.processor import PivotProcessor, PivotSink


class _HookedProducer:
    """Delegates to the real producer, running ``hook`` first when the batch's offsets are sent."""

    def __init__(self, producer: Producer, hook: Callable[[], None]) -> None:
        self._producer = producer
        self._hook = hook

    def send_offsets_to_transaction(self, *args: Any, **kwargs: Any) -> None:
        self._hook()
        self._producer.send_offsets_to_transaction(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)


@dataclass
class PreCommitStreamApp(StreamApp):
    """A ``StreamApp`` that calls ``before_commit(ctx)`` once per transaction, inside it, after the
    last record of the batch and before the offsets are sent and the transaction commits."""

    before_commit: Callable[[Context], None] | None = None

    def _process_batch(self, msgs: list[Message], consumer: Consumer, producer: Producer, ctx: Context) -> None:
        hook = self.before_commit
        if hook is not None:
            producer = _HookedProducer(producer, lambda: hook(ctx))  # type: ignore[assignment]
        super()._process_batch(msgs, consumer, producer, ctx)


def build_app(platform: PlatformSettings, settings: PivotSettings, store: PivotSink,
              service: str = SERVICE) -> tuple[PreCommitStreamApp, PivotProcessor]:
    """The pivots service's stream app: consumes ``candles`` in group ``<prefix>pivots``, stateful."""
    processor = PivotProcessor(settings.strengths, store, flush_each_record=False)
    app = PreCommitStreamApp(service, platform, [CANDLES], group=group_id(platform.topic_prefix),
                             processor=processor, stateful=True, batch_size=settings.batch_size,
                             before_commit=processor.flush)
    return app, processor
