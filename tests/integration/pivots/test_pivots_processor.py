"""The pivots processor without a broker: per-transaction end_batch, store-before-emit, state
restore (and its refusal on new strengths), outcome handling. Fast; the real-broker proofs are in
test_pivots_service.py."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

import pytest

from reftrain.errors import InvalidRecordError, StoreError
from reftrain.records import Candle, Pivot
from reftrain.streams import Record, RestartSession
from reftrain.topics import PIVOTS
from services.pivots import metrics
from services.pivots.detector import PivotDetector, detect_pivots
from services.pivots.processor import PivotProcessor
from tests.support import real_candles

BTC = "BTCUSDT-1m-2025-09-22_2025-09-25.csv"
S = (2, 2, 2, 2, 2)


class FakeCtx:
    """Records emits and state writes; shares an event log with the store to check their order."""

    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log
        self.partition = -1
        self.emitted: list[tuple[str | None, dict[str, Any]]] = []
        self.state: dict[tuple[int, str], Any] = {}

    def emit(self, topic: str, key: str | None, value: dict[str, Any]) -> None:
        assert topic == PIVOTS
        self.emitted.append((key, value))
        self.log.append(("emit", value["pivot_id"]))

    def put_state(self, key: str, value: dict[str, Any] | None) -> None:
        self.state[(self.partition, key)] = json.loads(json.dumps(value))  # what the changelog holds


class FakeStore:
    def __init__(self, log: list[tuple[str, Any]], fail: bool = False) -> None:
        self.log = log
        self.fail = fail
        self.rows: dict[str, Pivot] = {}
        self.calls = 0

    def append_pivots(self, pivots: Sequence[Pivot]) -> int:
        self.calls += 1
        if self.fail:
            raise StoreError("catalog unavailable")
        new = [p for p in pivots if p["pivot_id"] not in self.rows]
        for p in pivots:
            self.log.append(("store", p["pivot_id"]))
            self.rows.setdefault(p["pivot_id"], p)
        return len(new)


def rec(c: Candle, offset: int, partition: int = 0, key: str | None = None) -> Record:
    return Record("candles", key or f"{c['symbol']}:{c['timeframe']}", dict(c), partition, offset, 0)


def run_batches(proc: PivotProcessor, ctx: FakeCtx, candles: Sequence[Candle], rng: random.Random,
                start: int = 0) -> None:
    """Feed in random-size 'transactions', calling end_batch after each, as StreamApp does."""
    i = 0
    while i < len(candles):
        n = rng.randint(1, 120)
        for j, c in enumerate(candles[i:i + n]):
            proc.process(rec(c, start + i + j), ctx)  # type: ignore[arg-type]
        proc.end_batch(ctx)  # type: ignore[arg-type]
        i += n


def test_batched_flush_equals_batch_and_stores_before_emitting() -> None:
    candles = real_candles(BTC, limit=1500)
    log: list[tuple[str, Any]] = []
    store, ctx = FakeStore(log), FakeCtx(log)
    proc = PivotProcessor(S, store)
    proc.assigned(0, {})
    run_batches(proc, ctx, candles, random.Random(1))
    expected = detect_pivots(candles, S)
    assert [v for _, v in ctx.emitted] == expected
    assert {k for k, _ in ctx.emitted} == {"BTCUSDT:1m"}
    assert set(store.rows) == {p["pivot_id"] for p in expected}
    assert store.calls < len(expected) / 3  # one store write per transaction, not per pivot
    first_store = {pid: i for i, (what, pid) in reversed(list(enumerate(log))) if what == "store"}
    assert all(first_store[pid] < i for i, (what, pid) in enumerate(log) if what == "emit")
    # The changelog holds the detector state after the last candle.
    saved = ctx.state[(0, "BTCUSDT:1m")]
    assert saved == proc.detector("BTCUSDT:1m").to_dict()  # type: ignore[union-attr]


def test_restored_state_continues_and_replay_of_an_aborted_batch_is_idempotent() -> None:
    candles = real_candles(BTC, limit=1200)
    log: list[tuple[str, Any]] = []
    store, ctx = FakeStore(log), FakeCtx(log)
    first = PivotProcessor(S, store)
    first.assigned(0, {})
    run_batches(first, ctx, candles[:700], random.Random(2))
    committed = {k[1]: v for k, v in ctx.state.items()}
    # Candles 700..799 are processed and stored, then the "transaction" aborts: nothing emitted.
    for j, c in enumerate(candles[700:800]):
        first.process(rec(c, 700 + j), ctx)  # type: ignore[arg-type]
    first._store.append_pivots([p.pivot for p in first._pending])  # the store write happened
    first.revoked(0)
    emitted_before = list(ctx.emitted)
    second = PivotProcessor(S, store)
    second.assigned(0, committed)
    run_batches(second, ctx, candles[700:], random.Random(3), start=700)
    expected = detect_pivots(candles, S)
    assert [v for _, v in ctx.emitted] == expected
    assert len(emitted_before) < len(expected)
    assert sorted(store.rows) == sorted(p["pivot_id"] for p in expected)


def test_restore_with_other_strengths_discards_the_state() -> None:
    candles = real_candles(BTC, limit=50)
    old = PivotDetector("BTCUSDT", "1m", (3, 3))
    for c in candles:
        old.feed(c)
    before = metrics.STATE_DISCARDED.labels("strengths_changed")._value.get()
    proc = PivotProcessor(S, FakeStore([]))
    proc.assigned(4, {"BTCUSDT:1m": old.to_dict(), "ETHUSDT:1m": {"version": 99}})
    assert proc.detector("BTCUSDT:1m") is None and proc.detector("ETHUSDT:1m") is None
    assert metrics.STATE_DISCARDED.labels("strengths_changed")._value.get() == before + 1
    same = PivotProcessor((3, 3), FakeStore([]))
    same.assigned(4, {"BTCUSDT:1m": old.to_dict()})
    assert same.detector("BTCUSDT:1m").to_dict() == old.to_dict()  # type: ignore[union-attr]


def test_duplicates_conflicts_and_late_candles_are_counted_and_make_no_pivots() -> None:
    candles = real_candles(BTC, limit=400)
    dirty: list[Candle] = []
    for i, c in enumerate(candles):
        dirty.append(c)
        if i % 7 == 3:
            dirty.append(dict(c, source="redelivery"))  # type: ignore[arg-type]
        if i % 11 == 5:
            dirty.append(dict(c, high=c["high"] * 1.05))  # type: ignore[arg-type]  # a late correction
        if i % 13 == 9 and i > 20:
            dirty.append(dict(candles[i - 10], low=c["low"] * 0.9))  # type: ignore[arg-type]  # late bar
    log: list[tuple[str, Any]] = []
    ctx = FakeCtx(log)
    proc = PivotProcessor(S, FakeStore(log), flush_each_record=True)
    proc.assigned(0, {})
    for i, c in enumerate(dirty):
        proc.process(rec(c, i), ctx)  # type: ignore[arg-type]
    assert [v for _, v in ctx.emitted] == detect_pivots(candles, S)
    counts = proc.detector("BTCUSDT:1m").counts  # type: ignore[union-attr]
    assert {o.value: n for o, n in counts.items()} == {
        "accepted": 400, "duplicate": len(range(3, 400, 7)), "conflict": len(range(5, 400, 11)),
        "out_of_order": len([i for i in range(9, 400, 13) if i > 20]), "invalid": 0}


def test_key_mismatch_is_invalid_and_store_failure_aborts() -> None:
    c = real_candles(BTC, limit=1)[0]
    proc = PivotProcessor(S, FakeStore([]))
    proc.assigned(0, {})
    with pytest.raises(InvalidRecordError) as err:
        proc.process(rec(c, 0, key="ETHUSDT:1m"), FakeCtx([]))  # type: ignore[arg-type]
    assert err.value.reason == "key_mismatch"
    log: list[tuple[str, Any]] = []
    ctx = FakeCtx(log)
    failing = PivotProcessor(S, FakeStore(log, fail=True))
    failing.assigned(0, {})
    for i, candle in enumerate(real_candles(BTC, limit=60)):
        failing.process(rec(candle, i), ctx)  # type: ignore[arg-type]
    with pytest.raises(RestartSession):
        failing.end_batch(ctx)  # type: ignore[arg-type]
    assert ctx.emitted == [] and ctx.state == {}
    failing.revoked(0)
    assert failing._pending == [] and failing._dirty == {}
