"""``StreamApp`` with event-time alignment of its co-partitioned inputs (Kafka Streams' "timestamp
synchronisation", with ``max.task.idle.ms``), for the coordinator's three-topic join.

Why. The join engine equals the batch oracle only if no input is *late*: its series' watermark (the
max candle open_time processed) must not be more than S bars past the input's event time
(services/coordinator/join.py). Produced in real time, the topics respect that. But a consumer that
catches up on a backlog (first start, restart after a crash, a partition moving to another instance)
gets whatever librdkafka fetched first: typically hundreds of candles of one partition in one batch,
then the refs. Processed in that order, the candles race ahead and every ref behind them is late.

How. Consumed messages are not processed in arrival order. Per input *partition* p there is one FIFO
queue per input topic; a record is released (processed) only when it is the head with the smallest
event time among the three queues of p (ties: the order of ``inputs``), and each OTHER topic of p
with an empty queue cannot deliver anything earlier. A topic T of p cannot deliver anything earlier
when any of these holds:

* T is caught up: its consumer position is at its (cached) high watermark;
* T's "frontier" (max event time released from T of p) is >= the candidate's event time: T's later
  records are assumed not to go back in time (true per series for real-time producers; across series
  of one partition it is the same assumption Kafka Streams makes);
* T has delivered nothing for ``max_wait_s`` (an open transaction at its tail keeps the high
  watermark above the position; a stalled broker): then we stop waiting for it, and count it.

Per-topic order is preserved (FIFO), so "first arrival" in the engine is "first in the topic".

Offsets. A held record is not processed, so the offset committed with a transaction is, per
topic-partition, the offset of its first held message (or the consumer position when none is held).
A crash, an aborted transaction or a revocation simply drops the queues: the next session (or the
next owner) re-fetches the held messages from the committed offsets. State and offsets therefore
stay exactly as consistent as in StreamApp. Messages are decoded (and dead-lettered) only when they
reach the head of their queue, so a dead-lettered message's offset is committed in the same
transaction as its DLQ record: no duplicate DLQ entries after a crash.

Transactions. One per poll that releases anything, holding at most ``batch_size`` released or
dead-lettered messages (held records can pile up, and one huge transaction could outlive
transaction.timeout.ms); leftovers are released by the next poll, which then does not wait.

Memory. A topic-partition with more than ``max_buffered`` held messages is paused (librdkafka then
drops its prefetched messages and resumes from the application position), and resumed below half.
A paused topic whose queue drains is waited for (never timed out): it is resumed after the step, and
its idle clock starts at the resume.

Limits (honest): alignment bounds lateness caused by *consumption*; it cannot repair inputs that were
*produced* late (a ref published after candles more than S bars later already exist and were
processed, e.g. inference down for longer than S). Those are counted as late by the engine. A
partition whose topics are out of event-time order by more than S (e.g. a backfill of an old series
into a live partition) is also outside the guarantee. Waiting is bounded by ``max_wait_s`` per
stalled topic, so alignment can add up to that much latency when a topic's tail holds an open
transaction.

Why a subclass rather than a processor: the platform loop processes messages in arrival order,
commits the consumer position, and only runs when a poll returned messages. Alignment needs to hold
records across polls, commit the first held offset instead of the position, and re-evaluate held
records on empty polls (an idle timer may expire). ``_session`` below is StreamApp's with that one
step swapped in; the hooks StreamApp would need to make this subclass unnecessary are listed in the
coordinator's report (docs): a per-poll step callback and a "committable offsets" override.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from reftrain import observability as obs
from reftrain.serde import RegistryUnavailableError
from reftrain.settings import kafka_client_config
from reftrain.streams import (
    Context,
    Record,
    RestartSession,
    StreamApp,
    abort_transaction,
    commit_transaction,
    coordinates,
    is_record,
)
from reftrain.topics import TopicSpec
from services.coordinator import metrics

log = logging.getLogger(__name__)

NEVER = -(2**63)


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


class _Txn:
    """Begins the Kafka transaction on first use (a poll that releases nothing commits nothing) and
    counts the messages it handles against a budget."""

    def __init__(self, producer: Producer, budget: int) -> None:
        self.producer = producer
        self.open = False
        self.budget = budget

    def begin(self) -> None:
        if not self.open:
            self.producer.begin_transaction()
            self.open = True


@dataclass
class AlignedStreamApp(StreamApp):
    """Exactly-once consume-process-produce like ``StreamApp``, releasing records in event-time order
    per input partition across the input topics (module docstring)."""

    #: Event time of a decoded record (the coordinator: join.event_time).
    event_time: Callable[[Record], int] = lambda r: 0
    #: Stop waiting for a topic-partition that delivered nothing for this long (s).
    max_wait_s: float = 5.0
    #: Pause a topic-partition holding more messages than this; resume below half.
    max_buffered: int = 20_000
    #: Changelog "store" name (the topic is ``<prefix><group>-<store>-changelog``); put a state layout
    #: version in it so an incompatible layout starts on a fresh topic.
    store: str = "state"
    on_batch_aborted: Callable[[], None] | None = None
    _parts: dict[int, _Partition] = field(default_factory=dict, init=False, repr=False)
    _start: dict[tuple[str, int], int] = field(default_factory=dict, init=False, repr=False)
    _paused: set[tuple[str, int]] = field(default_factory=set, init=False, repr=False)
    _more: bool = field(default=False, init=False, repr=False)
    _steps: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stateful:
            self.changelog = self.catalogue.changelog(self.group, self.store)
        self._order = list(self.inputs)

    def ensure_topics(self) -> None:
        extra: list[TopicSpec] = []
        if self.stateful:
            extra.append(self.catalogue.changelog_spec(self.group, self.store))
        admin = AdminClient(kafka_client_config(self.platform))
        self.catalogue.ensure(admin, extra)

    # -- rebalance -----------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        super()._on_assign(consumer, partitions)  # restores state; readiness follows
        now = time.monotonic()
        for tp in consumer.committed(partitions, timeout=60) if partitions else []:
            self._start[(self.catalogue.logical_of(tp.topic), tp.partition)] = tp.offset
        for p in {tp.partition for tp in partitions}:
            self._parts.setdefault(p, _Partition(self._order, now))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        super()._on_revoke(consumer, partitions)
        for tp in partitions:
            key = (self.catalogue.logical_of(tp.topic), tp.partition)
            self._start.pop(key, None)
            self._paused.discard(key)
            self._parts.pop(tp.partition, None)
        self._export_held()

    def _forget_all(self) -> None:
        self._parts.clear()
        self._start.clear()
        self._paused.clear()
        self._export_held()

    # -- the session's hooks: StreamApp._session runs the loop, with the aligned step --------------
    def _poll_timeout(self) -> float:
        return 0 if self._more else self.poll_timeout_s  # releasable records left over: do not wait

    def _session_ended(self) -> None:
        self._forget_all()

    def _step(self, msgs: list[Message], consumer: Consumer, producer: Producer, ctx: Context) -> None:
        """Queue the polled messages, release what alignment allows in one transaction, commit."""
        now = time.monotonic()
        for msg in msgs:
            if not is_record(msg):
                continue
            part = self._parts.get(coordinates(msg)[0])
            if part is None:  # not (or no longer) ours: the owner re-reads it from the committed offset
                continue
            logical = self.catalogue.logical_of(msg.topic() or "")
            part.queues[logical].append(_Held(msg))
            part.last_arrival[logical] = now
            part.timed_out.discard(logical)
        self._more = False
        if not any(part.held() for part in self._parts.values()):
            return
        started = time.monotonic()
        caught_up = self._caught_up(consumer)
        # At most batch_size messages per transaction, as in StreamApp: held records can pile up to
        # max_buffered per partition, and one huge transaction could outlive transaction.timeout.ms.
        txn = _Txn(producer, self.batch_size)
        order = sorted(self._parts)
        self._steps += 1
        k = self._steps % len(order)  # rotate, so a busy partition cannot starve the others
        try:
            for p in order[k:] + order[:k]:
                self._release(p, self._parts[p], caught_up, now, ctx, producer, txn)
                if txn.budget <= 0:
                    self._more = True
                    break
            if txn.open:
                # the platform's optional Processor.end_batch(ctx): inside the transaction, after
                # its last record, before its offsets (the coordinator writes its state here)
                end_batch = getattr(self.processor, "end_batch", None)
                if end_batch is not None:
                    self._run_hook(end_batch, ctx)
                commit_transaction(producer, self._committable(consumer), consumer, self.watchdog, self.failpoint)
                obs.TRANSACTIONS.labels(self.service, "committed").inc()
        except (RestartSession, RegistryUnavailableError, KafkaException) as exc:
            if txn.open:
                obs.TRANSACTIONS.labels(self.service, "aborted").inc()
                abort_transaction(producer, self.watchdog)
            if self.on_batch_aborted:
                self.on_batch_aborted()
            raise RestartSession(f"{type(exc).__name__}: {exc}") from exc
        if txn.open:
            obs.BATCH_SECONDS.labels(self.service).observe(time.monotonic() - started)
            if self.on_batch_committed:
                self.on_batch_committed()
        self._flow_control(consumer)
        self._export_held()

    @staticmethod
    def _run_hook(hook: Callable[[Context], None], ctx: Context) -> None:
        """A failing end_batch aborts the transaction like a failing record would (StreamApp lets
        anything but RestartSession/Kafka/registry errors escape and end the service)."""
        try:
            hook(ctx)
        except (RestartSession, RegistryUnavailableError, KafkaException):
            raise
        except Exception as exc:
            log.exception("end_batch failed; aborting the transaction")
            raise RestartSession(f"end_batch failed: {exc!r}") from exc

    # -- alignment -------------------------------------------------------------------------------
    def _release(self, p: int, part: _Partition, caught_up: set[tuple[str, int]], now: float, ctx: Context,
                 producer: Producer, txn: _Txn) -> None:
        """Release heads of partition ``p`` in event-time order while no empty topic may still
        deliver something earlier (module docstring)."""
        while txn.budget > 0:
            best: tuple[int, int, str] | None = None
            for rank, topic in enumerate(self._order):
                q = part.queues[topic]
                while q and q[0].record is None:
                    record = self._decode(q[0].msg, producer, txn.begin)
                    if record is None:  # dead-lettered in this transaction
                        q.popleft()
                        txn.budget -= 1
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
                if (other, p) in self._paused:  # drained while paused: resumed after this step, wait
                    return
                if now - part.last_arrival[other] >= self.max_wait_s:
                    if other not in part.timed_out:
                        part.timed_out.add(other)
                        metrics.ALIGNMENT_TIMEOUTS.labels(other).inc()
                        log.info("alignment stopped waiting for an idle input", extra={
                            "topic": other, "partition": p,
                            "waited_s": round(now - part.last_arrival[other], 3)})
                    continue
                return  # `other` may still deliver an earlier record: hold everything of p
            held = part.queues[topic].popleft()
            part.frontier[topic] = max(part.frontier[topic], t)
            assert held.record is not None
            txn.budget -= 1
            self._apply(held.msg, held.record, ctx, producer, txn)

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

    def _committable(self, consumer: Consumer) -> list[TopicPartition]:
        """Offsets to commit: the first held message of each topic-partition, else the position."""
        out: list[TopicPartition] = []
        for tp in consumer.position(consumer.assignment()):
            part = self._parts.get(tp.partition)
            q = part.queues.get(self.catalogue.logical_of(tp.topic)) if part else None
            if q:
                out.append(TopicPartition(tp.topic, tp.partition, coordinates(q[0].msg)[1]))
            elif tp.offset != OFFSET_INVALID:
                out.append(tp)
        return out

    def _flow_control(self, consumer: Consumer) -> None:
        for p, part in self._parts.items():
            for topic, q in part.queues.items():
                key = (topic, p)
                if len(q) > self.max_buffered and key not in self._paused:
                    consumer.pause([TopicPartition(self.catalogue.name(topic), p)])
                    self._paused.add(key)
                    metrics.PAUSES_TOTAL.labels(topic).inc()
                elif key in self._paused and len(q) <= self.max_buffered // 2:
                    consumer.resume([TopicPartition(self.catalogue.name(topic), p)])
                    self._paused.discard(key)
                    part.last_arrival[topic] = time.monotonic()  # its idle clock restarts now
        metrics.PAUSED_PARTITIONS.set(len(self._paused))

    def _export_held(self) -> None:
        for topic in self._order:
            held = sum(len(part.queues[topic]) for part in self._parts.values())
            metrics.HELD_RECORDS.labels(topic).set(held)

    # -- per message: StreamApp's decode at the head of a queue, its process on release ----------
    def _apply(self, msg: Message, record: Record, ctx: Context, producer: Producer, txn: _Txn) -> None:
        txn.begin()
        self._process(msg, record, ctx, producer)
