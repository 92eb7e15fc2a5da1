"""``python -m services.pivots`` against the real broker, registry and store, on real 1m candles.

Proves: the ``pivots`` topic (read_committed) and the store's ``pivots`` table hold exactly what the
batch ``detect_pivots`` gives for each series (ids, order, times), with two series interleaved and
dirty input (redeliveries, late corrections, late bars, an invalid candle, a mis-keyed candle);
kill -9 mid-stream several times and restarting leaves each pivot on the topic exactly once;
/metrics shows the counters; SIGTERM exits 0.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition

from reftrain.records import Candle, Pivot
from reftrain.settings import PlatformSettings
from reftrain.store import Store
from reftrain.streams import consumer_config
from reftrain.topics import CANDLES, PIVOTS, TopicCatalogue
from services.pivots.detector import detect_pivots
from services.pivots.spec import SPEC as PIVOTS_SPEC
from tests.support import (
    consume_all,
    decode_all,
    ensure_topics,
    free_port,
    metric,
    produce_records,
    real_candles,
    scrape,
    start_service,
    stop_gracefully,
)

pytestmark = pytest.mark.kafka

BTC_SEP = "BTCUSDT-1m-2025-09-22_2025-09-25.csv"
ETH_SEP = "ETHUSDT-1m-2025-09-22_2025-09-25.csv"
BTC_OCT = "BTCUSDT-1m-2025-10-29_2025-11-01.csv"
ETH_OCT = "ETHUSDT-1m-2025-10-29_2025-11-01.csv"
PIVOT_COLS = ("pivot_id", "symbol", "timeframe", "level", "kind", "pivot_time", "price", "confirmed_at",
              "strength")


# -- helpers ----------------------------------------------------------------------------------------
def series(c: Candle | Pivot) -> str:
    return f"{c['symbol']}:{c['timeframe']}"


def wait_for(cond: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None,
             interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"service exited with {proc.returncode} while waiting for {what}")
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def start(platform_env: dict[str, str], log: Path, **extra: str) -> tuple[subprocess.Popen[bytes], int]:
    """The service with a known HTTP port and a stable INSTANCE_ID (a restart fences its predecessor)."""
    port = free_port()
    env = {"HTTP_PORT": str(port), "INSTANCE_ID": "pivots-0", "LOG_LEVEL": "INFO", **extra}
    return start_service("services.pivots", platform_env, env, log_path=log), port


def read_pivots(platform: PlatformSettings) -> list[Pivot]:
    """Everything on the pivots topic (read_committed), until 3 s without a message."""
    msgs = consume_all(platform, TopicCatalogue(platform).name(PIVOTS), timeout=120, idle=3.0)
    return decode_all(platform, PIVOTS, msgs)  # type: ignore[return-value]


def by_series(pivots: list[Pivot]) -> dict[str, list[Pivot]]:
    out: dict[str, list[Pivot]] = defaultdict(list)
    for p in pivots:
        out[series(p)].append(p)
    return dict(out)


def store_pivots(platform: PlatformSettings) -> list[dict[str, Any]]:
    store = Store.from_settings(platform, create=False)
    try:
        rows = store.query(f"SELECT {', '.join(PIVOT_COLS)} FROM lake.pivots ORDER BY pivot_id")
    finally:
        store.close()
    return [dict(zip(PIVOT_COLS, r, strict=True)) for r in rows]


def committed_everything(platform: PlatformSettings) -> bool:
    """The service's group has committed offsets at the end of every candles partition. (The offset
    fetch waits for a pending transactional commit, KIP-447: call it while the service runs, not
    right after a kill -9, whose open transaction only ends when a new instance fences it.)"""
    topic = TopicCatalogue(platform).name(CANDLES)
    c = Consumer(consumer_config(platform, PIVOTS_SPEC.group(platform.topic_prefix)))
    try:
        parts = [TopicPartition(topic, p) for p in c.list_topics(topic, timeout=10).topics[topic].partitions]
        for tp in c.committed(parts, timeout=10):
            _, hi = c.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
            if hi > 0 and tp.offset < hi:
                return False
        return True
    except KafkaException:
        return False
    finally:
        c.close()


def assert_matches_batch(got: list[Pivot], clean: dict[str, list[Candle]],
                         platform: PlatformSettings) -> None:
    expected = {s: detect_pivots(cs) for s, cs in clean.items()}
    assert all(len(v) > 100 for v in expected.values())  # real structure, several levels
    assert len({p["pivot_id"] for p in got}) == len(got), "a pivot appears twice on the topic"
    assert by_series(got) == expected  # same ids, same order, same pivot_time / confirmed_at / price
    rows = store_pivots(platform)
    want = sorted((dict(p) for ps in expected.values() for p in ps), key=lambda p: str(p["pivot_id"]))
    assert rows == want


def dirty_feed(candles: list[Candle], rng: random.Random) -> tuple[list[Candle], dict[str, int]]:
    """Real candles plus redeliveries, late corrections (same open_time, spiked values) and late bars
    (an older open_time with extreme prices): the ones that would make false pivots if accepted."""
    out: list[Candle] = []
    n = {"duplicate": 0, "conflict": 0, "out_of_order": 0}
    for i, c in enumerate(candles):
        out.append(c)
        r = rng.random()
        if r < 0.03:
            out.append(dict(c, source="redelivery"))  # type: ignore[arg-type]
            n["duplicate"] += 1
        elif r < 0.05:
            out.append(dict(c, high=c["high"] * 1.02, close=c["close"]))  # type: ignore[arg-type]
            n["conflict"] += 1
        elif r < 0.07 and i >= 10:
            old = candles[i - rng.randint(1, 10)]
            out.append(dict(old, high=old["high"] * 1.03, low=old["low"] * 0.97))  # type: ignore[arg-type]
            n["out_of_order"] += 1
    return out, n


def interleave(*feeds: list[Candle]) -> list[tuple[str, dict[str, Any]]]:
    """(key, candle) records, one candle of each series in turn, as a live multi-series feed."""
    out: list[tuple[str, dict[str, Any]]] = []
    for i in range(max(len(f) for f in feeds)):
        out.extend((series(f[i]), dict(f[i])) for f in feeds if i < len(f))
    return out


# -- tests ------------------------------------------------------------------------------------------
def test_two_interleaved_dirty_series_give_exactly_the_batch_pivots(
        platform: PlatformSettings, platform_env: dict[str, str], tmp_path: Path) -> None:
    clean = {"BTCUSDT:1m": real_candles(BTC_SEP, limit=1500), "ETHUSDT:1m": real_candles(ETH_SEP, limit=1500)}
    rng = random.Random(7)
    feeds, counts = zip(*(dirty_feed(cs, rng) for cs in clean.values()), strict=True)
    records = interleave(*feeds)
    # Two records the decoder / processor must dead-letter, never feed to a detector:
    bad = dict(clean["BTCUSDT:1m"][700], high=clean["BTCUSDT:1m"][700]["low"] - 1.0)  # high < low
    miskeyed = clean["ETHUSDT:1m"][800]  # an ETH candle on the BTC key
    records[1000:1000] = [("BTCUSDT:1m", bad), ("BTCUSDT:1m", dict(miskeyed))]
    cat = ensure_topics(platform)
    produce_records(platform, CANDLES, records)

    proc, port = start(platform_env, tmp_path / "pivots.log")
    try:
        accepted = 'reftrain_pivots_candles_total{outcome="accepted"}'
        wait_for(lambda: metric(port, accepted) >= 3000, 180, "all candles", proc, interval=0.5)
        wait_for(lambda: committed_everything(platform), 60, "offsets committed", proc, interval=0.5)
        got = read_pivots(platform)
        assert_matches_batch(got, clean, platform)

        m = scrape(port)
        for outcome in ("duplicate", "conflict", "out_of_order"):
            want = sum(c[outcome] for c in counts)
            assert want > 10
            assert m[f'reftrain_pivots_candles_total{{outcome="{outcome}"}}'] == want, outcome
        assert m[accepted] == 3000
        assert sum(v for k, v in m.items() if k.startswith("reftrain_pivots_total{")) == len(got)
        assert m['reftrain_pivots_total{kind="HIGH",level="1"}'] > 0
        assert m['reftrain_pivots_confirmation_delay_bars_count{level="1"}'] > 0
        assert m['reftrain_pivots_confirmation_delay_bars_sum{level="1"}'] == \
            2 * m['reftrain_pivots_confirmation_delay_bars_count{level="1"}']  # L1: always s_1 bars
        assert m["reftrain_pivots_processing_lag_seconds_count"] == len(got)
        assert m["reftrain_pivots_store_write_seconds_count"] >= 1
        assert m['reftrain_dlq_total{reason="key_mismatch",service="pivots",topic="candles"}'] == 1
        assert m['reftrain_dlq_total{reason="high_below_low",service="pivots",topic="candles"}'] == 1
        dlq = consume_all(platform, cat.dlq(CANDLES), expect=2, timeout=30)
        assert sorted(dict(d.headers())["error.reason"] for d in dlq) == [b"high_below_low", b"key_mismatch"]
    finally:
        rc = stop_gracefully(proc)
    assert rc == 0, (tmp_path / "pivots.log").read_text()[-3000:]


def test_kill_9_mid_stream_then_restart_emits_each_pivot_exactly_once(
        platform: PlatformSettings, platform_env: dict[str, str], tmp_path: Path) -> None:
    clean = {"BTCUSDT:1m": real_candles(BTC_OCT, limit=1000), "ETHUSDT:1m": real_candles(ETH_OCT, limit=1000)}
    ensure_topics(platform)
    produce_records(platform, CANDLES, interleave(*clean.values()))
    total = sum(len(c) for c in clean.values())
    seen = 'reftrain_pivots_candles_total{outcome="accepted"}'
    rng = random.Random(11)
    extra = {"PIVOTS_BATCH_SIZE": "40"}  # many transactions, so the kills land inside and between them

    for run in range(3):
        proc, port = start(platform_env, tmp_path / f"run{run}.log", **extra)
        threshold = rng.randint(120, 350)
        try:
            def progressed(port: int = port, t: int = threshold) -> bool:
                return metric(port, seen) >= t

            wait_for(progressed, 120, f"run {run} progress", proc)
            m = scrape(port)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        assert m[seen] < total / 3, "the kill must land mid-stream"
        if run > 0:  # a restarted instance continued from the state committed with the offsets
            assert m['reftrain_restored_state_keys{service="pivots"}'] >= 1

    proc, port = start(platform_env, tmp_path / "final.log", **extra)
    try:
        wait_for(lambda: committed_everything(platform), 180, "offsets committed", proc, interval=0.5)
        assert metric(port, seen) < total  # the last run resumed mid-stream, it did not start over
        got = read_pivots(platform)
        assert_matches_batch(got, clean, platform)
    finally:
        rc = stop_gracefully(proc)
    assert rc == 0, (tmp_path / "final.log").read_text()[-3000:]


def test_crash_after_the_store_write_and_before_the_commit_is_repaired_by_the_restart(
        platform: PlatformSettings, platform_env: dict[str, str], tmp_path: Path) -> None:
    clean = {"ETHUSDT:1m": real_candles(ETH_OCT, limit=1200)}
    ensure_topics(platform)
    produce_records(platform, CANDLES, interleave(*clean.values()))
    extra = {"PIVOTS_BATCH_SIZE": "100", "HTTP_PORT": str(free_port()), "INSTANCE_ID": "pivots-0"}
    crasher = start_service("tests.integration.pivots.crash_after_store_write", platform_env,
                            {**extra, "CRASH_AFTER_STORE_WRITES": "4"}, log_path=tmp_path / "crash.log")
    assert crasher.wait(120) == 137, (tmp_path / "crash.log").read_text()[-3000:]
    # The 4th transaction's pivots are in the store, its Kafka transaction is open and never commits.
    visible = read_pivots(platform)
    stored = store_pivots(platform)
    assert {p["pivot_id"] for p in visible} < {r["pivot_id"] for r in stored}

    proc, _ = start(platform_env, tmp_path / "restart.log", PIVOTS_BATCH_SIZE="100")
    try:
        wait_for(lambda: committed_everything(platform), 120, "offsets committed", proc, interval=0.5)
        assert_matches_batch(read_pivots(platform), clean, platform)  # store rows are not duplicated either
    finally:
        assert stop_gracefully(proc) == 0
