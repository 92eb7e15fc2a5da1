"""Replication on a 3-broker KRaft cluster: topics get RF 3 / min.insync.replicas 2, and a
transactional StreamApp rides a kill -9 of the partition leader while traffic flows: nothing lost,
nothing duplicated, per-series state counted once, and the app never exits."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from reftrain.observability import Health
from reftrain.records import Candle
from reftrain.settings import PlatformSettings, kafka_client_config
from reftrain.streams import Context, Record, Serdes, StreamApp, producer_config
from reftrain.topics import CANDLES, PIVOTS, TopicCatalogue
from tests.integration.scale.conftest import Cluster
from tests.support import consume_all, decode_all, ensure_topics, real_candles

# Three JVMs start on a shared 2-core machine: about a minute, so out of the CI default.
pytestmark = [pytest.mark.kafka, pytest.mark.slow]

KEY = "BTCUSDT:1m"


class Echo:
    """Counts candles per series in changelog state and emits one 'pivot' per candle, so every
    transaction carries an output, a state write and the consumed offsets."""

    def __init__(self) -> None:
        self.state: dict[int, dict[str, Any]] = {}
        self.last: dict[str, int] = {}

    def assigned(self, partition: int, state: dict[str, Any]) -> None:
        self.state[partition] = dict(state)

    def revoked(self, partition: int) -> None:
        self.state.pop(partition, None)

    def process(self, record: Record, ctx: Context) -> None:
        c = record.value
        key = f"{c['symbol']}:{c['timeframe']}"
        n = self.state[record.partition].get(key, {"n": 0})["n"] + 1
        self.state[record.partition][key] = {"n": n}
        self.last[key] = n
        ctx.put_state(key, {"n": n})
        ctx.emit(PIVOTS, key, {"pivot_id": f"{key}-{c['open_time']}", "symbol": c["symbol"],
                               "timeframe": c["timeframe"], "level": 1, "kind": "HIGH",
                               "pivot_time": c["open_time"], "price": c["high"],
                               "confirmed_at": c["open_time"] + 60_000, "strength": 2})


def test_topics_are_replicated_three_times_with_min_isr_two(cluster_platform: PlatformSettings) -> None:
    cat = ensure_topics(cluster_platform)
    admin = AdminClient(kafka_client_config(cluster_platform))
    md = admin.list_topics(timeout=10)
    assert len(md.brokers) == 3
    name = cat.name(CANDLES)
    assert {len(p.replicas) for p in md.topics[name].partitions.values()} == {3}
    res = ConfigResource(ConfigResource.Type.TOPIC, name)
    configs = admin.describe_configs([res])[res].result()
    assert configs["min.insync.replicas"].value == "2"


def _leader(platform: PlatformSettings, topic: str, partition: int) -> int:
    md = AdminClient(kafka_client_config(platform)).list_topics(topic, timeout=10)
    return int(md.topics[topic].partitions[partition].leader)


def test_kill_9_of_the_partition_leader_loses_and_duplicates_nothing(
        cluster_platform: PlatformSettings, cluster: Cluster) -> None:
    p = cluster_platform
    cat: TopicCatalogue = ensure_topics(p)
    candles = real_candles("BTCUSDT-1m-2025-09-22_2025-09-25.csv", limit=1500)
    proc = Echo()
    app = StreamApp("scale-test", p, [CANDLES], f"{p.topic_prefix}grp", proc, stateful=True, instance_id="i1")
    stop = threading.Event()
    t = threading.Thread(target=app.run, args=(stop, Health("scale-test")), daemon=True)
    t.start()

    serde = Serdes(p, cat).for_topic(CANDLES)
    producer = Producer(producer_config(p))
    partitions: set[int] = set()
    errors: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            partitions.add(msg.partition())

    def produce(batch: list[Candle]) -> None:
        for c in batch:
            producer.produce(serde.topic, key=KEY.encode(), value=serde.encode(dict(c)),
                             headers=[("content-type", serde.content_type.encode())], on_delivery=delivered)
            producer.poll(0)

    # Traffic before, during and after the kill, in small paced batches.
    produce(candles[:300])
    assert producer.flush(60) == 0
    (partition,) = partitions
    deadline = time.monotonic() + 90
    while proc.last.get(KEY, 0) < 300 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.last.get(KEY, 0) >= 300, "the app did not start processing"
    leader = _leader(p, cat.name(CANDLES), partition)
    sent = 300
    killed_at = None
    while sent < len(candles):
        produce(candles[sent:sent + 50])
        sent += 50
        if killed_at is None and sent >= 500:
            os.kill(cluster.pid_of(leader), signal.SIGKILL)
            killed_at = time.monotonic()
        time.sleep(0.05)
    assert producer.flush(120) == 0
    assert not errors, errors[:3]
    new_leader = _leader(p, cat.name(CANDLES), partition)
    assert new_leader != leader

    deadline = time.monotonic() + 120
    while proc.last.get(KEY, 0) < len(candles) and time.monotonic() < deadline and t.is_alive():
        time.sleep(0.5)
    alive = t.is_alive()
    assert killed_at is not None
    print(f"leader {leader} -> {new_leader}; all {len(candles)} processed {time.monotonic() - killed_at:.1f} s "
          f"after the kill")  # the figure in docs/scaling.md (pytest -s)
    stop.set()
    t.join(60)
    assert alive, "the StreamApp exited after the leader was killed"
    assert proc.last.get(KEY) == len(candles), "state counted a candle twice or missed one"

    out = decode_all(p, PIVOTS, consume_all(p, cat.name(PIVOTS), expect=len(candles), timeout=60))
    ids = [o["pivot_id"] for o in out]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} duplicated outputs"
    assert set(ids) == {f"{KEY}-{c['open_time']}" for c in candles}, "outputs lost"
