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

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from reftrain.errors import DecodeError, InvalidRecordError
from reftrain.settings import PlatformSettings, kafka_client_config
from reftrain.streams import Serdes, message_headers
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
    """Read-only queries against one broker: topics, end offsets, committed offsets, lag.

    Offsets are read through plain consumers that never join a group, NOT through the AdminClient:
    ``AdminClient.list_consumer_group_offsets`` crashes the whole process with SIGSEGV inside
    librdkafka when the group coordinator answers NOT_COORDINATOR, which is what it answers while a
    restarted broker loads its groups (confluent-kafka-python#1982; it killed the first fault
    campaign during a broker restart). A consumer's ``committed()`` handles that answer. The
    AdminClient is kept for topic creation and deletion only."""

    def __init__(self, platform: PlatformSettings, timeout: float = 10.0) -> None:
        self.platform = platform
        self.timeout = timeout
        self.catalogue = TopicCatalogue(platform)
        # log_level 2: while a broker restarts, an idle client would print a connection error a second
        self.admin = AdminClient({**kafka_client_config(platform), "log_level": 2})
        self._meta = self._consumer(f"ops-view-{uuid.uuid4().hex[:8]}")
        self._by_group: dict[str, Consumer] = {}

    def _consumer(self, group: str) -> Consumer:
        """A consumer of ``group`` that never subscribes nor commits: it only asks questions."""
        return Consumer({**kafka_client_config(self.platform), "group.id": group,
                         "enable.auto.commit": False, "enable.auto.offset.store": False, "log_level": 2,
                         "isolation.level": "read_uncommitted", "socket.timeout.ms": 5000})

    def close(self) -> None:
        for c in [self._meta, *self._by_group.values()]:
            with contextlib.suppress(Exception):
                c.close()
        self._by_group.clear()

    # -- metadata and offsets -----------------------------------------------------------------
    def existing_topics(self) -> set[str]:
        return set(self._meta.list_topics(timeout=self.timeout).topics)

    def partitions(self, topics: Iterable[str]) -> dict[str, int]:
        md = self._meta.list_topics(timeout=self.timeout).topics
        return {t: len(md[t].partitions) for t in topics if t in md and md[t].error is None}

    def end_offsets(self, topics: Iterable[str]) -> dict[TP, int]:
        """High watermark of every partition of the existing topics among ``topics``."""
        out: dict[TP, int] = {}
        for t, n in self.partitions(topics).items():
            for p in range(n):
                _lo, hi = self._meta.get_watermark_offsets(TopicPartition(t, p), timeout=self.timeout)
                out[(t, p)] = int(hi)
        return out

    def committed(self, group: str, topics: Iterable[str]) -> dict[TP, int]:
        """Committed offsets of ``group`` on ``topics`` (partitions with no commit are absent)."""
        tps = [TopicPartition(t, p) for t, n in self.partitions(topics).items() for p in range(n)]
        if not tps:
            return {}
        c = self._by_group.get(group)
        if c is None:
            c = self._by_group[group] = self._consumer(group)
        return {(tp.topic, tp.partition): int(tp.offset) for tp in c.committed(tps, timeout=self.timeout)
                if tp.offset >= 0}

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
        ends = ends if ends is not None else self.end_offsets(topics)
        done = self.committed(group, topics)
        behind = {tp: hi for tp, hi in ends.items() if tp[0] in topics and hi > done.get(tp, 0)}
        if not behind:
            return 0
        consumer = Consumer(_reader_config(self.platform))
        try:
            consumer.assign([TopicPartition(t, p, done.get((t, p), 0)) for (t, p) in behind])
            count = 0
            deadline = time.monotonic() + timeout
            while behind and time.monotonic() < deadline:
                count += sum(1 for m in consumer.consume(1000, 0.2) if m.error() is None)
                for tp in consumer.position([TopicPartition(t, p) for (t, p) in behind]):
                    if tp.offset >= behind[(tp.topic, tp.partition)]:
                        behind.pop((tp.topic, tp.partition), None)
            return count if not behind else -1
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
        **kafka_client_config(platform),
        "group.id": f"ops-reader-{uuid.uuid4().hex[:12]}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
    }


def read_messages(platform: PlatformSettings, topic: str, *, timeout: float = 120.0,
                  **config: Any) -> tuple[list[Message], bool]:
    """Every committed message of ``topic`` (raw: key, value bytes, headers, coordinates) from the
    beginning up to the end offsets seen at the start, and whether the read got there in time.

    Messages produced meanwhile may or may not be included; an open transaction at the tail keeps a
    read_committed reader short of the end (then the flag is False). ``config`` adds consumer
    settings (e.g. a larger ``fetch.max.bytes``)."""
    consumer = Consumer({**_reader_config(platform), **config})
    out: list[Message] = []
    try:
        md = consumer.list_topics(topic, timeout=10)
        if topic not in md.topics or md.topics[topic].error is not None:
            return out, True
        remaining: dict[int, int] = {}
        for p in sorted(md.topics[topic].partitions):
            lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if hi > lo:
                remaining[p] = hi
        if not remaining:
            return out, True
        consumer.assign([TopicPartition(topic, p, 0) for p in remaining])
        deadline = time.monotonic() + timeout
        while remaining and time.monotonic() < deadline:
            out.extend(m for m in consumer.consume(2000, 0.3) if m.error() is None)
            for tp in consumer.position([TopicPartition(topic, p) for p in remaining]):
                if tp.offset >= remaining[tp.partition]:
                    remaining.pop(tp.partition, None)
        return out, not remaining
    finally:
        consumer.close()


def read_topic(platform: PlatformSettings, topic: str, logical: str | None = None, *,
               serdes: Serdes | None = None, timeout: float = 120.0) -> TopicRead:
    """``read_messages``, decoded: ``logical`` names the Avro record to decode with (None: leave
    values undecoded, e.g. a DLQ); undecodable values are counted, not returned."""
    serde = (serdes or Serdes(platform, TopicCatalogue(platform))).for_topic(logical) if logical else None
    messages, complete = read_messages(platform, topic, timeout=timeout)
    out = TopicRead(topic, [], complete=complete)
    for m in messages:
        key = m.key()
        value: dict[str, Any] | None = None
        if serde is not None:
            try:
                value = serde.decode(m.value())
            except (DecodeError, InvalidRecordError):
                out.undecodable += 1
                continue
        headers = {k: v.decode("utf-8", "replace") for k, v in message_headers(m)}
        out.messages.append(Msg(topic, m.partition() or 0, m.offset() or 0, m.timestamp()[1],
                                key.decode("utf-8", "replace") if key is not None else None, value,
                                headers, len(m.value() or b"")))
    return out
