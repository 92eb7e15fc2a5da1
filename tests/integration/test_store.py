"""The DuckLake store on its real PostgreSQL catalog: exact window reads, de-duplicating appends,
a checksum that is the same in every process, and several writer and reader processes at once."""

from __future__ import annotations

import multiprocessing as mp
import random
from typing import Any

import numpy as np
import pytest

from reftrain.settings import PlatformSettings
from reftrain.store import Store
from reftrain.window import window_checksum
from tests.support import real_candles

pytestmark = pytest.mark.kafka  # needs the local stack's PostgreSQL

BTC = "BTCUSDT-1m-2025-09-22_2025-09-25.csv"


def test_window_read_returns_exactly_the_rows(platform: PlatformSettings) -> None:
    candles = real_candles(BTC, limit=1200)
    store = Store.from_settings(platform)
    assert store.append_candles(candles[:700]).inserted == 700
    res = store.append_candles(candles[600:])  # overlapping replay: de-duplicated
    assert (res.inserted, res.skipped_duplicates) == (500, 100)
    assert store.count_candles("BTCUSDT", "1m") == 1200
    start, end = candles[100]["open_time"], candles[699]["open_time"]
    w = store.read_range("BTCUSDT", "1m", start, end)
    assert len(w) == 600 and w.start == start and w.end == end
    expected = np.array([[c["open"], c["high"], c["low"], c["close"], c["volume"]] for c in candles[100:700]])
    assert np.array_equal(w.values, expected)
    assert np.array_equal(w.open_time, np.array([c["open_time"] for c in candles[100:700]]))
    last = store.read_last("BTCUSDT", "1m", 600, end=end)
    assert last.checksum() == w.checksum()
    assert store.last_open_time("BTCUSDT", "1m") == candles[-1]["open_time"]


def test_checksum_changes_with_any_value() -> None:
    t = np.arange(5, dtype=np.int64) * 60_000
    v = np.ones((5, 5))
    base = window_checksum(t, v)
    v2 = v.copy()
    v2[3, 2] = np.nextafter(1.0, 2.0)  # one ulp
    assert window_checksum(t, v2) != base
    assert window_checksum(t[:4], v[:4]) != base


def _read_checksum(settings: dict[str, Any], start: int, end: int, q: Any) -> None:
    store = Store.from_settings(PlatformSettings(**settings), create=False)
    q.put(store.read_range("BTCUSDT", "1m", start, end).checksum())


def test_checksum_is_the_same_in_another_process(platform: PlatformSettings) -> None:
    candles = real_candles(BTC, limit=600)
    store = Store.from_settings(platform)
    store.append_candles(candles)
    here = store.read_range("BTCUSDT", "1m", candles[0]["open_time"], candles[-1]["open_time"]).checksum()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_read_checksum, args=(platform.as_dict(), candles[0]["open_time"],
                                                 candles[-1]["open_time"], q))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert q.get(timeout=5) == here


def _writer(settings: dict[str, Any], symbol: str, candles: list[dict[str, Any]], q: Any) -> None:
    store = Store.from_settings(PlatformSettings(**settings), create=False)
    for i in range(0, len(candles), 50):
        store.append_candles([dict(c, symbol=symbol) for c in candles[i:i + 50]])  # type: ignore[misc]
    q.put(("writer", symbol, store.count_candles(symbol, "1m")))


def _reader(settings: dict[str, Any], rounds: int, q: Any) -> None:
    store = Store.from_settings(PlatformSettings(**settings), create=False)
    rng = random.Random(7)
    bad = 0
    for _ in range(rounds):
        w = store.read_last(rng.choice(["W1", "W2"]), "1m", 600)
        if len(w) > 1 and not np.all(np.diff(w.open_time) == 60_000):
            bad += 1
    q.put(("reader", bad, rounds))


def test_concurrent_writers_and_readers_in_separate_processes(platform: PlatformSettings) -> None:
    candles = real_candles(BTC, limit=1000)
    Store.from_settings(platform)  # creates the tables once
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    s = platform.as_dict()
    procs = [ctx.Process(target=_writer, args=(s, "W1", candles, q)),
             ctx.Process(target=_writer, args=(s, "W2", candles, q)),
             ctx.Process(target=_reader, args=(s, 30, q)),
             ctx.Process(target=_reader, args=(s, 30, q))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    results = [q.get(timeout=5) for _ in procs]
    writers = sorted(r for r in results if r[0] == "writer")
    assert writers == [("writer", "W1", 1000), ("writer", "W2", 1000)]
    assert all(r[1] == 0 for r in results if r[0] == "reader")  # windows always contiguous, never torn
