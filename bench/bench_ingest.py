"""Ingest throughput: candles/s through the whole ingest path (parse, sequence, SMA/EMA, derive
5m/15m/1h, commit to the store, THEN produce with delivery confirmed) against the anchor: the raw
confluent-kafka producer sending the same Avro bytes (same keys, headers and producer settings),
measured in the same run. Also where ingest's time goes (store commit vs produce vs the rest).

Runs against the stack named by KAFKA_BOOTSTRAP_SERVERS / SCHEMA_REGISTRY_URL / STORE_CATALOG
(defaults: the local stack), on a random topic prefix and a fresh PostgreSQL catalog database
(dropped afterwards, with the topics).

    .venv/bin/python bench/bench_ingest.py [--rows 4320] [--batch 500]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from ops.fixtures.support import register_schemas, scratch_platform  # noqa: E402
from reftrain import settings  # noqa: E402
from reftrain.observability import Health  # noqa: E402
from reftrain.records import candle_series  # noqa: E402
from reftrain.settings import PlatformSettings, kafka_client_config  # noqa: E402
from reftrain.store import CANDLE_COLS, LAKE, Store  # noqa: E402
from reftrain.streams import Serdes, producer_config  # noqa: E402
from reftrain.topics import CANDLES, TopicCatalogue  # noqa: E402
from services.ingest import runner  # noqa: E402
from services.ingest.kafka_io import KafkaPublisher  # noqa: E402
from services.ingest.pipeline import Pipeline  # noqa: E402

FILES = ("BTCUSDT-1m-2025-09-22_2025-09-25.csv", "ETHUSDT-1m-2025-09-22_2025-09-25.csv")


def slice_files(tmp: Path, rows: int) -> list[str]:
    out = []
    for name in FILES:
        lines = (REPO / "data" / name).read_text().splitlines(keepends=True)
        path = tmp / name
        path.write_text("".join(lines[:1 + rows]))
        out.append(str(path))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=4320, help="1m rows per file (2 files; 4320 = 3 days)")
    ap.add_argument("--batch", type=int, default=500, help="candles per store commit")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    if not settings.platform().store_catalog.startswith("postgres:"):
        raise SystemExit("the bench needs a PostgreSQL catalog (STORE_CATALOG=postgres:...)")
    with scratch_platform(settings.platform(), "bench") as plat:
        run(plat, tmp, args)


def run(plat: PlatformSettings, tmp: Path, args: argparse.Namespace) -> None:
    register_schemas(plat)  # services never register schemas themselves
    admin = AdminClient(kafka_client_config(plat))
    cat = TopicCatalogue(plat)
    cat.ensure(admin)
    raw_topic = f"{plat.topic_prefix}raw-candles"
    admin.create_topics([NewTopic(raw_topic, plat.topic_partitions, plat.topic_replication)])[raw_topic].result()
    files = slice_files(tmp, args.rows)
    serde = Serdes(plat, cat).for_topic(CANDLES)
    store = Store.from_settings(plat)
    try:
        # 1. the ingest path, as the service runs it (minus process start-up)
        publisher = KafkaPublisher(plat, serde, cat.dlq(CANDLES))
        pipe = Pipeline(store, publisher, derive=("5m", "15m", "1h"), sma=(20, 50, 200), ema=(20, 50, 200),
                        batch=args.batch)
        t0 = time.perf_counter()
        runner.start(pipe, plat, serde, cat.dlq(CANDLES))
        t1 = time.perf_counter()
        runner.replay_files(pipe, files, stop=threading.Event(), health=Health("bench"))
        t2 = time.perf_counter()
        publisher.close()
        st = pipe.stats
        ingest_s = t2 - t1
        n = st.written

        # 2. the anchor: the same candles as Avro bytes, produced raw (same config, keys, headers)
        rows = store.query(f"SELECT {', '.join(CANDLE_COLS)} FROM {LAKE}.candles ORDER BY open_time, timeframe")
        candles = [dict(zip(CANDLE_COLS, r, strict=True)) for r in rows]
        assert len(candles) == n, (len(candles), n)
        e0 = time.perf_counter()
        encoded = [(candle_series(c).encode(), serde.encode(c)) for c in candles]  # type: ignore[arg-type]
        encode_s = time.perf_counter() - e0
        headers: list[tuple[str, str | bytes | None]] = [("content-type", serde.content_type.encode())]
        producer = Producer(producer_config(plat))
        r0 = time.perf_counter()
        for key, value in encoded:
            while True:
                try:
                    producer.produce(raw_topic, key=key, value=value, headers=headers)
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
        assert producer.flush(60) == 0
        raw_s = time.perf_counter() - r0
    finally:
        store.close()
        admin.delete_topics([raw_topic, *(s.name for s in cat.specs())])

    other = ingest_s - st.store_seconds - st.publish_seconds - st.seed_seconds
    ingest_rate, raw_rate = n / ingest_s, n / raw_s
    load = os.getloadavg()
    print(f"ingest bench: {2 * args.rows} 1m rows from 2 real files -> {n} candles "
          f"(1m + derived 5m/15m/1h), batch {args.batch}, {st.batches} commits, SMA/EMA 20/50/200")
    print(f"  machine: {os.cpu_count()} cores, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(f"  resume check at start-up (empty store/topic): {t1 - t0:8.3f} s")
    print(f"  ingest (store + Kafka):   {ingest_s:8.3f} s  {ingest_rate:10.0f} candles/s")
    print(f"  raw producer, same bytes: {raw_s:8.3f} s  {raw_rate:10.0f} candles/s  "
          f"(+ Avro encoding {encode_s:.3f} s = {n / (raw_s + encode_s):.0f} candles/s with encoding)")
    print(f"  ratio raw / ingest:       {raw_rate / ingest_rate:8.1f} x")
    print("  where ingest's time goes:")
    for name, secs in (("store commit (append_candles + indicators)", st.store_seconds),
                       ("produce + wait for delivery (incl. Avro encode)", st.publish_seconds),
                       ("seeding state from the store (restart only)", st.seed_seconds),
                       ("parse, sequence, indicators, aggregate", other)):
        print(f"    {name:48s} {secs:8.3f} s  {100 * secs / ingest_s:5.1f} %")
    print(f"  per commit: store {1000 * st.store_seconds / st.batches:.1f} ms, "
          f"publish {1000 * st.publish_seconds / st.batches:.1f} ms")


if __name__ == "__main__":
    main()
