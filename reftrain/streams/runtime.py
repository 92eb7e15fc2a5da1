"""The one Kafka consume-process loop of the project: ``StreamApp`` = a processor + a release policy
+ a commit policy (docs/platform.md, "The runtime", has the diagram).

One session::

    poll --> release policy --> decode + validate --> processor.process --> end_batch --> commit policy
             (arrival order,     (bad: dead letter      (emit, put_state,                (Kafka transaction
              event-time          in the same unit       dead_letter via ctx)              with the offsets, or
              aligned)            of work, counted)                                       checkpoint + fence)

Decode, validation, dead-lettering, lag export, session restart, the watchdog and metrics are here
(and in reftrain/streams/kafka.py), once. Anything that aborts a unit of work (fencing, broker
loss, registry outage, a failing batch hook) ends the *session*: producer and consumer are closed,
in-memory state is dropped, and a new session restores the committed state and resumes from the
committed offsets. So in-memory state never diverges from what was committed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from reftrain import observability as obs
from reftrain.errors import DecodeError, InvalidRecordError, KafkaAuthError
from reftrain.schemas import CONTENT_TYPE_HEADER
from reftrain.serde import RegistryUnavailableError
from reftrain.service import restart_on
from reftrain.settings import PlatformSettings, kafka_client_config
from reftrain.streams.commit import CommitPolicy, KafkaTransaction
from reftrain.streams.kafka import (
    Deliveries,
    Record,
    RestartSession,
    Serdes,
    consumer_config,
    coordinates,
    dead_letter,
    default_instance_id,
    export_lag,
    is_record,
    produce,
    producer_config,
)
from reftrain.streams.release import ArrivalOrder, ReleasePolicy
from reftrain.topics import TopicCatalogue, TopicSpec
from reftrain.watchdog import Watchdog

log = logging.getLogger(__name__)

#: Seconds between two exports of the consumer lag.
LAG_EXPORT_S = 5.0
#: How the assignment log names a start position that is not an offset.
START_LABELS: dict[int, str] = {OFFSET_INVALID: "committed", OFFSET_BEGINNING: "earliest"}


class Context:
    """What a processor may do while handling records: emit outputs, change state, dead-letter a
    record it refuses after the fact. Within a Kafka transaction all of it commits with the offsets."""

    def __init__(self, app: StreamApp, producer: Producer, deliveries: Deliveries) -> None:
        self._app = app
        self._producer = producer
        self._deliveries = deliveries
        self.partition = -1
        self.now_ms = 0

    def emit(self, logical_topic: str, key: str | None, value: dict[str, Any],
             headers: Sequence[tuple[str, bytes]] = ()) -> None:
        serde = self._app.serdes.for_topic(logical_topic)
        data = serde.encode(value)
        hdrs = [(CONTENT_TYPE_HEADER, serde.content_type.encode()), *headers]
        produce(self._producer, serde.topic, key.encode() if key is not None else None, data, hdrs)
        obs.MESSAGES_PRODUCED.labels(self._app.service, logical_topic).inc()

    def put_state(self, key: str, value: dict[str, Any] | None) -> None:
        """Record a state change in the changelog (None deletes), on the input's partition."""
        if self._app.changelog is None:
            raise RuntimeError("put_state on a stateless StreamApp")
        data = None if value is None else json.dumps(value, separators=(",", ":")).encode()
        produce(self._producer, self._app.changelog, key.encode(), data, partition=self.partition)

    def dead_letter(self, record: Record, error: Exception) -> None:
        """Dead-letter a record after processing it (e.g. a batch hook found it invalid)."""
        if record.message is None:
            raise RuntimeError("dead_letter needs a record consumed by this app")
        dead_letter(self._producer, self._app.catalogue, self._app.service, record.message, error)

    def confirm(self, timeout_s: float = 30.0) -> None:
        """Outside a Kafka transaction: wait until everything emitted is acknowledged; raises
        KafkaBoundaryError if something failed or stayed unconfirmed."""
        self._deliveries.confirm(self._producer, timeout_s)


class Processor(Protocol):
    def assigned(self, partition: int, state: dict[str, Any]) -> None:
        """Partition ``partition`` is now ours; ``state`` is its restored committed state (key -> value)."""

    def revoked(self, partition: int) -> None:
        """Partition is no longer ours: drop its in-memory state."""

    def process(self, record: Record, ctx: Context) -> None:
        """Handle one valid record; emit outputs and state changes through ``ctx``. Raise
        InvalidRecordError (or anything but an outage) to dead-letter it; RestartSession to abort.

        Optional methods, called when a processor defines them:

        * ``end_batch(ctx)``: once per unit of work, after its last record, before its commit (for
          batched work such as inference or the pivots' store write); a failure aborts the unit.
        * ``dead_lettered(partition, offset, error)``: the runtime dead-lettered a message (decode,
          validation or ``process`` failure), e.g. to count it in the processor's progress."""


@dataclass
class Session:
    """One incarnation of the app's Kafka clients; dropped whole on any failure."""

    producer: Producer
    consumer: Consumer
    ctx: Context
    deliveries: Deliveries


@dataclass
class StreamApp:
    """Consume ``inputs`` in consumer group ``group``, hand records to ``processor`` in the order the
    ``release`` policy says, make the work durable as the ``commit`` policy says."""

    service: str
    platform: PlatformSettings
    inputs: Sequence[str]  # logical topics
    group: str
    processor: Processor
    stateful: bool = False  # a changelog topic ``<prefix><group>-<store>-changelog`` holds the state
    instance_id: str = ""  # empty: default_instance_id(platform)
    batch_size: int = 500  # messages per poll, and per unit of work
    poll_timeout_s: float = 0.2
    release: ReleasePolicy = field(default_factory=ArrivalOrder)
    commit: CommitPolicy = field(default_factory=KafkaTransaction)
    #: Changelog "store" name; put a state layout version in it so an incompatible layout starts on
    #: a fresh topic.
    store: str = "state"
    #: Errors besides Kafka's and the registry's that end a session instead of the service (e.g. the
    #: trainer's store and checkpoint errors).
    outages: tuple[type[Exception], ...] = ()
    on_batch_committed: Callable[[], None] | None = None
    on_batch_aborted: Callable[[], None] | None = None
    #: Called with the assigned partition set after each rebalance (for pausing / metrics).
    on_rebalanced: Callable[[set[int]], None] | None = None

    def __post_init__(self) -> None:
        self.instance_id = self.instance_id or default_instance_id(self.platform)
        self.catalogue = TopicCatalogue(self.platform)
        self.serdes = Serdes(self.platform, self.catalogue)
        self.changelog = self.catalogue.changelog(self.group, self.store) if self.stateful else None
        self.assigned: set[int] = set()
        self.watchdog = Watchdog()
        self._live: Session | None = None
        self._ready_after_assign = False
        self._consumed: dict[str, Any] = {}  # logical topic -> its consumed-messages counter
        self._session_errors: tuple[type[Exception], ...] = (
            RestartSession, RegistryUnavailableError, KafkaException, *self.outages)
        self.release.bind(self.inputs, self.catalogue, self.batch_size)
        self.commit.bind(self)

    # -- setup ---------------------------------------------------------------------------------
    def ensure_topics(self) -> None:
        extra: list[TopicSpec] = [self.catalogue.changelog_spec(self.group, self.store)] if self.stateful else []
        self.catalogue.ensure(AdminClient(kafka_client_config(self.platform)), extra)

    def run(self, stop: threading.Event, health: obs.Health) -> None:
        # refused credentials or a broker still starting: stay up (not ready) and retry, no crash
        # loop (reftrain.kafka_errors)
        restart_on((KafkaAuthError, KafkaException, *self.outages), self.ensure_topics, service=self.service,
                   stop=stop, health=health)
        restart_on((RestartSession, *self.outages), lambda: self._session(stop, health), service=self.service,
                   stop=stop, health=health)

    # -- one session -----------------------------------------------------------------------------
    def _session(self, stop: threading.Event, health: obs.Health) -> None:
        deliveries = Deliveries()
        producer_extra, consumer_extra = self.commit.client_config(deliveries)
        try:
            producer = Producer(producer_config(self.platform, **producer_extra))
            consumer = Consumer(consumer_config(self.platform, self.group, **consumer_extra))
        except KafkaException as exc:
            raise RestartSession(f"kafka error: {exc}") from exc
        session = self._live = Session(producer, consumer, Context(self, producer, deliveries), deliveries)
        graceful = False
        try:
            self.commit.start(session)
            consumer.subscribe([self.catalogue.name(t) for t in self.inputs], on_assign=self._on_assign,
                               on_revoke=self._on_revoke, on_lost=self._on_lost)
            last_lag = 0.0
            while not stop.is_set():
                msgs = consumer.consume(self.batch_size, self.release.poll_timeout(self.poll_timeout_s))
                health.beat()
                if self._ready_after_assign and not health.ready:
                    health.set_ready(True)
                if self.release.offer([m for m in msgs if is_record(m)]):
                    self._unit(session)
                self.commit.tick(session)
                if time.monotonic() - last_lag > LAG_EXPORT_S:
                    export_lag(consumer, self.catalogue, self.service)
                    last_lag = time.monotonic()
            self.commit.drain(session, sorted(self.assigned))
            graceful = True
        except KafkaException as exc:
            raise RestartSession(f"kafka error: {exc}") from exc
        finally:
            self.commit.close(session, graceful)
            for p in sorted(self.assigned):
                self.processor.revoked(p)
            self.assigned.clear()
            self.release.reset()
            self._ready_after_assign = False
            # close() leaves the group: partitions move at once, not after the session timeout.
            # After a fatal error it may fail again; the session is over either way.
            with contextlib.suppress(Exception):
                consumer.close()
            with contextlib.suppress(KafkaException):  # a fenced producer refuses to flush
                producer.flush(10)
            self._live = None

    def _unit(self, session: Session) -> None:
        """One unit of work: what the release policy lets go, processed and committed together."""
        started = time.monotonic()
        opened = False

        def begin() -> None:
            nonlocal opened
            if not opened:
                self.commit.begin(session)
                opened = True

        try:
            for msg, record in self.release.release(session.consumer, lambda m: self._decode(m, session, begin)):
                begin()
                self._process(msg, record, session)
            if opened:
                self._end_batch(session.ctx)
                self.commit.commit(session, self.release.committable(session.consumer))
        except self._session_errors as exc:
            if opened:
                self.commit.abort(session)
            if self.on_batch_aborted:
                self.on_batch_aborted()
            raise RestartSession(f"{type(exc).__name__}: {exc}") from exc
        if opened:
            obs.BATCH_SECONDS.labels(self.service).observe(time.monotonic() - started)
            if self.on_batch_committed:
                self.on_batch_committed()
        self.release.after_unit(session.consumer)

    # -- rebalance callbacks (librdkafka runs them inside consume()) ---------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        session = self._live
        if session is None:  # pragma: no cover - callbacks only run inside a session's poll
            return
        numbers = {tp.partition for tp in partitions}
        new = sorted(numbers - self.assigned)
        states = self.commit.restore(session, partitions, new)
        for p in new:
            state = states.get(p, {})
            obs.RESTORED_STATE_KEYS.labels(self.service).inc(len(state))
            self.processor.assigned(p, state)
            self.assigned.add(p)
        self.release.assigned(consumer, partitions)
        # partition -> where it starts: an offset (the commit policy chose it, e.g. a checkpoint's),
        # "committed" (the group's committed offset) or "earliest"
        starts = {str(tp.partition): START_LABELS.get(tp.offset, tp.offset) for tp in sorted(
            partitions, key=lambda tp: tp.partition)}
        log.info("partitions assigned", extra={"partitions": starts, "group": self.group})
        self._ready_after_assign = True
        if self.on_rebalanced:
            self.on_rebalanced(set(self.assigned))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition], lost: bool = False) -> None:
        mine = sorted({tp.partition for tp in partitions} & self.assigned)
        try:
            if self._live is not None:
                self.commit.revoke(self._live, mine, lost)
        finally:
            for p in mine:
                self.processor.revoked(p)
                self.assigned.discard(p)
            self.release.revoked(partitions)
        log.info("partitions lost" if lost else "partitions revoked",
                 extra={"partitions": sorted(tp.partition for tp in partitions), "group": self.group})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._on_revoke(consumer, partitions, lost=True)

    # -- per message -----------------------------------------------------------------------------
    def _decode(self, msg: Message, session: Session, before_dead_letter: Callable[[], None]) -> Record | None:
        """The message as a Record; None when committed progress already covers it (skipped) or
        once it is dead-lettered (a key that is not UTF-8, a value that is not a valid record of
        its topic). ``before_dead_letter`` opens the unit of work the DLQ copy goes into."""
        partition, offset = coordinates(msg)
        if not self.commit.accepts(partition, offset):
            return None
        logical = self.catalogue.logical_of(msg.topic() or "")
        counter = self._consumed.get(logical)
        if counter is None:
            counter = self._consumed[logical] = obs.MESSAGES_CONSUMED.labels(self.service, logical)
        counter.inc()
        error: Exception
        try:
            raw_key = msg.key()
            key = raw_key.decode("utf-8") if raw_key is not None else None
        except UnicodeDecodeError as exc:
            error = DecodeError(f"key is not UTF-8: {exc}")
        else:
            try:
                value = self.serdes.for_topic(logical).decode(msg.value())
                return Record(logical, key, value, partition, offset, msg.timestamp()[1], msg)
            except (DecodeError, InvalidRecordError) as exc:
                error = exc
        before_dead_letter()
        self._dead_letter(msg, error, session)
        return None

    def _process(self, msg: Message, record: Record, session: Session) -> None:
        """Hand a decoded record to the processor; what it refuses (InvalidRecordError) or fails on
        is dead-lettered, outages propagate (they end the session)."""
        ctx = session.ctx
        ctx.partition = record.partition
        ctx.now_ms = int(time.time() * 1000)
        try:
            self.processor.process(record, ctx)
        except self._session_errors:
            raise
        except InvalidRecordError as exc:
            self._dead_letter(msg, exc, session)
        except Exception as exc:  # a poison message must not crash-loop the service
            log.exception("processing failed; dead-lettering", extra={
                "topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()})
            self._dead_letter(msg, exc, session)

    def _dead_letter(self, msg: Message, error: Exception, session: Session) -> None:
        dead_letter(session.producer, self.catalogue, self.service, msg, error)
        hook: Callable[[int, int, Exception], None] | None = getattr(self.processor, "dead_lettered", None)
        if hook is not None:
            hook(*coordinates(msg), error)

    def _end_batch(self, ctx: Context) -> None:
        """The processor's optional batch hook; a failure other than an outage aborts the unit of
        work like a failing record would, and the session restarts from the committed state."""
        hook: Callable[[Context], None] | None = getattr(self.processor, "end_batch", None)
        if hook is None:
            return
        try:
            hook(ctx)
        except self._session_errors:
            raise
        except Exception as exc:
            log.exception("end_batch failed; aborting the unit of work")
            raise RestartSession(f"end_batch failed: {type(exc).__name__}: {exc}") from exc


__all__ = ["Context", "Processor", "Session", "StreamApp"]
