"""The Kafka side of ingest: publish candles (and quarantined rows) with delivery confirmed, and
read back, on start-up, what the topic already holds.

Ingest is the only producer of ``candles`` and publishes each series in open_time order with an
idempotent producer, waiting for every delivery report of a batch before it commits the next batch
to the store. So per series the topic is a prefix of the store, and the last message of a series'
partition says how far that prefix goes. A series' partition is computed with Kafka's murmur2
(the partitioner of ``producer_config``), so start-up reads a few messages at the end of the
partitions that matter instead of the whole topic.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from reftrain import observability as obs
from reftrain.errors import DecodeError, InvalidRecordError
from reftrain.records import Candle, candle_series
from reftrain.schemas import CONTENT_TYPE_HEADER
from reftrain.serde import AvroSerde
from reftrain.settings import PlatformSettings
from reftrain.streams import Deliveries, consumer_config, message_headers, produce, producer_config, read_span
from services.ingest.spec import SERVICE

log = logging.getLogger(__name__)

#: librdkafka's default ``message.timeout.ms`` (300 s) plus a margin: by then every queued message
#: has been delivered or has failed.
DRAIN_TIMEOUT_S = 330.0
QUARANTINE_ID_HEADER = "quarantine.id"
JSON_CONTENT_TYPE = "application/json"


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (``org.apache.kafka.common.utils.Utils.murmur2``) as an unsigned int."""
    m = 0x5BD1E995
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    rest = length % 4
    tail = length - rest
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_of(key: str, partitions: int) -> int:
    """The partition the murmur2 partitioner (librdkafka ``murmur2_random``, Java's default) picks."""
    return (murmur2(key.encode("utf-8")) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class DeadRow:
    """A quarantined row or candle: ``qid`` names it stably across restarts (file#row)."""

    qid: str
    source: str
    row: int | None
    series: str | None
    reason: str
    detail: str
    raw: Any

    def payload(self) -> dict[str, Any]:
        return {"id": self.qid, "service": SERVICE, "source": self.source, "row": self.row,
                "series": self.series, "reason": self.reason, "detail": self.detail, "raw": self.raw}

    @classmethod
    def from_payload(cls, p: dict[str, Any]) -> DeadRow:
        return cls(str(p["id"]), str(p.get("source", "")), p.get("row"), p.get("series"),
                   str(p.get("reason", "")), str(p.get("detail", "")), p.get("raw"))


class KafkaPublisher:
    """Produces candles (Avro, key = series, content-type header) and dead rows (JSON + error
    headers) and returns only when the broker acknowledged all of them: a failed delivery raises.
    Producer set-up and delivery accounting are the runtime's (reftrain.streams)."""

    def __init__(self, platform: PlatformSettings, serde: AvroSerde, dlq_topic: str) -> None:
        self.serde = serde
        self.topic = serde.topic
        self.dlq_topic = dlq_topic
        self.deliveries = Deliveries()
        self._config = producer_config(platform, **{"client.id": f"{platform.topic_prefix}ingest",
                                                    "on_delivery": self.deliveries.on_delivery})
        self.producer = Producer(self._config)
        self._content_type = [(CONTENT_TYPE_HEADER, serde.content_type.encode())]

    def publish(self, candles: Sequence[Candle], dead: Sequence[DeadRow] = (), timeout: float = 60.0) -> None:
        for c in candles:
            produce(self.producer, self.topic, candle_series(c).encode(), self.serde.encode(dict(c)),
                    self._content_type)
        for d in dead:
            produce(self.producer, self.dlq_topic, d.series.encode() if d.series else None,
                    json.dumps(d.payload(), default=str).encode(), dead_headers(d))
        self.deliveries.confirm(self.producer, timeout)
        if candles:
            obs.MESSAGES_PRODUCED.labels(SERVICE, "candles").inc(len(candles))
        if dead:
            obs.DLQ_TOTAL.labels(SERVICE, "candles", "quarantined").inc(len(dead))

    def close(self) -> None:
        self.producer.flush(30)

    def reset(self, stop: threading.Event, beat: Callable[[], None], timeout_s: float = DRAIN_TIMEOUT_S) -> bool:
        """After a failed publish: wait until every queued message is delivered or has failed (the
        producer gives up after ``message.timeout.ms``), then start a fresh producer. Only then may
        a resume read the topic: a message still queued could land after that read and be published
        twice. False if ``stop`` or the timeout came first (the caller must not resume then).
        ``beat`` is called while waiting: a wait for the broker is not a stuck process."""
        deadline = time.monotonic() + timeout_s
        while len(self.producer) and not stop.is_set() and time.monotonic() < deadline:
            self.producer.flush(1.0)
            beat()
        if len(self.producer):
            return False
        self.deliveries.errors.clear()
        self.producer = Producer(self._config)
        return True


def dead_headers(d: DeadRow) -> list[tuple[str, bytes]]:
    """The error headers of reftrain.streams.error_headers, with the source file and row instead of
    topic/partition/offset (the row never was a Kafka message)."""
    return [
        (CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE.encode()),
        ("error.class", b"InvalidRecordError"),
        ("error.reason", d.reason.encode()),
        ("error.message", d.detail[:1000].encode("utf-8", "replace")),
        ("source.file", d.source.encode("utf-8", "replace")),
        ("source.row", str(d.row if d.row is not None else "").encode()),
        ("service", SERVICE.encode()),
        (QUARANTINE_ID_HEADER, d.qid.encode("utf-8", "replace")),
    ]


def _resume_consumer(platform: PlatformSettings) -> Consumer:
    """A consumer for reading ranges (assign, never commit); short fetch waits, because each range
    starts a new fetch and the broker would otherwise hold it for fetch.wait.max.ms (500 ms)."""
    return Consumer(consumer_config(platform, f"{platform.topic_prefix}ingest-resume",
                                    **{"fetch.wait.max.ms": 10}))


def last_published(platform: PlatformSettings, serde: AvroSerde, series: Iterable[str], *,
                   chunk: int = 2000, timeout: float = 120.0) -> dict[str, int]:
    """Max open_time on the topic of each of ``series`` (absent: never published).

    Reads each relevant partition backwards in chunks from its end (the last stable offset under
    read_committed) until every series of that partition was seen or the partition's start is
    reached; a series' last message carries its max open_time because ingest publishes in order.
    """
    topic = serde.topic
    consumer = _resume_consumer(platform)
    deadline = time.monotonic() + timeout
    found: dict[str, int] = {}
    try:
        md = consumer.list_topics(topic, timeout=30)
        if topic not in md.topics or md.topics[topic].error is not None:
            return found
        n = len(md.topics[topic].partitions)
        wanted: dict[int, set[str]] = {}
        for s in series:
            wanted.setdefault(partition_of(s, n), set()).add(s)
        marks = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30) for p in wanted}
        for p, keys in sorted(wanted.items()):
            lo, hi = marks[p]
            missing = set(keys)
            end = hi
            while missing and end > lo:
                start = max(lo, end - chunk)
                seen: set[str] = set()
                for m in read_span(consumer, topic, p, start, end, deadline):
                    raw_key = m.key()
                    key = raw_key.decode("utf-8", "replace") if raw_key is not None else ""
                    if key not in missing:
                        continue
                    try:
                        value = serde.decode(m.value())
                    except (DecodeError, InvalidRecordError) as exc:  # not ours to repair
                        log.warning("undecodable message on candles at resume", extra={
                            "partition": p, "offset": m.offset(), "error": str(exc)[:200]})
                        continue
                    found[key] = max(found.get(key, value["open_time"]), value["open_time"])
                    seen.add(key)
                missing -= seen
                end = start
    finally:
        consumer.close()
    return found


def published_dead_ids(platform: PlatformSettings, dlq_topic: str, timeout: float = 120.0) -> set[str]:
    """Quarantine ids already on the dead-letter topic (read whole: it holds only bad rows)."""
    consumer = _resume_consumer(platform)
    deadline = time.monotonic() + timeout
    ids: set[str] = set()
    try:
        md = consumer.list_topics(dlq_topic, timeout=30)
        if dlq_topic not in md.topics or md.topics[dlq_topic].error is not None:
            return ids
        for p in md.topics[dlq_topic].partitions:
            lo, hi = consumer.get_watermark_offsets(TopicPartition(dlq_topic, p), timeout=30)
            if hi <= lo:
                continue
            for m in read_span(consumer, dlq_topic, p, lo, hi, deadline):
                for k, v in message_headers(m):
                    if k == QUARANTINE_ID_HEADER and v:
                        ids.add(v.decode("utf-8", "replace"))
    finally:
        consumer.close()
    return ids
