"""reftrain.streams release policies, pure (no broker): what each lets the processor see and which
offsets a unit of work may then commit. The consumer, messages and catalogue are in-memory fakes
standing in for librdkafka's (the policies only read positions, watermarks and message coordinates);
the policies run against the real broker in the coordinator, pivots, inference and trainer tests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from confluent_kafka import Consumer, Message, TopicPartition

from reftrain.streams import ArrivalOrder, EventTimeAligned, Record
from reftrain.topics import TopicCatalogue

REFS, CANDLES = "inference-refs", "candles"


@dataclass
class FakeMessage:
    _topic: str
    _partition: int
    _offset: int
    t: int  # event time, carried to the decoded record

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def error(self) -> None:
        return None


class FakeCatalogue:
    def name(self, logical: str) -> str:
        return logical

    def logical_of(self, topic: str) -> str:
        return topic


@dataclass
class FakeConsumer:
    """Positions and high watermarks per (topic, partition); committed offsets all unset."""

    pos: dict[tuple[str, int], int]
    hi: dict[tuple[str, int], int]
    paused: list[tuple[str, int]] = field(default_factory=list)

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.pos]

    def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.pos[(tp.topic, tp.partition)]) for tp in tps]

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool = False) -> tuple[int, int]:
        return 0, self.hi[(tp.topic, tp.partition)]

    def committed(self, tps: list[TopicPartition], timeout: float = 0) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, -1001) for tp in tps]

    def pause(self, tps: list[TopicPartition]) -> None:
        self.paused.extend((tp.topic, tp.partition) for tp in tps)


def decode(msg: Any) -> Record | None:
    """The runtime's decode stand-in: offset 13 is 'bad' (dead-lettered: None)."""
    if msg.offset() == 13:
        return None
    return Record(msg.topic(), "BTCUSDT:1m", {"t": msg.t}, msg.partition(), msg.offset(), msg.t, msg)


def released(policy: Any, consumer: FakeConsumer) -> list[tuple[str, int]]:
    return [(r.topic, r.offset) for _m, r in policy.release(cast(Consumer, consumer), decode)]


def msgs(*items: FakeMessage) -> list[Message]:
    return cast(list[Message], list(items))


def test_arrival_order_releases_a_poll_in_order_and_commits_the_positions() -> None:
    policy = ArrivalOrder()
    policy.bind([CANDLES], cast(TopicCatalogue, FakeCatalogue()), 500)
    consumer = FakeConsumer({(CANDLES, 0): 15}, {(CANDLES, 0): 15})
    assert policy.offer(msgs(FakeMessage(CANDLES, 0, 12, 3), FakeMessage(CANDLES, 0, 13, 1),
                             FakeMessage(CANDLES, 0, 14, 2)))
    assert released(policy, consumer) == [(CANDLES, 12), (CANDLES, 14)]  # 13 was dead-lettered
    assert [(tp.topic, tp.offset) for tp in policy.committable(cast(Consumer, consumer))] == [(CANDLES, 15)]
    assert not policy.offer([])


def aligned(max_wait_s: float = 60.0) -> EventTimeAligned:
    policy = EventTimeAligned(lambda r: int(r.value["t"]), max_wait_s=max_wait_s)
    policy.bind([REFS, CANDLES], cast(TopicCatalogue, FakeCatalogue()), 500)
    return policy


def test_event_time_alignment_holds_candles_until_the_refs_topic_catches_up() -> None:
    policy = aligned()
    # refs of partition 0 not fetched yet (position 0 < high watermark 1): candles must wait
    consumer = FakeConsumer({(REFS, 0): 0, (CANDLES, 0): 3}, {(REFS, 0): 1, (CANDLES, 0): 3})
    policy.assigned(cast(Consumer, consumer), [TopicPartition(REFS, 0), TopicPartition(CANDLES, 0)])
    assert policy.offer(msgs(*(FakeMessage(CANDLES, 0, o, t) for o, t in ((0, 10), (1, 20), (2, 30)))))
    assert released(policy, consumer) == []
    # nothing released: the unit commits the first held candle, so a restart re-reads all three
    assert [(tp.topic, tp.offset) for tp in policy.committable(cast(Consumer, consumer))] == [(REFS, 0), (CANDLES, 0)]

    # the ref (event time 20) arrives: released between candle 10 and candle 20 (ties: input order),
    # then candle 30 waits again (refs' frontier is 20 and refs are still not caught up)
    consumer.pos[(REFS, 0)] = 1
    consumer.hi[(REFS, 0)] = 2
    assert policy.offer(msgs(FakeMessage(REFS, 0, 0, 20)))
    assert released(policy, consumer) == [(CANDLES, 0), (REFS, 0), (CANDLES, 1)]
    assert [(tp.topic, tp.offset) for tp in policy.committable(cast(Consumer, consumer))] == [(REFS, 1), (CANDLES, 2)]

    # refs caught up (position == high watermark): nothing earlier can come, candle 30 goes
    consumer.hi[(REFS, 0)] = 1
    assert policy.offer([])
    assert released(policy, consumer) == [(CANDLES, 2)]
    assert not policy.offer([])


def test_event_time_alignment_stops_waiting_for_an_idle_topic_after_max_wait() -> None:
    policy = aligned(max_wait_s=0.0)
    consumer = FakeConsumer({(REFS, 0): 0, (CANDLES, 0): 2}, {(REFS, 0): 5, (CANDLES, 0): 2})
    policy.assigned(cast(Consumer, consumer), [TopicPartition(REFS, 0), TopicPartition(CANDLES, 0)])
    assert policy.offer(msgs(FakeMessage(CANDLES, 0, 0, 10), FakeMessage(CANDLES, 0, 1, 20)))
    assert released(policy, consumer) == [(CANDLES, 0), (CANDLES, 1)]


def test_event_time_alignment_dead_letters_at_the_head_and_bounds_a_unit_by_batch_size() -> None:
    policy = EventTimeAligned(lambda r: int(r.value["t"]), max_wait_s=60.0)
    policy.bind([REFS, CANDLES], cast(TopicCatalogue, FakeCatalogue()), 2)
    consumer = FakeConsumer({(REFS, 0): 0, (CANDLES, 0): 16}, {(REFS, 0): 0, (CANDLES, 0): 16})
    policy.assigned(cast(Consumer, consumer), [TopicPartition(REFS, 0), TopicPartition(CANDLES, 0)])
    assert policy.offer(msgs(*(FakeMessage(CANDLES, 0, o, o) for o in range(12, 16))))
    # offset 13 is dead-lettered when it reaches the head and counts against the unit's budget of 2;
    # the head decoded behind it is still released (the budget is checked per released record)
    assert released(policy, consumer) == [(CANDLES, 12), (CANDLES, 14)]
    assert policy.poll_timeout(0.2) == 0  # leftovers: the next poll does not wait
    assert [(tp.topic, tp.offset) for tp in policy.committable(cast(Consumer, consumer))] == [(REFS, 0), (CANDLES, 15)]
    assert policy.offer([])
    assert released(policy, consumer) == [(CANDLES, 15)]
    assert policy.poll_timeout(0.2) == 0.2
