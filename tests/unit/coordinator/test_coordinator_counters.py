"""The coordinator's join counters are state (issue #15, item 5): restored with the changelog, counted
per committed transaction, so a crash (kill -9: uncommitted work lost) neither loses nor repeats a
count. Pure unit test: the processor with an in-memory context and changelog (no Kafka); the same
property against the real broker is in tests/integration/coordinator (kill -9 test)."""

from __future__ import annotations

import json
from typing import Any, cast

from prometheus_client import generate_latest

from reftrain.streams import Context, Record
from reftrain.topics import CANDLES, INFERENCE_REFS, PIVOTS
from services.coordinator import metrics
from services.coordinator.join_config import JoinConfig
from services.coordinator.processor import CoordinatorProcessor
from tests.unit.coordinator.test_coordinator_join import make_candle, make_pivot, make_ref, t

CFG = JoinConfig(pivot_window_ms=120_000, max_pivot_confirmation_bars=3, max_lag_bars=2, hot_retention_bars=0)


class FakeContext:
    """Context.emit / put_state into lists; ``commit`` makes the transaction's state durable."""

    def __init__(self) -> None:
        self.partition = -1
        self.now_ms = 1
        self.emitted: list[dict[str, Any]] = []
        self.open: list[tuple[int, str, str | None]] = []
        self.changelog: list[tuple[int, str, str | None]] = []  # committed (partition, key, JSON)

    def emit(self, logical_topic: str, key: str | None, value: dict[str, Any]) -> None:
        self.emitted.append(value)

    def put_state(self, key: str, value: dict[str, Any] | None) -> None:
        self.open.append((self.partition, key, None if value is None else json.dumps(value)))

    def commit(self) -> None:
        self.changelog += self.open
        self.open = []

    def restored(self, partition: int) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for p, key, value in self.changelog:
            if p == partition:
                if value is None:
                    state.pop(key, None)
                else:
                    state[key] = json.loads(value)
        return state


def inputs() -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for i in range(12):
        out.append((CANDLES, cast(dict[str, Any], make_candle("BTCUSDT", "1m", t(i)))))
        out.append((INFERENCE_REFS, cast(dict[str, Any], make_ref("BTCUSDT", "1m", t(i), t(i + 1)))))
        if i == 6:  # confirmed after the refs near it left the hot state (H = 0): archive join
            out.append((PIVOTS, cast(dict[str, Any], make_pivot("BTCUSDT", "1m", t(3), t(6), level=3))))
    out.append((INFERENCE_REFS, cast(dict[str, Any], make_ref("BTCUSDT", "1m", t(11), t(12)))))  # duplicate
    return out


def feed(proc: CoordinatorProcessor, ctx: FakeContext, items: list[tuple[str, dict[str, Any]]],
         offset: int) -> None:
    for n, (topic, value) in enumerate(items):
        proc.process(Record(topic, "BTCUSDT:1m", value, 0, offset + n, 0), cast(Context, ctx))


def test_counts_survive_a_crash_exactly_once_and_are_exported() -> None:
    items = inputs()
    ctx = FakeContext()
    a = CoordinatorProcessor(CFG)
    a.assigned(0, {})
    feed(a, ctx, items[:20], 0)  # transaction 1: committed
    a.end_batch(cast(Context, ctx))
    ctx.commit()
    a.batch_committed()
    feed(a, ctx, items[20:30], 20)  # transaction 2: the process dies before its commit (kill -9)
    a.end_batch(cast(Context, ctx))
    uncommitted = a.work_counts.total()
    del a

    b = CoordinatorProcessor(CFG)  # the restarted instance: state and counts from the changelog
    b.assigned(0, ctx.restored(0))
    assert b.committed_counts().total() < uncommitted  # transaction 2's counts were not committed
    feed(b, ctx, items[20:], 20)  # redelivered from the committed offset
    b.end_batch(cast(Context, ctx))
    ctx.commit()
    b.batch_committed()

    once = CoordinatorProcessor(CFG)  # the same inputs without a crash
    clean = FakeContext()
    once.assigned(0, {})
    feed(once, clean, items, 0)
    once.end_batch(cast(Context, clean))
    clean.commit()
    once.batch_committed()
    got, want = b.committed_counts(), once.committed_counts()
    assert got == want
    assert got["ref.accepted"] == 12 and got["ref.duplicate"] == 1 and got["candle.accepted"] == 12
    assert got["pivot.archive_joins"] > 0 and got["ref.archived"] > 0
    assert got["ref.accepted"] == got["ref.expired.joined"] + got["ref.expired.no_target_candle"] + \
        b.engines[0].pending_refs
    # Exported as the counters the report reads (this process holds b and once: their sum).
    text = generate_latest().decode()
    line = 'reftrain_coordinator_inputs_total{kind="ref",outcome="accepted"} '
    exported = next(float(x[len(line):]) for x in text.splitlines() if x.startswith(line))
    assert exported == metrics.COMMITTED.totals()["ref.accepted"] >= 24
    b.revoked(0)
    once.revoked(0)
    assert metrics.COMMITTED.totals()["ref.accepted"] == 0  # a revoked partition's counts leave with it
