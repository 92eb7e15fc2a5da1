"""Read-only views of the topics: end offsets, consumer-group lag, and whole-topic reads.

Why an "effective" lag: a transactional producer writes a commit marker after the last record of
each transaction. The marker takes an offset, but a consumer group commits the position of its last
*record*, so a fully caught-up group of a transactional topic often shows ``end - committed == 1``
per partition forever. Raw lag is therefore only an upper bound; to decide "drained" we read what
lies between the committed offset and the end with a read_committed consumer and count real records
(none after the marker: the position steps over it).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from reftrain.errors import DecodeError, InvalidRecordError
from reftrain.settings import PlatformSettings
from reftrain.streams import Serdes
from reftrain.topics import TopicCatalogue

TP = tuple[str, int]


@dataclass
class Msg:
    """A consumed message with its coordinates; ``value`` is the decoded record (Avro topics) or None."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: str | None
    value: dict[str, Any] | None
    headers: dict[str, str] = field(default_factory=dict)
    raw_size: int = 0


@dataclass
class TopicRead:
    """All committed messages of one topic, plus what could not be decoded and whether the read
    reached the end (an open transaction at the tail keeps a read_committed reader short of it)."""

    topic: str
    messages: list[Msg]
    undecodable: int = 0
    complete: bool = True


class KafkaView:
    """Admin-side queries against one broker (one AdminClient and one helper consumer, reused)."""

    def __init__(self, platform: PlatformSettings, timeout: float = 10.0) -> None:
        self.platform = platform
        self.timeout = timeout
        self.catalogue = TopicCatalogue(platform)
        self.admin = AdminClient({"bootstrap.servers": platform.kafka_bootstrap_servers})

    def close(self) -> None:
        """Nothing to close on AdminClient; kept so callers can use one shape for every view."""

    # -- metadata and offsets -----------------------------------------------------------------
    def existing_topics(self) -> set[str]:
        return set(self.admin.list_topics(timeout=self.timeout).topics)

    def partitions(self, topics: Iterable[str]) -> dict[str, int]:
        md = self.admin.list_topics(timeout=self.timeout).topics
        return {t: len(md[t].partitions) for t in topics if t in md}

    def end_offsets(self, topics: Iterable[str]) -> dict[TP, int]:
        """High watermark of every partition of the existing topics among ``topics``."""
        counts = self.partitions(topics)
        request = {TopicPartition(t, p): OffsetSpec.latest() for t, n in counts.items() for p in range(n)}
        if not request:
            return {}
        out: dict[TP, int] = {}
        for tp, fut in self.admin.list_offsets(request, request_timeout=self.timeout).items():
            with contextlib.suppress(KafkaException):
                out[(tp.topic, tp.partition)] = int(fut.result().offset)
        return out

    def committed(self, group: str, topics: Iterable[str]) -> dict[TP, int]:
        """Committed offsets of ``group`` on ``topics`` (partitions with no commit are absent)."""
        wanted = set(topics)
        try:
            futs = self.admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                                          request_timeout=self.timeout)
            result = next(iter(futs.values())).result()
        except KafkaException:
            return {}
        return {(tp.topic, tp.partition): int(tp.offset) for tp in result.topic_partitions or []
                if tp.topic in wanted and tp.offset >= 0}

    def raw_lag(self, group: str, topics: Sequence[str], ends: dict[TP, int] | None = None) -> dict[TP, int]:
        """``end - committed`` per partition (no commit counts as committed 0); an upper bound."""
        ends = ends if ends is not None else self.end_offsets(topics)
        done = self.committed(group, topics)
        return {tp: max(0, hi - done.get(tp, 0)) for tp, hi in ends.items() if tp[0] in topics}

    def effective_lag(self, group: str, topics: Sequence[str], ends: dict[TP, int] | None = None,
                      timeout: float = 10.0) -> int:
        """Committed records the group has not consumed yet (markers and aborted records excluded).

        Returns -1 if the tail could not be read within ``timeout`` (e.g. an open transaction).
        """
        lag = {tp: n for tp, n in self.raw_lag(group, topics, ends).items() if n > 0}
        if not lag:
            return 0
        ends = ends if ends is not None else self.end_offsets(topics)
        done = self.committed(group, topics)
        consumer = Consumer(_reader_config(self.platform))
        try:
            start = [TopicPartition(t, p, done.get((t, p), 0)) for (t, p) in lag]
            consumer.assign(start)
            remaining = {tp: ends[tp] for tp in lag}
            count = 0
            deadline = time.monotonic() + timeout
            while remaining and time.monotonic() < deadline:
                for m in consumer.consume(1000, 0.2):
                    if m.error() is None:
                        count += 1
                positions = consumer.position([TopicPartition(t, p) for (t, p) in remaining])
                for tp in positions:
                    if tp.offset >= remaining[(tp.topic, tp.partition)]:
                        remaining.pop((tp.topic, tp.partition), None)
            return count if not remaining else -1
        finally:
            consumer.close()

    def delete_topics(self, names: Sequence[str]) -> None:
        if not names:
            return
        for fut in self.admin.delete_topics(list(names), operation_timeout=self.timeout).values():
            with contextlib.suppress(KafkaException):
                fut.result()

    def topics_with_prefix(self, prefix: str) -> list[str]:
        return sorted(t for t in self.existing_topics() if prefix and t.startswith(prefix))


def _reader_config(platform: PlatformSettings) -> dict[str, Any]:
    """An assign()-only reader: a throw-away group id that never commits, read_committed."""
    return {
        "bootstrap.servers": platform.kafka_bootstrap_servers,
        "group.id": f"ops-reader-{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
    }


def read_topic(platform: PlatformSettings, topic: str, logical: str | None = None, *,
               serdes: Serdes | None = None, timeout: float = 120.0) -> TopicRead:
    """Every committed message of ``topic`` from the beginning up to the end offsets seen at the start.

    ``logical`` names the Avro record to decode with (None: leave values undecoded, e.g. a DLQ). The
    read stops when every partition's position reached the end seen at the start, so messages
    produced meanwhile may or may not be included; ``complete`` is False if the time ran out first.
    """
    consumer = Consumer(_reader_config(platform))
    serde = (serdes or Serdes(platform, TopicCatalogue(platform))).for_topic(logical) if logical else None
    out = TopicRead(topic, [])
    try:
        md = consumer.list_topics(topic, timeout=10)
        if topic not in md.topics or md.topics[topic].error is not None:
            return out
        parts = sorted(md.topics[topic].partitions)
        remaining: dict[int, int] = {}
        for p in parts:
            lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if hi > lo:
                remaining[p] = hi
        if not remaining:
            return out
        consumer.assign([TopicPartition(topic, p, 0) for p in remaining])
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            for m in consumer.consume(2000, 0.3):
                if m.error() is not None:
                    continue
                key = m.key()
                value: dict[str, Any] | None = None
                if serde is not None:
                    try:
                        value = serde.decode(m.value())
                    except (DecodeError, InvalidRecordError):
                        out.undecodable += 1
                        continue
                headers = {k: (v or b"").decode("utf-8", "replace") for k, v in (m.headers() or [])}
                out.messages.append(Msg(topic, m.partition(), m.offset(), m.timestamp()[1],
                                        key.decode("utf-8", "replace") if key is not None else None, value,
                                        headers, len(m.value() or b"")))
            for tp in consumer.position([TopicPartition(topic, p) for p in remaining]):
                if tp.offset >= remaining[tp.partition]:
                    remaining.pop(tp.partition, None)
        out.complete = not remaining
        return out
    finally:
        consumer.close()
