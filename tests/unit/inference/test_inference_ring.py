"""The per-series ring buffer (services/inference/ring.py) and the processor's use of it, on real
candles: every ref's window, checksum and norm params equal what the store holds for its range; the
store is read only to seed a ring or to repair it (a gap, a late back-fill, a restart); a series
whose history is too short is read once, not on every batch; windows handed out never change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from reftrain.model import compute_norm_params
from reftrain.records import Candle
from services.inference import metrics
from services.inference.models import ModelRegistry
from services.inference.processor import InferenceProcessor
from services.inference.ring import SeriesRing
from tests.support import real_candles
from tests.unit.inference.conftest import BTC_1H, FakeCtx, MemStore, candle_record, to_window

HOUR = 3_600_000
MIN = 60_000


def make(store: MemStore, **kw: Any) -> InferenceProcessor:
    return InferenceProcessor(store, ModelRegistry(store, torch.device("cpu")), **kw)


def run_batches(proc: InferenceProcessor, candles: list[Candle], batch: int, ctx: FakeCtx | None = None) -> FakeCtx:
    ctx = ctx or FakeCtx()
    records = [candle_record(c, i) for i, c in enumerate(candles)]
    for i in range(0, len(records), batch):
        for r in records[i:i + batch]:
            proc.process(r, ctx)  # type: ignore[arg-type]
        proc.end_batch(ctx)  # type: ignore[arg-type]
    return ctx


def store_window_of(store: MemStore, ref: dict[str, Any]) -> Any:
    rows = store.rows[(ref["symbol"], ref["timeframe"])]
    times = sorted(t for t in rows if ref["data_range_start"] <= t <= ref["data_range_end"])
    return to_window([rows[t] for t in times])


def assert_refs_equal_the_store(store: MemStore, refs: list[dict[str, Any]]) -> None:
    for r in refs:
        w = store_window_of(store, r)
        assert len(w) == r["window_size"] == 600
        assert w.checksum() == r["window_checksum"]
        assert compute_norm_params(w) == r["norm_params"]


# -- the ring alone ------------------------------------------------------------------------------
def test_ring_appends_only_the_next_bar_and_gives_the_last_window_size_rows(btc: list[Candle]) -> None:
    w = to_window(btc[:700])
    ring = SeriesRing("BTCUSDT", "1m", MIN, 600, capacity=650)
    assert ring.window() is None and not ring.follows(btc[0]["open_time"])
    ring.reset(to_window(btc[:10]))
    assert len(ring) == 10 and ring.end == btc[9]["open_time"] and ring.window() is None  # whole, short history
    with pytest.raises(ValueError, match="does not follow"):
        ring.append(btc[11]["open_time"], tuple(w.values[11]))
    for i in range(10, 700):
        assert ring.follows(btc[i]["open_time"])
        ring.append(btc[i]["open_time"], tuple(w.values[i]))
        got = ring.window()
        if i < 599:
            assert got is None
        else:
            assert got is not None and got.checksum() == w.slice_range(btc[i - 599]["open_time"],
                                                                        btc[i]["open_time"]).checksum()
    assert 600 <= len(ring) <= 650  # trimmed, never below one window


def test_windows_handed_out_never_change_across_appends_trims_and_resets(btc: list[Candle]) -> None:
    w = to_window(btc)
    ring = SeriesRing("BTCUSDT", "1m", MIN, 600, capacity=601)
    ring.reset(w.tail(1000).slice_range(btc[0]["open_time"], btc[599]["open_time"]))
    taken = []
    for i in range(600, 640):  # capacity 601: a trim (new arrays) on almost every append
        ring.append(btc[i]["open_time"], tuple(w.values[i]))
        got = ring.window()
        assert got is not None
        taken.append((got, got.checksum()))
    ring.reset(w.tail(700))
    assert all(win.checksum() == sum_ for win, sum_ in taken)


# -- the processor with its rings ---------------------------------------------------------------------
def test_every_ref_equals_the_store_and_the_store_is_read_only_to_seed_or_repair_a_gap(tmp_path: Path) -> None:
    """BTCUSDT 1h, rows 7000..7699: real exchange gaps before relative rows 470 and 495 (while the
    series still waits for history) and 650 (while it predicts). Batches of 37: gaps inside batches."""
    h1 = real_candles(BTC_1H, limit=7700)[7000:]
    gaps = [i for i in range(1, len(h1)) if h1[i]["open_time"] - h1[i - 1]["open_time"] != HOUR]
    assert gaps == [470, 495, 650]
    store = MemStore(tmp_path, h1)
    memory = metrics.WINDOWS_TOTAL.labels("memory")._value.get()
    refs = run_batches(make(store), h1, batch=37).refs()
    assert [r["data_range_end"] for r in refs] == [c["open_time"] for c in h1[599:]]
    assert_refs_equal_the_store(store, refs)
    # reads: the seed (batch 0) and one repair per gap, each up to the end of its batch (a read
    # that finds fewer rows than asked is repeated without the lower bound)
    batch_end = {g: g // 37 * 37 + 36 for g in gaps}
    assert sorted({end or 0 for _, _, _, end in store.reads}) == [h1[i]["open_time"] for i in (36, *batch_end.values())]
    assert len(store.reads) <= 2 * (1 + len(gaps))
    served_by_store = 37 + sum(e - g + 1 for g, e in batch_end.items())
    assert metrics.WINDOWS_TOTAL.labels("memory")._value.get() - memory == len(h1) - served_by_store


def test_a_series_too_short_to_predict_is_read_once_not_every_batch(tmp_path: Path, eth: list[Candle]) -> None:
    store = MemStore(tmp_path, eth[:300])
    waiting = metrics.WAITING_FOR_HISTORY.labels("ETHUSDT:1m")._value.get()
    refs = run_batches(make(store), eth[:300], batch=10).refs()
    assert refs == []
    assert metrics.WAITING_FOR_HISTORY.labels("ETHUSDT:1m")._value.get() - waiting == 300
    assert {end for _, _, _, end in store.reads} == {eth[9]["open_time"]}  # the seed, nothing after


def test_a_late_back_fill_repairs_the_ring(tmp_path: Path, btc: list[Candle]) -> None:
    """Row 650 is held back (synthetic: the real file has no gap there; this needs a bar that
    arrives late), then back-filled into the store and published late: later windows include it,
    exactly as a store read would."""
    held = btc[650]
    first = btc[:650] + btc[651:700]
    store = MemStore(tmp_path, first)
    proc = make(store)
    before = run_batches(proc, first, batch=25).refs()
    assert_refs_equal_the_store(store, before)  # the store as it was when they were made
    store.add([held, *btc[700:760]])
    late = metrics.CANDLES_TOTAL.labels("out_of_order")._value.get()
    after = run_batches(proc, [held, *btc[700:760]], batch=25).refs()
    assert metrics.CANDLES_TOTAL.labels("out_of_order")._value.get() == late + 1
    assert [r["data_range_end"] for r in before + after] == [c["open_time"] for c in btc[599:650] + btc[651:760]]
    assert_refs_equal_the_store(store, after)
    assert all(r["data_range_start"] <= held["open_time"] for r in after[:5])
    assert all(r["data_range_end"] - r["data_range_start"] == 599 * MIN for r in after)  # no gap any more


def test_revocation_and_a_failed_batch_drop_the_rings(tmp_path: Path, btc: list[Candle]) -> None:
    store = MemStore(tmp_path, btc[:700])
    proc = make(store)
    ctx = run_batches(proc, btc[:650], batch=50)
    n = len(store.reads)
    run_batches(proc, btc[650:660], batch=10, ctx=ctx)
    assert len(store.reads) == n  # from memory
    proc.revoked(0)
    run_batches(proc, btc[660:670], batch=10, ctx=ctx)
    assert len(store.reads) > n  # re-seeded after the assignment changed
    n = len(store.reads)
    store.fail = True
    with pytest.raises(Exception, match="store"):
        run_batches(proc, btc[670:671] + btc[672:673], batch=10, ctx=ctx)  # a gap: needs the store
    store.fail = False
    proc.revoked(0)
    refs = run_batches(proc, btc[670:700], batch=10, ctx=ctx).refs()
    assert_refs_equal_the_store(store, refs)
    assert [r["data_range_end"] for r in refs] == [c["open_time"] for c in btc[599:700]]
    assert np.all(np.diff([r["data_range_end"] for r in refs]) == MIN)
