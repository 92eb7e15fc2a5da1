"""The inference processor's ring buffers against the REAL DuckLake store, on real candles: for
every ref of the run, the window, its checksum and its norm params are exactly what the store holds
for the ref's range; the store is read only to seed a ring or to repair it after a gap; a series
too short to predict is read once. Also: ``read_last`` with a lower time bound returns what the
unbounded read returns when the bound leaves ``n`` rows, and fewer (never others) when it does not.
Drives the processor directly (no broker): the Kafka side is covered by test_inference_service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from reftrain.model import compute_norm_params
from reftrain.settings import PlatformSettings
from reftrain.store import Store
from reftrain.window import Window
from services.inference.models import ModelRegistry
from services.inference.processor import InferenceProcessor
from tests.support import real_candles
from tests.unit.inference.conftest import FakeCtx, candle_record

pytestmark = pytest.mark.kafka  # needs the stack's PostgreSQL catalog

BTC_1H = "BTCUSDT-1h-2017-08-17_2024-04-21.csv"
ETH = "ETHUSDT-1m-2025-09-22_2025-09-25.csv"
HOUR = 3_600_000


class CountingStore:
    """The real store, counting read_last calls (by end) on the way through."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.data_path = store.data_path
        self.reads: list[tuple[str, int | None]] = []

    def read_last(self, symbol: str, timeframe: str, n: int, end: int | None = None,
                  start: int | None = None) -> Window:
        self.reads.append((f"{symbol}:{timeframe}", end))
        return self.store.read_last(symbol, timeframe, n, end, start=start)

    def latest_model_version(self, model_key: str) -> dict[str, Any] | None:
        return self.store.latest_model_version(model_key)


def test_every_ref_of_a_run_equals_the_store_and_reads_only_seed_or_repair(
        platform: PlatformSettings, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    h1 = real_candles(BTC_1H, limit=7700)[7000:]  # real exchange gaps before rows 470, 495, 650
    short = real_candles(ETH, limit=300)  # never reaches a 600-row window
    gaps = [i for i in range(1, len(h1)) if h1[i]["open_time"] - h1[i - 1]["open_time"] != HOUR]
    assert gaps == [470, 495, 650]
    store = Store.from_settings(platform)
    try:
        store.append_candles(h1 + short)
        counting = CountingStore(store)
        proc = InferenceProcessor(counting, ModelRegistry(counting, torch.device("cpu")))
        ctx = FakeCtx()
        # one transaction = 50 candles of the 1h series and 21 of the short one, as ingest interleaves
        records = [candle_record(c, i) for i, c in enumerate(h1)]
        records_short = [candle_record(c, i) for i, c in enumerate(short)]
        for b in range(0, len(h1), 50):
            for rec in records[b:b + 50] + records_short[b * 21 // 50:(b + 50) * 21 // 50]:
                proc.process(rec, ctx)  # type: ignore[arg-type]
            proc.end_batch(ctx)  # type: ignore[arg-type]
        refs = ctx.refs()
        assert [r["data_range_end"] for r in refs] == [c["open_time"] for c in h1[599:]]

        blocks = store.read_ranges([(r["symbol"], r["timeframe"], r["data_range_start"], r["data_range_end"])
                                    for r in refs])
        for r in refs:
            w = blocks[(r["symbol"], r["timeframe"])].slice_range(r["data_range_start"], r["data_range_end"])
            assert len(w) == r["window_size"] == 600
            assert w.checksum() == r["window_checksum"]
            assert compute_norm_params(w) == r["norm_params"]
        direct = store.read_range("BTCUSDT", "1h", refs[-1]["data_range_start"], refs[-1]["data_range_end"])
        assert direct.checksum() == refs[-1]["window_checksum"]

        h1_ends = sorted({end or 0 for s, end in counting.reads if s == "BTCUSDT:1h"})
        batch_end = sorted({min(g // 50 * 50 + 49, len(h1) - 1) for g in gaps})
        assert h1_ends == [h1[i]["open_time"] for i in (49, *batch_end)]  # seed + one repair per gapped batch
        short_ends = {end for s, end in counting.reads if s == "ETHUSDT:1m"}
        assert len(short_ends) == 1  # the seed; 279 more candles waited without a read
    finally:
        store.close()


def test_read_last_with_a_lower_bound(platform: PlatformSettings) -> None:
    h1 = real_candles(BTC_1H, limit=800)  # a real 2-bar gap before row 493
    store = Store.from_settings(platform)
    try:
        store.append_candles(h1)
        end = h1[700]["open_time"]
        full = store.read_last("BTCUSDT", "1h", 600, end)
        enough = store.read_last("BTCUSDT", "1h", 600, end, start=end - 700 * HOUR)
        assert enough.checksum() == full.checksum() and len(full) == 600
        cut = store.read_last("BTCUSDT", "1h", 600, end, start=end - 599 * HOUR)  # the gap costs rows
        assert 0 < len(cut) < 600 and np.array_equal(cut.open_time, full.open_time[-len(cut):])
    finally:
        store.close()
