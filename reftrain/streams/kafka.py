"""The Kafka building blocks of the runtime (reftrain/streams/runtime.py) and of every other client
in the project: client configurations, the serdes per topic, a consumed record, dead-lettering
with source coordinates, production with delivery accounting, the transactional calls under the
watchdog, consumer-lag export and a one-shot read of an offset range.

Why hand-written on confluent-kafka rather than quixstreams: see docs/architecture.md (one
mechanism for the coordinator's three-topic co-partitioned join, strict validating serde, DLQ with
source coordinates, and the trainer's checkpoint-offset protocol). How the pieces fit together:
docs/platform.md, "The runtime".
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from reftrain import observability as obs
from reftrain.errors import KafkaBoundaryError
from reftrain.failpoint import Failpoint
from reftrain.serde import AvroSerde, registry_client
from reftrain.settings import PlatformSettings, kafka_client_config
from reftrain.topics import RECORD_OF_TOPIC, TopicCatalogue
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
    #: The consumed message (for a dead letter written after processing, Context.dead_letter).
    message: Message | None = field(default=None, repr=False, compare=False)


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
    produce(producer, catalogue.dlq(logical), msg.key(), value, headers=headers + truncation)


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


def produce(producer: Producer, topic: str, key: bytes | None, value: bytes | None,
            headers: list[tuple[str, bytes]] | None = None, partition: int | None = None) -> None:
    """``producer.produce`` that waits (serving delivery reports) while the local queue is full."""
    kwargs: dict[str, Any] = {"key": key, "value": value, "headers": headers or []}
    if partition is not None:
        kwargs["partition"] = partition
    while True:
        try:
            producer.produce(topic, **kwargs)
            return
        except BufferError:
            producer.poll(0.1)


class Deliveries:
    """Delivery accounting of a non-transactional producer: pass :meth:`on_delivery` as the
    producer's ``on_delivery``; :meth:`confirm` flushes and raises if anything failed or stayed
    unconfirmed, so a lost message is an error, never silent (ingest's publisher, the trainer's
    dead letters and ModelVersions)."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.errors.append(f"{msg.topic()}[{msg.partition()}] key={msg.key()!r}: {err}")

    def confirm(self, producer: Producer, timeout_s: float) -> None:
        remaining = producer.flush(timeout_s)
        if self.errors or remaining:
            errors, self.errors = self.errors, []
            raise KafkaBoundaryError(f"{len(errors)} deliveries failed, {remaining} unconfirmed after "
                                     f"{timeout_s}s; first: {errors[:3]}")


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


class RestartSession(Exception):
    """Abort the transaction, drop in-memory state, start over from the committed state."""


def is_record(msg: Message) -> bool:
    """False for a consumer event (logged and skipped); a fatal one ends the session."""
    err = msg.error()
    if err is None:
        return True
    if err.fatal():
        raise RestartSession(f"fatal consumer error: {err}")
    log.warning("consumer error", extra={"error": str(err)})
    return False


def raise_on_kafka_error(err: KafkaError | None, msg: Message | None = None) -> None:
    """Delivery callback for plain producers: a failed delivery is an error, never silent loss."""
    if err is not None:
        raise KafkaBoundaryError(f"delivery to {msg.topic() if msg else '?'} failed: {err}")


def export_lag(consumer: Consumer, catalogue: TopicCatalogue, service: str) -> None:
    """``reftrain_consumer_lag`` per assigned partition: cached high watermark minus position."""
    try:
        for tp in consumer.position(consumer.assignment()):
            _, hi = consumer.get_watermark_offsets(tp, cached=True)
            if tp.offset >= 0 and hi >= 0:
                obs.CONSUMER_LAG.labels(service, catalogue.logical_of(tp.topic),
                                        str(tp.partition)).set(max(0, hi - tp.offset))
    except KafkaException:
        pass


def read_span(consumer: Consumer, topic: str, partition: int, start: int, end: int,
              deadline: float) -> Iterator[Message]:
    """One-shot read of offsets [start, end) of one partition with an assigned (never committing)
    consumer; under read_committed the loop ends on the position, so aborted transactions and
    markers in the range are stepped over. Raises KafkaBoundaryError on an error or a stall past
    ``deadline`` (monotonic). For start-up reads (ingest's resume), not a processing loop."""
    tp = TopicPartition(topic, partition)
    consumer.assign([TopicPartition(topic, partition, start)])
    while True:
        for m in consumer.consume(1000, 0.1):  # short: the loop ends on position, not on a timeout
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise KafkaBoundaryError(f"reading {topic}[{partition}]: {err}")
            if (m.offset() or 0) < end:  # a consumed message always has its offset
                yield m
        pos = consumer.position([tp])[0].offset
        if pos >= end:
            return
        if time.monotonic() > deadline:
            raise KafkaBoundaryError(f"reading {topic}[{partition}] stalled at {pos} < {end}")
