"""Release policies: in what order the runtime hands consumed messages to the processor, and which
offsets a unit of work may commit (docs/platform.md, "The runtime").

* :class:`ArrivalOrder` (pivots, inference, trainer): every message of a poll, in the order
  librdkafka delivered it; the committable offsets are the consumer's positions.
* :class:`EventTimeAligned` (the coordinator's three-topic join): records are held per input
  partition and released in event-time order across the co-partitioned topics, with a bounded
  wait for an idle topic; the committable offset of a topic-partition is its first held message.

A policy decodes a message only when it is about to release it, through the runtime's ``decode``
(which dead-letters inside the current unit of work and returns None), so a dead-lettered
message's offset is committed with its DLQ record.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaException, Message, TopicPartition
from prometheus_client import Counter, Gauge

from reftrain.streams.kafka import Record, coordinates
from reftrain.topics import TopicCatalogue

log = logging.getLogger(__name__)

#: The runtime's decode step: the message as a Record, or None once it was dead-lettered (or is
#: covered by a checkpoint and skipped).
Decode = Callable[[Message], "Record | None"]


class ReleasePolicy(Protocol):
    """What StreamApp asks of a release policy; every call runs on the session's thread."""

    def bind(self, inputs: Sequence[str], catalogue: TopicCatalogue, batch_size: int) -> None:
        """Once, before the first session: the logical input topics (in priority order), the topic
        names, and the most messages one unit of work may handle."""

    def poll_timeout(self, default_s: float) -> float:
        """How long the next poll may wait (0: releasable records are left over)."""

    def assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Partitions were assigned (after the commit policy restored their state)."""

    def revoked(self, partitions: list[TopicPartition]) -> None:
        """Partitions were revoked or lost: forget what is held for them."""

    def reset(self) -> None:
        """The session ended: forget everything held."""

    def offer(self, msgs: list[Message]) -> bool:
        """Take a poll's records (consumer events already removed); True if a unit of work may
        release something now."""

    def release(self, consumer: Consumer, decode: Decode) -> Iterator[tuple[Message, Record]]:
        """The records to process now, in order, each decoded by ``decode``."""

    def committable(self, consumer: Consumer) -> list[TopicPartition]:
        """The offsets the unit of work that just released may commit."""

    def after_unit(self, consumer: Consumer) -> None:
        """After a committed unit of work (flow control, gauges)."""


def positions(consumer: Consumer) -> list[TopicPartition]:
    """The consumer's valid positions: everything delivered so far is handled."""
    return [tp for tp in consumer.position(consumer.assignment()) if tp.offset != OFFSET_INVALID]


class ArrivalOrder:
    """Release every record of a poll in arrival order (one unit of work per poll)."""

    def __init__(self) -> None:
        self._msgs: list[Message] = []

    def bind(self, inputs: Sequence[str], catalogue: TopicCatalogue, batch_size: int) -> None:
        pass

    def poll_timeout(self, default_s: float) -> float:
        return default_s

    def assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        pass

    def revoked(self, partitions: list[TopicPartition]) -> None:
        pass

    def reset(self) -> None:
        self._msgs = []

    def offer(self, msgs: list[Message]) -> bool:
        self._msgs = msgs
        return bool(msgs)

    def release(self, consumer: Consumer, decode: Decode) -> Iterator[tuple[Message, Record]]:
        msgs, self._msgs = self._msgs, []
        for msg in msgs:
            record = decode(msg)
            if record is not None:
                yield msg, record

    def committable(self, consumer: Consumer) -> list[TopicPartition]:
        return positions(consumer)

    def after_unit(self, consumer: Consumer) -> None:
        pass


# -- event-time alignment -----------------------------------------------------------------------
NEVER = -(2**63)


@dataclass(frozen=True)
class AlignmentMetrics:
    """The service's metrics for alignment (label ``topic`` = logical input topic)."""

    held: Gauge  #: records held, per topic
    timeouts: Counter  #: waits for an idle topic given up, per topic
    pauses: Counter  #: topic-partitions paused for holding too much, per topic
    paused: Gauge  #: topic-partitions paused now


@dataclass
class _Held:
    """A consumed message waiting in its queue; decoded once it reaches the head."""

    msg: Message
    record: Record | None = None
    time: int = 0


class _Partition:
    """The alignment state of one input partition: a queue, a frontier and an arrival clock per topic."""

    def __init__(self, topics: Sequence[str], now: float) -> None:
        self.queues: dict[str, deque[_Held]] = {t: deque() for t in topics}
        self.frontier: dict[str, int] = dict.fromkeys(topics, NEVER)
        self.last_arrival: dict[str, float] = dict.fromkeys(topics, now)
        self.timed_out: set[str] = set()

    def held(self) -> int:
        return sum(len(q) for q in self.queues.values())


@dataclass
class EventTimeAligned:
    """Release records in event-time order per input partition across co-partitioned input topics
    (Kafka Streams' "timestamp synchronisation" with ``max.task.idle.ms``).

    Why. A join that must equal its batch oracle (the coordinator) needs no input to be *late*. A
    consumer catching up on a backlog (first start, restart after a crash, a partition moving to
    another instance) gets whatever librdkafka fetched first: typically hundreds of candles of one
    partition, then the refs; processed in that order every ref behind the candles is late.

    How. Per input partition p there is one FIFO queue per input topic; a record is released only
    when it is the head with the smallest event time among the queues of p (ties: the order of the
    inputs), and each OTHER topic T of p with an empty queue cannot deliver anything earlier: T is
    caught up (position at its cached high watermark), or T's frontier (max event time released
    from T of p) is >= the candidate's, or T delivered nothing for ``max_wait_s`` (an open
    transaction at its tail, a stalled broker: then we stop waiting for it and count it). Per-topic
    order is preserved, so "first arrival" is "first in the topic".

    Offsets. A held record is not processed, so the committable offset of a topic-partition is its
    first held message (or the position when none is held). A crash, an aborted transaction or a
    revocation drops the queues; the next session (or owner) re-fetches from the committed offsets.
    Messages are decoded (and dead-lettered) only at the head of their queue, so a dead letter's
    offset is committed in the same transaction as its DLQ record.

    Units of work. At most ``batch_size`` released or dead-lettered messages per unit (held records
    pile up, and one huge transaction could outlive transaction.timeout.ms); leftovers are released
    by the next poll, which then does not wait. Partitions are visited in rotation, so a busy one
    cannot starve the others.

    Memory. A topic-partition holding more than ``max_buffered`` messages is paused (librdkafka
    drops its prefetched messages and resumes from the application position) and resumed below
    half. A paused topic whose queue drains is waited for (never timed out): it is resumed after the
    unit, and its idle clock starts at the resume.

    Limits (honest): alignment bounds lateness caused by *consumption*; inputs *produced* late (a
    ref published after candles more than the join's slack later already exist) stay late, and a
    partition whose topics are out of event-time order by more than that (a backfill of an old
    series into a live partition) is outside the guarantee. Waiting adds up to ``max_wait_s`` of
    latency when a topic's tail holds an open transaction. Needs the group's committed offsets as
    start positions (the KafkaTransaction commit policy).
    """

    #: Event time of a decoded record (the coordinator: its join's event time).
    event_time: Callable[[Record], int]
    #: Stop waiting for a topic-partition that delivered nothing for this long (s).
    max_wait_s: float = 5.0
    #: Pause a topic-partition holding more messages than this; resume below half.
    max_buffered: int = 20_000
    metrics: AlignmentMetrics | None = None
    _order: list[str] = field(default_factory=list, init=False, repr=False)
    _catalogue: TopicCatalogue | None = field(default=None, init=False, repr=False)
    _batch_size: int = field(default=500, init=False, repr=False)
    _parts: dict[int, _Partition] = field(default_factory=dict, init=False, repr=False)
    _start: dict[tuple[str, int], int] = field(default_factory=dict, init=False, repr=False)
    _paused: set[tuple[str, int]] = field(default_factory=set, init=False, repr=False)
    _more: bool = field(default=False, init=False, repr=False)
    _steps: int = field(default=0, init=False, repr=False)

    def bind(self, inputs: Sequence[str], catalogue: TopicCatalogue, batch_size: int) -> None:
        self._order = list(inputs)
        self._catalogue = catalogue
        self._batch_size = batch_size

    @property
    def catalogue(self) -> TopicCatalogue:
        if self._catalogue is None:
            raise RuntimeError("EventTimeAligned used before StreamApp bound it")
        return self._catalogue

    def poll_timeout(self, default_s: float) -> float:
        return 0 if self._more else default_s  # releasable records left over: do not wait

    # -- rebalance -----------------------------------------------------------------------------
    def assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        now = time.monotonic()
        for tp in consumer.committed(partitions, timeout=60) if partitions else []:
            self._start[(self.catalogue.logical_of(tp.topic), tp.partition)] = tp.offset
        for p in {tp.partition for tp in partitions}:
            self._parts.setdefault(p, _Partition(self._order, now))

    def revoked(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            key = (self.catalogue.logical_of(tp.topic), tp.partition)
            self._start.pop(key, None)
            self._paused.discard(key)
            self._parts.pop(tp.partition, None)
        self._export_held()

    def reset(self) -> None:
        self._parts.clear()
        self._start.clear()
        self._paused.clear()
        self._more = False
        self._export_held()

    # -- a unit of work ------------------------------------------------------------------------
    def offer(self, msgs: list[Message]) -> bool:
        now = time.monotonic()
        for msg in msgs:
            part = self._parts.get(coordinates(msg)[0])
            if part is None:  # not (or no longer) ours: the owner re-reads it from the committed offset
                continue
            logical = self.catalogue.logical_of(msg.topic() or "")
            part.queues[logical].append(_Held(msg))
            part.last_arrival[logical] = now
            part.timed_out.discard(logical)
        self._more = False
        return any(part.held() for part in self._parts.values())

    def release(self, consumer: Consumer, decode: Decode) -> Iterator[tuple[Message, Record]]:
        now = time.monotonic()
        caught_up = self._caught_up(consumer)
        budget = [self._batch_size]
        order = sorted(self._parts)
        if not order:
            return
        self._steps += 1
        k = self._steps % len(order)  # rotate, so a busy partition cannot starve the others
        for p in order[k:] + order[:k]:
            part = self._parts.get(p)
            if part is not None:
                yield from self._release(p, part, caught_up, now, decode, budget)
            if budget[0] <= 0:
                self._more = True
                return

    def _release(self, p: int, part: _Partition, caught_up: set[tuple[str, int]], now: float, decode: Decode,
                 budget: list[int]) -> Iterator[tuple[Message, Record]]:
        """Release heads of partition ``p`` in event-time order while no empty topic may still
        deliver something earlier (class docstring)."""
        while budget[0] > 0:
            best: tuple[int, int, str] | None = None
            for rank, topic in enumerate(self._order):
                q = part.queues[topic]
                while q and q[0].record is None:
                    record = decode(q[0].msg)
                    if record is None:  # dead-lettered in this unit of work
                        q.popleft()
                        budget[0] -= 1
                        continue
                    q[0].record = record
                    q[0].time = self.event_time(record)
                if q and (best is None or (q[0].time, rank) < best[:2]):
                    best = (q[0].time, rank, topic)
            if best is None:
                return
            t, _, topic = best
            for other in self._order:
                if other == topic or part.queues[other]:
                    continue
                if (other, p) in caught_up or part.frontier[other] >= t:
                    continue
                if (other, p) in self._paused:  # drained while paused: resumed after this unit, wait
                    return
                if now - part.last_arrival[other] >= self.max_wait_s:
                    if other not in part.timed_out:
                        part.timed_out.add(other)
                        if self.metrics:
                            self.metrics.timeouts.labels(other).inc()
                        log.info("alignment stopped waiting for an idle input", extra={
                            "topic": other, "partition": p,
                            "waited_s": round(now - part.last_arrival[other], 3)})
                    continue
                return  # `other` may still deliver an earlier record: hold everything of p
            held = part.queues[topic].popleft()
            part.frontier[topic] = max(part.frontier[topic], t)
            assert held.record is not None
            budget[0] -= 1
            yield held.msg, held.record

    def _caught_up(self, consumer: Consumer) -> set[tuple[str, int]]:
        """Topic-partitions whose position is at the cached high watermark (nothing more to fetch
        now). Before the first message of a session the position is unset; the committed offset at
        assignment stands in for it."""
        out: set[tuple[str, int]] = set()
        for tp in consumer.position(consumer.assignment()):
            logical = self.catalogue.logical_of(tp.topic)
            try:
                lo, hi = consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:  # nothing cached yet: unknown, so not caught up
                continue
            pos = tp.offset
            if pos < 0:
                pos = self._start.get((logical, tp.partition), OFFSET_INVALID)
                if pos < 0:
                    pos = lo  # no committed offset: auto.offset.reset=earliest
            if hi >= 0 and pos >= 0 and pos >= hi:
                out.add((logical, tp.partition))
        return out

    def committable(self, consumer: Consumer) -> list[TopicPartition]:
        """The first held message of each topic-partition, else the position."""
        out: list[TopicPartition] = []
        for tp in consumer.position(consumer.assignment()):
            part = self._parts.get(tp.partition)
            q = part.queues.get(self.catalogue.logical_of(tp.topic)) if part else None
            if q:
                out.append(TopicPartition(tp.topic, tp.partition, coordinates(q[0].msg)[1]))
            elif tp.offset != OFFSET_INVALID:
                out.append(tp)
        return out

    def after_unit(self, consumer: Consumer) -> None:
        """Flow control: pause a topic-partition holding too much, resume it below half."""
        for p, part in self._parts.items():
            for topic, q in part.queues.items():
                key = (topic, p)
                if len(q) > self.max_buffered and key not in self._paused:
                    consumer.pause([TopicPartition(self.catalogue.name(topic), p)])
                    self._paused.add(key)
                    if self.metrics:
                        self.metrics.pauses.labels(topic).inc()
                elif key in self._paused and len(q) <= self.max_buffered // 2:
                    consumer.resume([TopicPartition(self.catalogue.name(topic), p)])
                    self._paused.discard(key)
                    part.last_arrival[topic] = time.monotonic()  # its idle clock restarts now
        if self.metrics:
            self.metrics.paused.set(len(self._paused))
        self._export_held()

    def _export_held(self) -> None:
        if self.metrics is None:
            return
        for topic in self._order:
            held = sum(len(part.queues[topic]) for part in self._parts.values())
            self.metrics.held.labels(topic).set(held)
