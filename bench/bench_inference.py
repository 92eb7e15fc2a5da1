"""Inference benchmarks, each printed with the anchor it is compared against (same run):

1. Size of an InferenceRef in the Avro wire format (registry schema id + body, what goes on
   ``inference-refs``) vs the 600-candle window it stands for: as 600 Avro Candle messages (what
   copying the window through Kafka would cost) and as raw float64 (open_time + OHLCV, 48 B a row).
2. Predictions per second of the model (``predict_batch``) with windows batched vs one call per
   window.
3. Refs per second through the service's processor (store read from memory, normalisation,
   prediction, ref building) when many series close at once: one transaction holding one candle of
   each series (predicted in one batch) vs one transaction per candle.
4. The window of a new candle from the ring buffer vs the DuckLake read it replaces (needs the
   stack: a scratch catalog).

Uses the local registry when it is up (make up) for exact wire sizes, else fastavro's schemaless
encoding plus the 5-byte wire header (identical sizes). Torch threads: 1 unless given (argv[1]);
on a shared 2-core box 1 is fastest. Run: .venv/bin/python bench/bench_inference.py [threads]
"""

from __future__ import annotations

import io
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ops.fixtures.support import real_candles
from reftrain import schemas, settings
from reftrain.model import init_model, predict_batch
from reftrain.model.adapter import TorchAdapter
from reftrain.records import Candle
from reftrain.window import COLUMNS, Window
from services.inference.models import ModelRegistry
from services.inference.processor import InferenceProcessor
from services.inference.refs import build_ref, model_input

FILES = ["BTCUSDT-1m-2025-09-22_2025-09-25.csv", "ETHUSDT-1m-2025-09-22_2025-09-25.csv",
         "BTCUSDT-1m-2025-10-29_2025-11-01.csv", "ETHUSDT-1m-2025-10-29_2025-11-01.csv"]
WINDOW = 600


def to_window(candles: list[Candle]) -> Window:
    return Window(candles[0]["symbol"], candles[0]["timeframe"],
                  np.array([c["open_time"] for c in candles], dtype=np.int64),
                  np.array([[c[k] for k in COLUMNS] for c in candles], dtype=np.float64))  # type: ignore[literal-required]


def wire_sizes(record: str, values: list[dict[str, Any]]) -> tuple[list[int], str]:
    """Wire-format sizes of ``values``: through the registry if it answers, else fastavro schemaless
    plus the 5-byte header (the same bytes: magic byte, schema id, Avro body)."""
    try:
        from reftrain.serde import AvroSerde, registry_client

        platform = settings.platform()
        serde = AvroSerde(registry_client(platform.schema_registry_url), f"bench-{uuid.uuid4().hex[:6]}-x", record,
                           auto_register=True)  # a scratch subject
        return [len(serde.encode(v)) for v in values], "registry wire format"
    except Exception as exc:
        parsed = schemas.parsed_plain(record)
        sizes = []
        for v in values:
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, parsed, v)
            sizes.append(5 + len(buf.getvalue()))
        return sizes, f"schemaless + 5-byte header; registry unavailable: {type(exc).__name__}"


def bench_sizes() -> None:
    candles = real_candles(FILES[0], limit=WINDOW)
    window = to_window(candles)
    adapter = TorchAdapter.create(0, "cpu")
    params, x = model_input(window, adapter)
    (prediction,) = adapter.predict(x[None], [params])
    ref = build_ref(window, params, prediction, "BTCUSDT:1m", 0, 60_000, 1, int(time.time() * 1000))
    (ref_bytes,), how = wire_sizes("reftrain.InferenceRef", [dict(ref)])
    candle_sizes, _ = wire_sizes("reftrain.Candle", [dict(c) for c in candles])
    avro_window = sum(candle_sizes)
    raw = window.open_time.nbytes + window.values.nbytes
    print(f"size ({how}): InferenceRef {ref_bytes} B; anchor the {WINDOW}-candle window as Avro Candles "
          f"{avro_window:,} B (ratio {avro_window / ref_bytes:.0f}x) and as raw float64 {raw:,} B "
          f"(ratio {raw / ref_bytes:.0f}x)")


def _best(fn: Callable[[], Any], repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_predict(n: int = 128) -> None:
    candles = real_candles(FILES[0])
    full = to_window(candles)
    adapter = TorchAdapter.create(0, "cpu")
    xs = np.stack([model_input(full.tail(len(full) - i * 7).tail(WINDOW), adapter)[1] for i in range(n)])
    model = init_model(0)
    predict_batch(model, xs[:2], "cpu")  # warm-up
    batched = _best(lambda: predict_batch(model, xs, "cpu"))
    single = _best(lambda: [predict_batch(model, xs[i:i + 1], "cpu") for i in range(n)])
    print(f"model: batched ({n} windows per call) {n / batched:,.0f} predictions/s; anchor one window per call "
          f"{n / single:,.0f} predictions/s; ratio {single / batched:.1f}x")


class _MemStore:
    def __init__(self, windows: dict[tuple[str, str], Window]) -> None:
        self.windows = windows
        self.data_path = "/nonexistent"

    def read_last(self, symbol: str, timeframe: str, n: int, end: int | None = None,
                  start: int | None = None) -> Window:
        w = self.windows[(symbol, timeframe)]
        hi = int(np.searchsorted(w.open_time, end if end is not None else 2**62, side="right"))
        lo = max(0, hi - n, int(np.searchsorted(w.open_time, start, side="left")) if start is not None else 0)
        return Window(symbol, timeframe, w.open_time[lo:hi], w.values[lo:hi])

    def latest_model_version(self, model_key: str) -> dict[str, Any] | None:
        return None


class _Ctx:
    def __init__(self) -> None:
        self.n = 0
        self.partition = 0
        self.now_ms = 0

    def emit(self, topic: str, key: str | None, value: dict[str, Any], headers: Any = ()) -> None:
        self.n += 1


def bench_processor(n_series: int = 32, rounds: int = 3) -> None:
    from reftrain.streams import Record
    from reftrain.topics import CANDLES

    series: dict[tuple[str, str], list[Candle]] = {}
    for i in range(n_series):
        base = real_candles(FILES[i % len(FILES)])[(i // len(FILES)) * 50:][:WINDOW + rounds]
        series[(f"S{i:02d}USDT", "1m")] = [dict(c, symbol=f"S{i:02d}USDT") for c in base]  # type: ignore[misc]
    store = _MemStore({k: to_window(v) for k, v in series.items()})

    def run(per_batch: bool) -> float:
        proc = InferenceProcessor(store, ModelRegistry(store, torch.device("cpu")))
        ctx = _Ctx()
        t0 = time.perf_counter()
        for r in range(rounds):  # each round: every series closes one candle at the same time
            for (sym, tf), cs in series.items():
                c = cs[WINDOW - 1 + r]
                proc.process(Record(CANDLES, f"{sym}:{tf}", dict(c), 0, 0, c["close_time"]), ctx)  # type: ignore[arg-type]
                if not per_batch:
                    proc.end_batch(ctx)  # type: ignore[arg-type]
            if per_batch:
                proc.end_batch(ctx)  # type: ignore[arg-type]
        elapsed = time.perf_counter() - t0
        assert ctx.n == rounds * n_series
        return elapsed

    run(True)  # warm-up
    together = min(run(True) for _ in range(5))
    alone = min(run(False) for _ in range(3))
    n = rounds * n_series
    print(f"processor: {n_series} series closing at once, one transaction each round (one predict batch) "
          f"{n / together:,.0f} refs/s; anchor one transaction per candle {n / alone:,.0f} refs/s; "
          f"ratio {alone / together:.1f}x")


def bench_ring_window(reads: int = 200, history: int = 4000) -> dict[str, float]:
    """4. The window of a new candle from the series' ring buffer (append + the last 600 rows) vs
    the store read it replaces (``read_last`` of 600 rows, lower-bounded as the processor does, and
    unbounded as before #16), on the real DuckLake store (a scratch catalog; needs the stack)."""
    from ops.fixtures.support import scratch_platform
    from reftrain.store import Store
    from services.inference.ring import SeriesRing

    candles = real_candles(FILES[0])[:history + reads]
    with scratch_platform(settings.platform()) as platform:
        store = Store.from_settings(platform)
        try:
            for i in range(0, len(candles), 1000):
                store.append_candles(candles[i:i + 1000])
            store.compact()
            ends = [c["open_time"] for c in candles[history:]]
            bounded, unbounded = [], []
            for end in ends:
                t0 = time.perf_counter()
                w = store.read_last("BTCUSDT", "1m", WINDOW, end, start=end - (WINDOW - 1 + 120) * 60_000)
                bounded.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                u = store.read_last("BTCUSDT", "1m", WINDOW, end)
                unbounded.append(time.perf_counter() - t0)
                assert len(w) == WINDOW and w.checksum() == u.checksum()
        finally:
            store.close()
    ring = SeriesRing("BTCUSDT", "1m", 60_000, WINDOW)
    ring.reset(to_window(candles[:history]))
    mem = []
    for c in candles[history:]:
        row = (c["open"], c["high"], c["low"], c["close"], c["volume"])
        t0 = time.perf_counter()
        ring.append(c["open_time"], row)
        win = ring.window()
        mem.append(time.perf_counter() - t0)
        assert win is not None and win.end == c["open_time"]
    assert win is not None and win.checksum() == w.checksum()  # same rows: memory, store

    def pct(xs: list[float], q: float) -> float:
        return sorted(xs)[int(q * (len(xs) - 1))]

    out = {"ring_p50_ms": pct(mem, 0.5) * 1e3, "ring_p99_ms": pct(mem, 0.99) * 1e3,
           "store_bounded_p50_ms": pct(bounded, 0.5) * 1e3, "store_bounded_p99_ms": pct(bounded, 0.99) * 1e3,
           "store_unbounded_p50_ms": pct(unbounded, 0.5) * 1e3, "store_unbounded_p99_ms": pct(unbounded, 0.99) * 1e3}
    print(f"window of a new candle ({WINDOW} rows, {history + reads} stored): ring buffer p50 "
          f"{out['ring_p50_ms'] * 1e3:.1f} us p99 {out['ring_p99_ms'] * 1e3:.1f} us; anchor the store read it "
          f"replaces, bounded p50 {out['store_bounded_p50_ms']:.2f} ms p99 {out['store_bounded_p99_ms']:.2f} ms "
          f"(unbounded p50 {out['store_unbounded_p50_ms']:.2f} ms p99 {out['store_unbounded_p99_ms']:.2f} ms); "
          f"ratio p99 store/ring {out['store_bounded_p99_ms'] / out['ring_p99_ms']:,.0f}x")
    return out


if __name__ == "__main__":
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    torch.set_num_threads(threads)
    print(f"torch {torch.__version__}, {threads} intra-op thread(s), CPU")
    bench_sizes()
    bench_predict()
    bench_processor()
    bench_ring_window()
