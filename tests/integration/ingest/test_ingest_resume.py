"""Restart and resume: kill -9 at random moments of a real replay, and a crash exactly between the
store commit and the publish; afterwards the store and the topic each hold every candle of the
source once (and derived candles and indicators equal an uninterrupted batch computation)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from reftrain.observability import Health
from reftrain.records import Candle
from reftrain.settings import PlatformSettings
from reftrain.store import Store
from reftrain.streams import Serdes
from reftrain.topics import CANDLES
from services.ingest import runner
from services.ingest.kafka_io import DeadRow, KafkaPublisher
from services.ingest.pipeline import Pipeline
from tests.integration.ingest.ingest_helpers import (
    BTC,
    ETH,
    assert_close,
    assert_exactly_once,
    batch_indicators,
    batch_resample,
    dlq_messages,
    http_get,
    log_records,
    metric,
    quarantine_rows,
    read_simple,
    sigterm,
    slice_file,
    start_ingest,
    store_indicators,
    store_rows,
    topic_messages,
    values,
    wait_exit,
    wait_for,
)
from tests.support import DATA, catalog_unavailable, ensure_topics, free_port, produce_records

pytestmark = pytest.mark.kafka


def check_against_source(platform: PlatformSettings, source: list[Candle], derived: Sequence[str]) -> None:
    """store == topic == source for the 1m series; derived == batch resample; SMA/EMA == batch."""
    stored = store_rows(platform)
    published = topic_messages(platform, expect=len(stored))
    series = f"{source[0]['symbol']}:1m"
    assert_exactly_once(source, stored, published, series)
    symbol = source[0]["symbol"]
    one_minute = [r for r in stored if r["timeframe"] == "1m"]
    for tf in derived:
        want = batch_resample(one_minute, tf)
        assert [values(r) for r in stored if r["timeframe"] == tf] == want, tf
        keys = ("symbol", "timeframe", "open_time", "close_time", "open", "high", "low", "close", "volume", "trades")
        assert_exactly_once([dict(zip(keys, w, strict=True)) for w in want],  # type: ignore[misc]
                            stored, published, f"{symbol}:{tf}")
    assert len(published) == len(stored)
    for tf in ("1m", *derived):
        rows = [r for r in stored if r["timeframe"] == tf]
        ind = store_indicators(platform, symbol, tf)
        assert sorted(ind) == [r["open_time"] for r in rows], f"indicators of {tf} missing or extra"
        sma, ema = batch_indicators([r["close"] for r in rows], 20, 20)
        assert_close([ind[r["open_time"]]["sma_20"] for r in rows], sma)
        assert_close([ind[r["open_time"]]["ema_20"] for r in rows], ema)


def test_kill_minus_9_at_random_moments_then_resume(
        platform: PlatformSettings, platform_env: dict[str, str], tmp_path: Path) -> None:
    src = slice_file(tmp_path, BTC, 1000, skip=700)
    source = read_simple(src)
    env = {"INGEST_FILES": str(src), "INGEST_DERIVE": "5m,15m,1h", "INGEST_BATCH": "60"}
    seed = int(os.environ.get("INGEST_KILL_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    # kill when the store has reached a random point of the file, plus a random delay, so the kill
    # lands anywhere in a batch (parsing, store commit, publish) whatever the machine's speed
    targets = sorted(rng.sample(range(60, 940), 3))
    kills: list[dict[str, object]] = []
    for attempt, target in enumerate(targets):
        port, log = free_port(), tmp_path / f"ingest{attempt}.log"
        proc = start_ingest(platform_env, env, log, port)
        due = source[target]["open_time"]

        def reached(p: int = port, due: int = due) -> bool:
            text = http_get(p, "/metrics")[1]
            return metric(text, "reftrain_ingest_last_open_time_ms", 'series="BTCUSDT:1m"') >= due

        try:
            wait_for(reached, 120, f"row {target}", proc, log)
        except AssertionError:
            if proc.poll() == 0:
                break  # finished first: nothing left to kill
            raise
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        repaired = sum(r["candles"] for r in log_records(log)
                       if r.get("msg", "").startswith("published stored candles missing"))
        kills.append({"target": target, "repaired_on_start": repaired})
    assert len(kills) >= 2, f"the replay finished before it could be killed twice (seed {seed})"
    log = tmp_path / "ingest-final.log"
    proc = start_ingest(platform_env, env, log, free_port())
    assert wait_exit(proc, 120, log) == 0
    final = [r for r in log_records(log) if r.get("msg") in ("resume state checked", "replay complete")]
    print(f"seed={seed} kills={kills} final={final}")
    assert final[-1]["msg"] == "replay complete" and final[-1]["already_stored"] > 0  # it did resume
    check_against_source(platform, source, ("5m", "15m", "1h"))


class CrashBeforePublish(Exception):
    """Stands in for a process death right after a store commit."""


class CrashingPublisher:
    """Publishes the first ``ok`` batches, then dies before publishing (after the store commit)."""

    def __init__(self, real: KafkaPublisher, ok: int) -> None:
        self.real = real
        self.ok = ok
        self.calls = 0

    def publish(self, candles: Sequence[Candle], dead: Sequence[DeadRow] = ()) -> None:
        if self.calls >= self.ok:
            raise CrashBeforePublish
        self.calls += 1
        self.real.publish(candles, dead)


def test_crash_between_store_commit_and_publish_is_repaired_on_restart(
        platform: PlatformSettings, platform_env: dict[str, str], tmp_path: Path) -> None:
    # 400 real ETHUSDT rows plus two DELIBERATELY CORRUPTED copies of real rows (quarantined)
    header, *rows = (DATA / ETH).read_text().splitlines()[:401]
    cells = [r.split(",") for r in rows]
    bad1 = ",".join([cells[30][0], cells[30][1], cells[30][3], cells[30][2], *cells[30][4:]])  # high<low
    bad2 = ",".join([*cells[100][:5], "-3.0", cells[100][6]])  # negative volume
    lines = [header, *rows[:30], bad1, *rows[30:100], bad2, *rows[100:]]
    src = tmp_path / "ETHUSDT-1m-crash.csv"
    src.write_text("\n".join(lines) + "\n")
    (tmp_path / "clean").mkdir()
    clean = tmp_path / "clean" / "ETHUSDT-1m-clean.csv"
    clean.write_text("\n".join([header, *rows]) + "\n")

    cat = ensure_topics(platform)
    serde = Serdes(platform, cat).for_topic(CANDLES)
    store = Store.from_settings(platform)
    real = KafkaPublisher(platform, serde, cat.dlq(CANDLES))
    pipe = Pipeline(store, CrashingPublisher(real, ok=2), derive=("5m",), sma=(20,), ema=(20,), batch=50)
    runner.start(pipe, platform, serde, cat.dlq(CANDLES))
    with pytest.raises(CrashBeforePublish):
        runner.replay_files(pipe, [str(src)], stop=threading.Event(), health=Health("ingest-test"))
    real.close()
    store.close()
    stored_before = store_rows(platform)
    published_before = topic_messages(platform)
    unpublished = len(stored_before) - len(published_before)
    assert len(published_before) >= 100 and unpublished >= 50  # batch 3 committed, not published
    assert len(quarantine_rows(platform)) == 2 and len(dlq_messages(platform)) == 1  # row 102 not on the DLQ

    log = tmp_path / "ingest.log"
    proc = start_ingest(platform_env, {"INGEST_FILES": str(src), "INGEST_DERIVE": "5m"}, log, free_port())
    assert wait_exit(proc, 90, log) == 0
    repaired = {r["series"]: r["candles"] for r in log_records(log)
                if r.get("msg", "").startswith("published stored candles missing")}
    assert sum(repaired.values()) == unpublished and set(repaired) == {"ETHUSDT:1m", "ETHUSDT:5m"}
    check_against_source(platform, read_simple(clean), ("5m",))
    dlq = dlq_messages(platform, expect=2)
    assert sorted(int(dict(m.headers())["source.row"]) for m in dlq) == [32, 103]
    assert sorted(r["reason"] for r in quarantine_rows(platform)) == ["high_below_low", "negative_volume"]


def test_store_rebuilt_behind_the_topic_is_refilled_without_republishing(
        platform: PlatformSettings, tmp_path: Path) -> None:
    """The topic already has the first 100 candles (e.g. the store was restored from an older
    backup): ingest stores all 300 again but publishes only the 200 the topic lacks."""
    src = slice_file(tmp_path, ETH, 300, skip=2000)
    source = read_simple(src)
    cat = ensure_topics(platform)
    produce_records(platform, CANDLES, [("ETHUSDT:1m", dict(c)) for c in source[:100]])
    serde = Serdes(platform, cat).for_topic(CANDLES)
    store = Store.from_settings(platform)
    publisher = KafkaPublisher(platform, serde, cat.dlq(CANDLES))
    pipe = Pipeline(store, publisher, sma=(20,), ema=(20,), batch=100)
    try:
        # the store knows this series only from an older, shorter copy (its first 40 candles)
        store.append_candles(source[:40])
        runner.start(pipe, platform, serde, cat.dlq(CANDLES))
        assert runner.replay_files(pipe, [str(src)], stop=threading.Event(), health=Health("ingest-test"))
    finally:
        publisher.close()
        store.close()
    stored = store_rows(platform)
    assert_exactly_once(source, stored, topic_messages(platform, expect=300), "ETHUSDT:1m")


def test_store_outage_mid_replay_is_ridden_out_in_process(
        platform: PlatformSettings, platform_env: dict[str, str], tmp_path: Path) -> None:
    """The catalog database refuses connections for 15 s in the middle of a paced real replay: the
    same ingest process backs off (not ready meanwhile, still live), resumes as a restart would, and
    the store and the topic each end up with every candle of the file once."""
    src = slice_file(tmp_path, BTC, 600, skip=300)
    source = read_simple(src)
    # 600 one-minute bars at 1200x real time: ~30 s of replay, so the outage lands mid-file
    env = {"INGEST_FILES": str(src), "INGEST_DERIVE": "", "INGEST_BATCH": "20", "INGEST_SPEED": "1200",
           "INGEST_EXIT_WHEN_DONE": "false"}
    port, log = free_port(), tmp_path / "ingest.log"
    proc = start_ingest(platform_env, env, log, port)
    try:
        _ride_out_store_outage(platform, source, proc, port, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _ride_out_store_outage(platform: PlatformSettings, source: list[Candle], proc: subprocess.Popen[bytes],
                           port: int, log: Path) -> None:
    def at_row(n: int) -> bool:
        text = http_get(port, "/metrics")[1]
        return metric(text, "reftrain_ingest_last_open_time_ms", 'series="BTCUSDT:1m"') >= source[n]["open_time"]

    wait_for(lambda: at_row(100), 180, "row 100 stored and published", proc, log)
    readiness: list[int] = []
    with catalog_unavailable(platform):
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            readiness.append(http_get(port, "/readyz")[0])
            assert http_get(port, "/healthz")[0] == 200, "backing off must not look stuck"
            time.sleep(0.5)
    assert proc.poll() is None, f"ingest exited during the outage:\n{log.read_text()[-3000:]}"
    assert 503 in readiness, "ingest stayed ready while it could not write"
    text = http_get(port, "/metrics")[1]
    assert metric(text, "reftrain_session_restarts_total", 'error="StoreError",service="ingest"') >= 1, text
    wait_for(lambda: metric(http_get(port, "/metrics")[1], "reftrain_ingest_replay_complete") == 1, 180,
             "the replay to finish", proc, log)
    sigterm(proc)
    assert wait_exit(proc, 60, log) == 0
    records = log_records(log)
    assert any(r.get("msg") == "session ended by a transient error; restarting" for r in records)
    resumed = [r for r in records if r.get("msg") == "replay complete"]
    assert resumed and resumed[-1]["already_stored"] > 0, "the retry resumed from the store"
    check_against_source(platform, source, ())
