"""Coordinator benchmark, printed with the anchor it is compared against (same run, same machine):

1. Throughput on a backlog: input events (refs + candles + pivots) joined per second by one
   coordinator instance (event-time alignment, join engine, TrainingJob emission, changelog writes,
   Kafka transactions) vs a PLAIN consume-and-produce loop over the same three topics with the same
   serde (strict wire-format decode + validation, encode through the registry serializer) and the
   same transactions (one per consumed batch of 500, offsets in the transaction), producing one
   record per input. Ratio = coordinator / plain.
2. Join latency in live mode: inputs produced in real-time order at a steady rate while the
   coordinator keeps up; latency = Kafka timestamp of the input that completed a join -> commit of
   the transaction that published the job (what ``reftrain_coordinator_join_latency_seconds``
   measures). Anchor: the same path through the plain loop (input timestamp -> commit).

Inputs: REAL candles (data/: BTCUSDT and ETHUSDT 1m; both series hash to the same partition, so one
partition carries the whole load), pivots detected on them, synthesised refs (fake checksum, no model
runs; see tests/integration/coordinator/scenario.py). Default join settings (S = D = 500 bars).

Needs the local stack (make up). Run: .venv/bin/python bench/bench_coordinator.py [--candles N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ops.fixtures.coordinator import build_series, merge_round_robin
from ops.fixtures.support import ensure_topics, register_schemas
from reftrain import settings
from reftrain.observability import Health
from reftrain.settings import PlatformSettings
from reftrain.streams import Serdes, consumer_config, producer_config
from reftrain.topics import TopicCatalogue
from services.coordinator import metrics
from services.coordinator.app import build_app
from services.coordinator.processor import INPUTS
from services.coordinator.settings import CoordinatorSettings

Event = tuple[str, str, dict[str, Any]]


def produce(platform: PlatformSettings, events: Sequence[Event], pace_s: float = 0.0,
            step: int = 1) -> None:
    """Produce events in order through one producer; with ``pace_s``, ``step`` events every pace_s."""
    cat = TopicCatalogue(platform)
    serdes = Serdes(platform, cat)
    producer = Producer(producer_config(platform))
    next_at = time.monotonic()
    for i in range(0, len(events), step):
        for topic, key, value in events[i:i + step]:
            serde = serdes.for_topic(topic)
            while True:
                try:
                    producer.produce(serde.topic, key=key.encode(), value=serde.encode(value),
                                     headers=[("content-type", serde.content_type.encode())])
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
        if pace_s:
            next_at += pace_s
            time.sleep(max(0.0, next_at - time.monotonic()))
    assert producer.flush(60) == 0


def counter_total(counter: Any) -> int:
    return int(sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total")))


def percentile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))] if s else float("nan")


# ------------------------------------------------------------------------------ the coordinator


class CoordinatorRun:
    """One in-process coordinator instance; records when inputs were processed and join latencies."""

    def __init__(self, platform: PlatformSettings) -> None:
        self.latencies: list[float] = []
        cfg = CoordinatorSettings()
        self.app, self.proc = build_app(platform, cfg, service="coordinator",
                                        latency_observer=lambda _t, s: self.latencies.append(s))
        self.first: float | None = None
        self.committed_inputs = 0
        self.last_commit = 0.0
        inner_process = self.proc.process
        inner_committed = self.proc.batch_committed

        def process(record: Any, ctx: Any) -> None:
            if self.first is None:
                self.first = time.perf_counter()
            inner_process(record, ctx)

        def committed() -> None:
            inner_committed()
            self.committed_inputs = self.proc.inputs_processed
            self.last_commit = time.perf_counter()

        self.proc.process = process  # type: ignore[method-assign]
        self.app.on_batch_committed = committed
        self.stop = threading.Event()
        self.health = Health("coordinator")
        self.thread = threading.Thread(target=self.app.run, args=(self.stop, self.health), daemon=True)

    def start(self) -> None:
        self.thread.start()

    def wait_inputs(self, n: int, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while self.committed_inputs < n and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.committed_inputs < n:
            raise RuntimeError(f"coordinator committed {self.committed_inputs} of {n} inputs in {timeout}s")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(60)


# ------------------------------------------------------------------------------ the plain anchor


class PlainLoop:
    """consume batch -> begin txn -> decode+validate each (same serde) -> encode+produce one record per
    input to a mirror topic -> offsets into the txn -> commit. No join, no state."""

    def __init__(self, platform: PlatformSettings, group: str) -> None:
        self.platform = platform
        self.cat = TopicCatalogue(platform)
        self.serdes = Serdes(platform, self.cat)
        mirror = platform.replace(topic_prefix=f"{platform.topic_prefix}mirror-")
        ensure_topics(mirror)
        register_schemas(mirror)
        self.out = Serdes(mirror, TopicCatalogue(mirror))
        self.group = group
        self.latencies: list[float] = []
        self.first: float | None = None
        self.done = 0
        self.last_commit = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        producer = Producer(producer_config(self.platform, **{"transactional.id": f"{self.group}-plain",
                                                              "transaction.timeout.ms": 15_000}))
        consumer = Consumer(consumer_config(self.platform, self.group))
        producer.init_transactions(60)
        consumer.subscribe([self.cat.name(t) for t in INPUTS])
        try:
            while not self.stop.is_set():
                msgs = [m for m in consumer.consume(500, 0.2) if m.error() is None]
                if not msgs:
                    continue
                if self.first is None:
                    self.first = time.perf_counter()
                producer.begin_transaction()
                stamps = []
                for m in msgs:
                    logical = self.cat.logical_of(m.topic() or "")
                    value = self.serdes.for_topic(logical).decode(m.value() or b"")
                    out = self.out.for_topic(logical)
                    producer.produce(out.topic, key=m.key(), value=out.encode(value),
                                     headers=[("content-type", out.content_type.encode())])
                    stamps.append(m.timestamp()[1])
                producer.send_offsets_to_transaction(consumer.position(consumer.assignment()),
                                                     consumer.consumer_group_metadata(), 30)
                producer.commit_transaction(60)
                now = time.time()
                self.latencies.extend(now - ts / 1000 for ts in stamps)
                self.done += len(msgs)
                self.last_commit = time.perf_counter()
        except KafkaException:
            raise
        finally:
            consumer.close()

    def start(self) -> None:
        self.thread.start()

    def wait_inputs(self, n: int, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while self.done < n and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.done < n:
            raise RuntimeError(f"plain loop committed {self.done} of {n} inputs in {timeout}s")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(60)


# ------------------------------------------------------------------------------ phases


def fresh_platform(tag: str) -> PlatformSettings:
    platform = settings.platform().replace(topic_prefix=f"bench{uuid.uuid4().hex[:6]}-{tag}-")
    ensure_topics(platform)
    register_schemas(platform)  # services never register schemas themselves
    return platform


def throughput(events: Sequence[Event], n_inputs: int, make: Callable[[PlatformSettings], Any],
               platform: PlatformSettings) -> tuple[float, Any]:
    runner = make(platform)
    runner.start()
    runner.wait_inputs(n_inputs)
    runner.close()
    assert runner.first is not None
    return n_inputs / (runner.last_commit - runner.first), runner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candles", type=int, default=2000, help="candles per series (2 series)")
    ap.add_argument("--live-steps", type=int, default=1000,
                    help="candle steps per series in the latency phase")
    ap.add_argument("--live-rate", type=float, default=100.0, help="events per second in the latency phase")
    args = ap.parse_args()

    btc = build_series("BTCUSDT-1m-2025-09-22_2025-09-25.csv", args.candles, seed=1)
    eth = build_series("ETHUSDT-1m-2025-09-22_2025-09-25.csv", args.candles, seed=2)
    events = merge_round_robin(btc.events, eth.events)
    n = len(events)

    # 1. throughput on a backlog (same topics read by both, separate groups)
    platform = fresh_platform("tp")
    produce(platform, events)
    coord_rate, coord = throughput(events, n, CoordinatorRun, platform)
    plain_rate, _ = throughput(events, n, lambda p: PlainLoop(p, f"{p.topic_prefix}plain"), platform)
    jobs = coord.proc.jobs_emitted
    print(f"throughput (backlog of {n} inputs: {args.candles} candles x 2 series, refs, pivots; "
          f"{jobs} jobs):")
    print(f"  coordinator {coord_rate:,.0f} input events/s ({jobs / n * coord_rate:,.0f} jobs/s); "
          f"anchor plain "
          f"consume-produce loop, same serde + transactions, {plain_rate:,.0f} events/s; ratio "
          f"{coord_rate / plain_rate:.2f}")
    print(f"  alignment timeouts {counter_total(metrics.ALIGNMENT_TIMEOUTS)}, late inputs "
          f"{sum(n for k, n in coord.proc.work_counts.items() if k.endswith('.late'))} "
          "(both 0: the replay was aligned without waiting out)")

    # 2. latency in live mode (coordinator up first, then paced input in real-time order)
    live = merge_round_robin(btc.events[: args.live_steps * 2], eth.events[: args.live_steps * 2])
    live_platform = fresh_platform("lat")
    run = CoordinatorRun(live_platform)
    run.start()
    while not run.health.ready:
        time.sleep(0.05)
    produce(live_platform, live, pace_s=1.0 / args.live_rate)
    run.wait_inputs(len(live))
    run.close()
    plain_platform = fresh_platform("latplain")
    plain = PlainLoop(plain_platform, f"{plain_platform.topic_prefix}plain")
    plain.start()
    time.sleep(3)  # joined the group
    produce(plain_platform, live, pace_s=1.0 / args.live_rate)
    plain.wait_inputs(len(live))
    plain.close()
    lat = run.latencies
    print(f"join latency (live, {len(live)} inputs at {args.live_rate:.0f}/s, {len(lat)} jobs): "
          f"p50 {percentile(lat, 0.5) * 1e3:.0f} ms, p99 {percentile(lat, 0.99) * 1e3:.0f} ms, "
          f"mean {statistics.fmean(lat) * 1e3:.0f} ms; anchor plain loop input->commit "
          f"p50 {percentile(plain.latencies, 0.5) * 1e3:.0f} ms, "
          f"p99 {percentile(plain.latencies, 0.99) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
