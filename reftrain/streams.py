"""Consume-process-produce with exactly-once semantics, dead-lettering and changelog state.

Why hand-written on confluent-kafka rather than quixstreams: see docs/architecture.md (one
mechanism for the coordinator's three-topic co-partitioned join, strict validating serde, DLQ with
source coordinates, and the trainer's checkpoint-offset protocol).

The loop (Kafka's EOS v2, KIP-447):
  consume a batch -> begin transaction -> decode + validate each message (bad ones go to
  ``<topic>.dlq`` with error headers, in the same transaction) -> processor emits outputs and
  state changes (state changes go to a compacted changelog, same partition as the input) ->
  send the consumed offsets to the transaction -> commit.
Anything that aborts a transaction (fencing, broker loss, registry outage) ends the *session*:
producer and consumer are closed, in-memory state is dropped, and a new session restores the
state from the changelog and resumes from the committed offsets. So in-memory state never
diverges from what was committed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from reftrain import observability as obs
from reftrain.errors import DecodeError, InvalidRecordError, KafkaAuthError, KafkaBoundaryError
from reftrain.failpoint import Failpoint
from reftrain.schemas import CONTENT_TYPE_HEADER
from reftrain.serde import AvroSerde, RegistryUnavailableError, registry_client
from reftrain.service import restart_on
from reftrain.settings import PlatformSettings, kafka_client_config
from reftrain.topics import RECORD_OF_TOPIC, TopicCatalogue, TopicSpec
from reftrain.watchdog import Watchdog

log = logging.getLogger(__name__)

#: The producers' ``message.max.bytes``: below the broker's default (1,048,588) so our own outputs
#: are refused by the client with a clear error rather than by the broker.
MAX_MESSAGE_BYTES = 1_000_000
#: Room kept free for the record framing librdkafka counts against ``message.max.bytes``.
_FRAMING_BYTES = 16 * 1024


def producer_config(platform: PlatformSettings, **extra: Any) -> dict[str, Any]:
    """murmur2 partitioning, as Java clients and Kafka Streams do, so every producer (ours, kcat
    with -X partitioner=murmur2_random, Kafka Connect) puts a series on the same partition number."""
    conf: dict[str, Any] = {
        **kafka_client_config(platform),  # bootstrap servers + TLS/SASL passthrough (docs/security.md)
        "partitioner": "murmur2_random",
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.max.bytes": MAX_MESSAGE_BYTES,
    }
    conf.update(extra)
    return conf


def consumer_config(platform: PlatformSettings, group: str, **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        **kafka_client_config(platform),  # bootstrap servers + TLS/SASL passthrough (docs/security.md)
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",  # new consumer groups start from the earliest offset
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "range",  # co-partitioned topics -> same partition numbers
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 2_000,
        "max.poll.interval.ms": 300_000,
        "enable.partition.eof": False,
    }
    conf.update(extra)
    return conf


def default_instance_id(platform: PlatformSettings) -> str:
    return platform.instance_id or f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class Record:
    """A consumed, decoded and validated message."""

    topic: str  # logical name
    key: str | None
    value: dict[str, Any]
    partition: int
    offset: int
    timestamp: int


class Serdes:
    """One AvroSerde per physical topic, sharing one registry client."""

    def __init__(self, platform: PlatformSettings, catalogue: TopicCatalogue) -> None:
        self.client = registry_client(platform)
        self.catalogue = catalogue
        self._by_topic: dict[str, AvroSerde] = {}

    def for_topic(self, logical: str) -> AvroSerde:
        serde = self._by_topic.get(logical)
        if serde is None:
            serde = AvroSerde(self.client, self.catalogue.name(logical), RECORD_OF_TOPIC[logical])
            self._by_topic[logical] = serde
        return serde


def message_headers(msg: Message) -> list[tuple[str, bytes]]:
    """A consumed message's headers as (name, bytes) pairs; librdkafka gives None for a header
    without a value, kept as b"" so a DLQ copy carries every header."""
    raw = cast("list[tuple[str, bytes | None]]", msg.headers() or [])  # consumed headers: (name, bytes or None)
    return [(k, v or b"") for k, v in raw]


def coordinates(msg: Message) -> tuple[int, int]:
    """(partition, offset) of a consumed message: librdkafka's types allow None, which a consumed
    message never has; a consumer event (error) must not get here."""
    partition, offset = msg.partition(), msg.offset()
    if partition is None or offset is None:
        raise KafkaBoundaryError(f"consumed message without partition/offset: {msg.error()}")
    return partition, offset


def error_headers(msg: Message, error: Exception, service: str) -> list[tuple[str, bytes]]:
    reason = getattr(error, "reason", type(error).__name__)
    return [
        ("error.class", type(error).__name__.encode()),
        ("error.reason", str(reason).encode()),
        ("error.message", str(error)[:1000].encode("utf-8", "replace")),
        ("source.topic", (msg.topic() or "").encode()),
        ("source.partition", str(msg.partition()).encode()),
        ("source.offset", str(msg.offset()).encode()),
        ("source.timestamp", str(msg.timestamp()[1]).encode()),
        ("service", service.encode()),
    ]


def dead_letter(producer: Producer, catalogue: TopicCatalogue, service: str, msg: Message,
                error: Exception) -> None:
    """Original key and bytes to ``<topic>.dlq`` with error headers, a counter and a log line
    naming topic/partition/offset. Never raises for the message's content: a value too big to copy
    within the producer's limit (it can still be under the broker's) is truncated, see
    :func:`dlq_value`, so a huge message cannot block its partition."""
    topic = msg.topic() or ""
    logical = catalogue.logical_of(topic)
    reason = str(getattr(error, "reason", type(error).__name__))
    obs.DLQ_TOTAL.labels(service, logical, reason).inc()
    headers = message_headers(msg) + error_headers(msg, error, service)
    value, truncation = dlq_value(msg.key(), msg.value(), headers)
    log.warning("dead-lettered message", extra={
        "topic": topic, "partition": msg.partition(), "offset": msg.offset(),
        "error_class": type(error).__name__, "reason": reason, "error": str(error)[:300],
        **({"original_size": len(msg.value() or b"")} if truncation else {})})
    _produce(producer, catalogue.dlq(logical), msg.key(), value, headers=headers + truncation)


def dlq_value(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]],
              limit: int = MAX_MESSAGE_BYTES) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    """The value to copy to a DLQ and the headers saying what was cut: the original bytes when key,
    value and headers fit in ``limit``; otherwise the value's first bytes that do, plus
    ``dlq.truncated=true``, ``dlq.original-size`` and ``dlq.original-sha256`` (so the original can be
    identified on the source topic, whose offset is in ``source.offset``)."""
    if value is None:
        return None, []
    header_bytes = sum(len(k) + len(v or b"") for k, v in headers)
    room = limit - _FRAMING_BYTES - len(key or b"") - header_bytes - 256  # 256: the truncation headers
    if len(value) <= room:
        return value, []
    return value[:max(room, 0)], [
        ("dlq.truncated", b"true"),
        ("dlq.original-size", str(len(value)).encode()),
        ("dlq.original-sha256", hashlib.sha256(value).hexdigest().encode()),
    ]


def _produce(producer: Producer, topic: str, key: bytes | None, value: bytes | None,
             headers: list[tuple[str, bytes]] | None = None, partition: int | None = None) -> None:
    kwargs: dict[str, Any] = {"key": key, "value": value, "headers": headers or []}
    if partition is not None:
        kwargs["partition"] = partition
    while True:
        try:
            producer.produce(topic, **kwargs)
            return
        except BufferError:
            producer.poll(0.1)


# -- transactional calls, each under the watchdog (librdkafka may block past their timeouts) ------
def init_transactions(producer: Producer, watchdog: Watchdog, timeout_s: float = 60) -> None:
    with watchdog.guard("init_transactions", timeout_s):
        producer.init_transactions(timeout_s)


#: Where ``FAILPOINT`` can SIGKILL a stream service inside a transaction (reftrain.failpoint):
#: ``before_commit`` = outputs, state and offsets sent, commit not yet requested;
#: ``after_commit`` = commit acknowledged, nothing after it done yet.
FAILPOINT_STAGES = ("before_commit", "after_commit")
NO_FAILPOINT = Failpoint("", FAILPOINT_STAGES)


def commit_transaction(producer: Producer, offsets: list[TopicPartition], consumer: Consumer,
                       watchdog: Watchdog, failpoint: Failpoint = NO_FAILPOINT) -> None:
    """The consumed positions into the transaction, then commit: outputs, state and input offsets
    become visible together or not at all."""
    with watchdog.guard("send_offsets_to_transaction + commit_transaction", 30 + 60):
        producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 30)
        if failpoint.armed:
            producer.flush(30)  # outputs on the broker first: the kill leaves them in an open transaction
            failpoint.reached("before_commit")
        producer.commit_transaction(60)
    failpoint.reached("after_commit")


def abort_transaction(producer: Producer, watchdog: Watchdog) -> None:
    """Best effort: a fenced or failed producer may refuse; the next session fences it anyway."""
    with watchdog.guard("abort_transaction", 30), contextlib.suppress(KafkaException):
        producer.abort_transaction(30)


def is_record(msg: Message) -> bool:
    """False for a consumer event (logged and skipped); a fatal one ends the session."""
    err = msg.error()
    if err is None:
        return True
    if err.fatal():
        raise RestartSession(f"fatal consumer error: {err}")
    log.warning("consumer error", extra={"error": str(err)})
    return False


class Context:
    """What a processor may do while handling one record: emit outputs, change state."""

    def __init__(self, app: StreamApp, producer: Producer) -> None:
        self._app = app
        self._producer = producer
        self.partition = -1
        self.now_ms = 0

    def emit(self, logical_topic: str, key: str | None, value: dict[str, Any],
             headers: Sequence[tuple[str, bytes]] = ()) -> None:
        serde = self._app.serdes.for_topic(logical_topic)
        data = serde.encode(value)
        hdrs = [(CONTENT_TYPE_HEADER, serde.content_type.encode()), *headers]
        _produce(self._producer, serde.topic, key.encode() if key is not None else None, data, hdrs)
        obs.MESSAGES_PRODUCED.labels(self._app.service, logical_topic).inc()

    def put_state(self, key: str, value: dict[str, Any] | None) -> None:
        """Record a state change in the changelog (None deletes), on the input's partition."""
        if self._app.changelog is None:
            raise RuntimeError("put_state on a stateless StreamApp")
        data = None if value is None else json.dumps(value, separators=(",", ":")).encode()
        _produce(self._producer, self._app.changelog, key.encode(), data, partition=self.partition)


class Processor(Protocol):
    def assigned(self, partition: int, state: dict[str, Any]) -> None:
        """Partition ``partition`` is now ours; ``state`` is its restored changelog (key -> value)."""

    def revoked(self, partition: int) -> None:
        """Partition is no longer ours: drop its in-memory state."""

    def process(self, record: Record, ctx: Context) -> None:
        """Handle one valid record; emit outputs and state changes through ``ctx``.

        A processor may also define ``end_batch(ctx)``: called once per consumed batch, inside the
        transaction, after every record was processed (for batched work such as inference)."""


class RestartSession(Exception):
    """Abort the transaction, drop in-memory state, start over from the committed state."""


@dataclass
class StreamApp:
    service: str
    platform: PlatformSettings
    inputs: Sequence[str]  # logical topics
    group: str
    processor: Processor
    stateful: bool = False
    instance_id: str = ""  # empty: default_instance_id(platform)
    batch_size: int = 500
    poll_timeout_s: float = 0.2
    on_batch_committed: Callable[[], None] | None = None
    #: Called with the assigned partition set after each rebalance (for pausing / metrics).
    on_rebalanced: Callable[[set[int]], None] | None = None
    transaction_timeout_ms: int = 15_000

    def __post_init__(self) -> None:
        self.instance_id = self.instance_id or default_instance_id(self.platform)
        self.catalogue = TopicCatalogue(self.platform)
        self.serdes = Serdes(self.platform, self.catalogue)
        self.changelog = self.catalogue.changelog(self.group) if self.stateful else None
        self.assigned: set[int] = set()
        self._consumer: Consumer | None = None
        self._ready_after_assign = False
        self._consumed: dict[str, Any] = {}  # logical topic -> its consumed-messages counter
        self.watchdog = Watchdog()
        self.failpoint = Failpoint(self.platform.failpoint, FAILPOINT_STAGES)

    # -- setup ---------------------------------------------------------------------------------
    def ensure_topics(self) -> None:
        extra: list[TopicSpec] = [self.catalogue.changelog_spec(self.group)] if self.stateful else []
        self.catalogue.ensure(AdminClient(kafka_client_config(self.platform)), extra)

    def _restore(self, partition: int) -> dict[str, Any]:
        assert self.changelog is not None
        restorer = Consumer(consumer_config(self.platform, f"{self.group}-restore", **{
            "enable.auto.offset.store": False}))
        try:
            tp = TopicPartition(self.changelog, partition)
            lo, hi = restorer.get_watermark_offsets(tp, timeout=10)
            state: dict[str, Any] = {}
            if hi <= lo:
                return state
            restorer.assign([TopicPartition(self.changelog, partition, lo)])
            while True:
                pos = restorer.position([tp])[0].offset
                if pos >= hi:
                    break
                for m in restorer.consume(1000, 0.5):
                    if m.error():
                        continue
                    key = (m.key() or b"").decode()
                    data = m.value()
                    if data is None:
                        state.pop(key, None)
                    else:
                        state[key] = json.loads(data)
            return state
        finally:
            restorer.close()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = {tp.partition for tp in partitions}
        if self.stateful and partitions:
            # An offset fetch under read_committed waits for the previous owner's pending
            # transaction (KIP-447), so the changelog read below matches the committed offsets.
            consumer.committed(partitions, timeout=60)
        for p in sorted(numbers - self.assigned):
            state = self._restore(p) if self.stateful else {}
            obs.RESTORED_STATE_KEYS.labels(self.service).inc(len(state))
            self.processor.assigned(p, state)
            self.assigned.add(p)
        log.info("partitions assigned", extra={"partitions": sorted(numbers), "group": self.group})
        self._ready_after_assign = True
        if self.on_rebalanced:
            self.on_rebalanced(set(self.assigned))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = {tp.partition for tp in partitions}
        for p in sorted(numbers & self.assigned):
            self.processor.revoked(p)
            self.assigned.discard(p)
        log.info("partitions revoked", extra={"partitions": sorted(numbers), "group": self.group})

    # -- main loop -----------------------------------------------------------------------------
    def run(self, stop: threading.Event, health: obs.Health) -> None:
        # refused credentials: stay up (not ready) and retry, no crash loop (reftrain.kafka_errors)
        restart_on((KafkaAuthError,), self.ensure_topics, service=self.service, stop=stop, health=health)
        restart_on((RestartSession,), lambda: self._session(stop, health), service=self.service, stop=stop,
                   health=health)

    def _session(self, stop: threading.Event, health: obs.Health) -> None:
        producer = Producer(producer_config(
            self.platform, **{"transactional.id": f"{self.group}-{self.instance_id}",
                              "transaction.timeout.ms": self.transaction_timeout_ms}))
        consumer = Consumer(consumer_config(self.platform, self.group))
        self._consumer = consumer
        ctx = Context(self, producer)
        try:
            init_transactions(producer, self.watchdog)
            consumer.subscribe([self.catalogue.name(t) for t in self.inputs], on_assign=self._on_assign,
                               on_revoke=self._on_revoke, on_lost=self._on_revoke)
            last_lag = 0.0
            while not stop.is_set():
                msgs = consumer.consume(self.batch_size, self._poll_timeout())
                health.beat()
                if self._ready_after_assign and not health.ready:
                    health.set_ready(True)
                self._step(msgs, consumer, producer, ctx)
                if time.monotonic() - last_lag > 5:
                    self._export_lag(consumer)
                    last_lag = time.monotonic()
        except KafkaException as exc:
            raise RestartSession(f"kafka error: {exc}") from exc
        finally:
            for p in sorted(self.assigned):
                self.processor.revoked(p)
            self.assigned.clear()
            self._ready_after_assign = False
            self._session_ended()
            # close() leaves the group: partitions move at once, not after the session timeout.
            # After a fatal error it may fail again; the session is over either way.
            with contextlib.suppress(Exception):
                consumer.close()
            with contextlib.suppress(KafkaException):  # a fenced producer refuses to flush
                producer.flush(5)

    # -- what a subclass may change about a session (services/coordinator/aligned.py does) -----
    def _poll_timeout(self) -> float:
        return self.poll_timeout_s

    def _step(self, msgs: list[Message], consumer: Consumer, producer: Producer, ctx: Context) -> None:
        """Handle one poll's messages: here, all of them in one transaction."""
        if msgs:
            self._process_batch(msgs, consumer, producer, ctx)

    def _session_ended(self) -> None:
        """The session's partitions were revoked; drop what the subclass keeps beyond processor state."""

    def _process_batch(self, msgs: list[Message], consumer: Consumer, producer: Producer, ctx: Context) -> None:
        started = time.monotonic()
        producer.begin_transaction()
        try:
            for msg in msgs:
                if is_record(msg):
                    self._handle(msg, ctx, producer)
            end_batch = getattr(self.processor, "end_batch", None)
            if end_batch is not None:  # e.g. inference predicts every series of the batch at once
                try:
                    end_batch(ctx)
                except (RestartSession, RegistryUnavailableError, KafkaException):
                    raise
                except Exception as exc:  # batch-level work failed: retry from committed state
                    log.exception("end_batch failed; restarting the session")
                    raise RestartSession(f"end_batch failed: {type(exc).__name__}: {exc}") from exc
            positions = [tp for tp in consumer.position(consumer.assignment()) if tp.offset != OFFSET_INVALID]
            commit_transaction(producer, positions, consumer, self.watchdog, self.failpoint)
            obs.TRANSACTIONS.labels(self.service, "committed").inc()
        except (RestartSession, RegistryUnavailableError, KafkaException) as exc:
            obs.TRANSACTIONS.labels(self.service, "aborted").inc()
            abort_transaction(producer, self.watchdog)
            raise RestartSession(f"{type(exc).__name__}: {exc}") from exc
        obs.BATCH_SECONDS.labels(self.service).observe(time.monotonic() - started)
        if self.on_batch_committed:
            self.on_batch_committed()

    def _handle(self, msg: Message, ctx: Context, producer: Producer) -> None:
        record = self._decode(msg, producer)
        if record is not None:
            self._process(msg, record, ctx, producer)

    def _decode(self, msg: Message, producer: Producer,
                before_dead_letter: Callable[[], None] | None = None) -> Record | None:
        """The message as a Record, or None once it is dead-lettered (a key that is not UTF-8, a
        value that is not a valid record of its topic). ``before_dead_letter`` runs first (e.g. to
        open the transaction the DLQ copy goes into)."""
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
                return Record(logical, key, value, *coordinates(msg), msg.timestamp()[1])
            except (DecodeError, InvalidRecordError) as exc:
                error = exc
        if before_dead_letter is not None:
            before_dead_letter()
        dead_letter(producer, self.catalogue, self.service, msg, error)
        return None

    def _process(self, msg: Message, record: Record, ctx: Context, producer: Producer) -> None:
        """Hand a decoded record to the processor; what it refuses (InvalidRecordError) or fails on
        is dead-lettered, outages propagate (they end the session)."""
        ctx.partition = record.partition
        ctx.now_ms = int(time.time() * 1000)
        try:
            self.processor.process(record, ctx)
        except (RestartSession, RegistryUnavailableError, KafkaException):
            raise
        except InvalidRecordError as exc:
            dead_letter(producer, self.catalogue, self.service, msg, exc)
        except Exception as exc:  # a poison message must not crash-loop the service
            log.exception("processing failed; dead-lettering", extra={
                "topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()})
            dead_letter(producer, self.catalogue, self.service, msg, exc)

    def _export_lag(self, consumer: Consumer) -> None:
        try:
            for tp in consumer.position(consumer.assignment()):
                _, hi = consumer.get_watermark_offsets(tp, cached=True)
                if tp.offset >= 0 and hi >= 0:
                    obs.CONSUMER_LAG.labels(self.service, self.catalogue.logical_of(tp.topic),
                                            str(tp.partition)).set(max(0, hi - tp.offset))
        except KafkaException:
            pass


def raise_on_kafka_error(err: KafkaError | None, msg: Message | None = None) -> None:
    """Delivery callback for plain producers: a failed delivery is an error, never silent loss."""
    if err is not None:
        raise KafkaBoundaryError(f"delivery to {msg.topic() if msg else '?'} failed: {err}")
