"""Pivots throughput, in candles per second, with its anchor (same run, same topic, same data):

1. the detector alone (PivotDetector.feed over real candles, in memory);
2. the pivots service's stream app (StreamApp + one store write per transaction + changelog state, real
   broker, registry and PostgreSQL-catalog store), reading the candles topic from the start;
3. anchor: a plain consume-and-produce loop on the same topic, same consumer/producer settings,
   same serde (strict decode + validation, Avro encode), same transactions (one per consumed
   batch, offsets in the transaction), producing one record per candle and doing nothing else.
   The ratio service / plain is the price of pivot logic, state and the store write.
Optional 4 (--per-record N): the service writing the store after every candle that confirms
pivots (transactions of 20 candles), the design the per-transaction end_batch write replaces.

Service and plain loop are timed from their first consumed record to the commit that covers the
last one (group join and state restore excluded, as they are the same fixed cost for both).
Needs the local stack (make up). Run: .venv/bin/python bench/bench_pivots.py
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ops.fixtures.support import ensure_topics, produce_records, real_candles, register_schemas, scratch_platform
from reftrain import settings
from reftrain.observability import Health
from reftrain.records import Candle
from reftrain.serde import AvroSerde, registry_client
from reftrain.settings import PlatformSettings, kafka_client_config
from reftrain.store import Store
from reftrain.streams import Record, Serdes, StreamApp, consumer_config, producer_config
from reftrain.topics import CANDLES, TopicCatalogue
from services.pivots import metrics
from services.pivots.detector import PivotDetector
from services.pivots.processor import PivotProcessor
from services.pivots.settings import PivotSettings
from services.pivots.streaming import build_app

FILES = ("BTCUSDT-1m-2025-09-22_2025-09-25.csv", "ETHUSDT-1m-2025-09-22_2025-09-25.csv",
         "BTCUSDT-1m-2025-10-29_2025-11-01.csv", "ETHUSDT-1m-2025-10-29_2025-11-01.csv")


def load(files: tuple[str, ...], per_file: int | None) -> list[Candle]:
    """Real candles of several series, interleaved as a live feed would deliver them. The two
    windows of one symbol are two series here (suffix B), so their times do not overlap in one."""
    feeds = []
    for i, f in enumerate(files):
        sym = f.split("-")[0] + ("B" if i >= 2 else "")
        feeds.append(real_candles(f, symbol=sym, limit=per_file))
    out: list[Candle] = []
    for j in range(max(len(f) for f in feeds)):
        out.extend(f[j] for f in feeds if j < len(f))
    return out


def bench_detector(candles: list[Candle], repeat: int = 3) -> float:
    best = 0.0
    for _ in range(repeat):
        dets: dict[tuple[str, str], PivotDetector] = {}
        t0 = time.perf_counter()
        for c in candles:
            key = (c["symbol"], c["timeframe"])
            det = dets.get(key)
            if det is None:
                det = dets[key] = PivotDetector(c["symbol"], c["timeframe"])
            det.feed(c)
        best = max(best, len(candles) / (time.perf_counter() - t0))
    return best


def bench_plain(platform: PlatformSettings, n: int, batch_size: int) -> float:
    """Consume candles, decode (strict + validate), encode each to an output topic, one transaction
    per batch with the offsets in it: the minimum any exactly-once Python processor pays."""
    cat = TopicCatalogue(platform)
    out_topic = f"{platform.topic_prefix}bench-plain-out"
    admin = AdminClient(kafka_client_config(platform))
    for fut in admin.create_topics([NewTopic(out_topic, platform.topic_partitions,
                                             platform.topic_replication)]).values():
        fut.result()
    client = registry_client(platform.schema_registry_url)
    decode = Serdes(platform, cat).for_topic(CANDLES)
    encode = AvroSerde(client, out_topic, "reftrain.Candle", auto_register=True)  # a scratch topic
    group = f"{platform.topic_prefix}bench-plain"
    producer = Producer(producer_config(platform, **{"transactional.id": f"{group}-0",
                                                     "transaction.timeout.ms": 15_000}))
    consumer = Consumer(consumer_config(platform, group))
    producer.init_transactions(60)
    consumer.subscribe([cat.name(CANDLES)])
    seen, t0 = 0, 0.0
    try:
        while seen < n:
            msgs = consumer.consume(batch_size, 0.2)
            if not msgs:
                continue
            if not t0:
                t0 = time.perf_counter()
            producer.begin_transaction()
            for m in msgs:
                if m.error():
                    continue
                value = decode.decode(m.value() or b"")
                producer.produce(out_topic, key=m.key(), value=encode.encode(value),
                                 headers=[("content-type", encode.content_type.encode())])
                seen += 1
            producer.send_offsets_to_transaction(consumer.position(consumer.assignment()),
                                                 consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(60)
        return n / (time.perf_counter() - t0)
    finally:
        consumer.close()


def _hist_count(hist: Any) -> int:
    return int(sum(s.value for m in hist.collect() for s in m.samples if s.name.endswith("_count")))


def bench_service(platform: PlatformSettings, n: int, batch_size: int,
                  per_record: bool = False) -> tuple[float, int]:
    """The pivots stream app in-process (the code ``python -m services.pivots`` runs)."""
    store = Store.from_settings(platform)
    try:
        if per_record:  # plain StreamApp, flush after every candle
            processor = PivotProcessor(PivotSettings().strengths, store, flush_each_record=True)
            group = f"{platform.topic_prefix}pivots-per-record"
            app: StreamApp = StreamApp("pivots", platform, [CANDLES], group, processor, stateful=True,
                                       batch_size=batch_size)
        else:
            app, processor = build_app(platform, PivotSettings(batch_size=batch_size), store)
        stop = threading.Event()
        store_before = metrics.STORE_WRITE_SECONDS._sum.get()  # type: ignore[attr-defined]
        writes_before = _hist_count(metrics.STORE_WRITE_SECONDS)
        seen = 0
        t: dict[str, float] = {}
        process = processor.process

        def timed(record: Record, ctx: Any) -> None:
            nonlocal seen
            t.setdefault("first", time.perf_counter())
            seen += 1
            process(record, ctx)

        def committed() -> None:
            if seen >= n:
                t["last"] = time.perf_counter()
                stop.set()

        processor.process = timed  # type: ignore[method-assign]
        app.on_batch_committed = committed
        runner = threading.Thread(target=app.run, args=(stop, Health("bench")), daemon=True)
        runner.start()
        runner.join(1800)
        if "last" not in t:
            raise RuntimeError(f"service bench did not finish ({seen}/{n} candles)")
        pivots = int(store.query("SELECT count(*) FROM lake.pivots")[0][0])
        elapsed = t["last"] - t["first"]
        store_s = metrics.STORE_WRITE_SECONDS._sum.get() - store_before  # type: ignore[attr-defined]
        writes = _hist_count(metrics.STORE_WRITE_SECONDS) - writes_before
        mode = "per-candle" if per_record else "per-transaction"
        print(f"  [{mode} service: {elapsed:.2f} s, of which {writes} store writes {store_s:.2f} s "
              f"({100 * store_s / elapsed:.0f} %, {1000 * store_s / max(writes, 1):.0f} ms each)]")
        return n / elapsed, pivots
    finally:
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-file", type=int, default=None, help="candles per file (default: all, 4 x 4320)")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--per-record", type=int, default=0,
                    help="also time the flush-per-candle variant on this many candles (slow: one store "
                         "commit per candle that confirms a pivot)")
    args = ap.parse_args()

    with scratch_platform(settings.platform()) as platform:  # never the real store or topics
        candles = load(FILES, args.per_file)
        n = len(candles)
        ensure_topics(platform)
        register_schemas(platform)  # services never register schemas themselves
        t0 = time.perf_counter()
        produce_records(platform, CANDLES, [(f"{c['symbol']}:{c['timeframe']}", dict(c)) for c in candles])
        produced = n / (time.perf_counter() - t0)

        det = bench_detector(candles)
        plain = bench_plain(platform, n, args.batch_size)
        service, pivots = bench_service(platform, n, args.batch_size)
        load_avg = os.getloadavg()
        print(f"pivots bench: {n} real 1m candles, {len(FILES)} series, {pivots} pivots; "
              f"batch {args.batch_size}; {os.cpu_count()} cores, load {load_avg[0]:.1f}")
        print(f"  (producing the input: {produced:10,.0f} candles/s)")
        print(f"  detector alone:           {det:10,.0f} candles/s")
        print(f"  pivots service:           {service:10,.0f} candles/s")
        print(f"  anchor plain EOS loop:    {plain:10,.0f} candles/s")
        print(f"  ratio service / plain:    {service / plain:10.2f}")
        if args.per_record:
            m = min(args.per_record, n)
            # Small transactions: ~one store commit per 4 candles must fit in transaction.timeout.ms.
            slow, _ = bench_service(platform, m, 20, per_record=True)
            print(f"  service, store write per candle ({m} candles): {slow:,.0f} candles/s "
                  f"(one write per transaction is {service / slow:.1f}x faster)")


if __name__ == "__main__":
    main()
