"""Platform benchmarks, each printed with the anchor it is compared against (same run):

1. Avro encode+decode of a real Candle through reftrain's wire-format serde (registry schema id,
   strict decode, validation) vs plain fastavro schemaless encode+decode of the same record.
2. A 600-row window read through DuckLake (PostgreSQL catalog) vs a slice of the same rows held
   in an in-memory numpy array.

Needs the local stack (make up). Run: .venv/bin/python bench/bench_platform.py
"""

from __future__ import annotations

import io
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import fastavro

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ops.fixtures.support import real_candles, scratch_platform
from reftrain import schemas, settings
from reftrain.serde import AvroSerde, registry_client
from reftrain.store import Store


def bench_serde(n: int = 20_000) -> None:
    platform = settings.platform()
    candles = real_candles("BTCUSDT-1m-2025-09-22_2025-09-25.csv", limit=2000)
    serde = AvroSerde(registry_client(platform.schema_registry_url), f"bench-{uuid.uuid4().hex[:6]}-candles",
                      "reftrain.Candle", auto_register=True)  # a scratch subject: services never register
    records: list[dict[str, Any]] = [dict(c) for c in candles]
    serde.decode(serde.encode(records[0]))  # register + warm caches
    t0 = time.perf_counter()
    for i in range(n):
        serde.decode(serde.encode(records[i % len(records)]))
    ours = n / (time.perf_counter() - t0)
    parsed = schemas.parsed_plain("reftrain.Candle")
    t0 = time.perf_counter()
    for i in range(n):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, candles[i % len(candles)])
        buf.seek(0)
        fastavro.schemaless_reader(buf, parsed)
    plain = n / (time.perf_counter() - t0)
    print(f"serde: reftrain wire-format encode+decode {ours:,.0f} candles/s; anchor plain fastavro "
          f"schemaless {plain:,.0f} candles/s; ratio {ours / plain:.2f}")


def bench_window(reads: int = 100) -> None:
    with scratch_platform(settings.platform()) as platform:  # a new catalog: never anyone's data
        store = Store.from_settings(platform)
        try:
            _bench_window(store, reads)
        finally:
            store.close()


def _bench_window(store: Store, reads: int) -> None:
    candles = real_candles("BTCUSDT-1m-2025-09-22_2025-09-25.csv")
    for i in range(0, len(candles), 1000):
        store.append_candles(candles[i:i + 1000])
    store.compact()
    full = store.read_range("BTCUSDT", "1m", candles[0]["open_time"], candles[-1]["open_time"])
    starts = [candles[i]["open_time"] for i in range(0, len(candles) - 600, 7)][:reads]
    lat = []
    for s in starts:
        t0 = time.perf_counter()
        w = store.read_range("BTCUSDT", "1m", s, s + 599 * 60_000)
        lat.append(time.perf_counter() - t0)
        assert len(w) == 600
    mem = []
    for s in starts:
        t0 = time.perf_counter()
        w = full.slice_range(s, s + 599 * 60_000)
        mem.append(time.perf_counter() - t0)
        assert len(w) == 600
    p50, p50m = statistics.median(lat), statistics.median(mem)
    p99 = sorted(lat)[int(0.99 * (len(lat) - 1))]
    print(f"window read (600 rows of {len(candles)}): DuckLake p50 {p50 * 1e3:.2f} ms p99 {p99 * 1e3:.2f} ms; "
          f"anchor in-memory numpy slice p50 {p50m * 1e6:.1f} us; ratio {p50 / p50m:,.0f}x")


if __name__ == "__main__":
    bench_serde()
    bench_window()
