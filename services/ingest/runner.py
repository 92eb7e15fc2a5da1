"""Drives a Pipeline: start-up repair, file replay (paced, with a progress bar on a terminal) and
live mode (Binance kline WebSocket). Kafka reads go through kafka_io; everything else is pure."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from reftrain.errors import ConfigError
from reftrain.observability import Health
from reftrain.records import Candle, series_key
from reftrain.serde import AvroSerde
from reftrain.settings import PlatformSettings
from services.ingest import metrics as m
from services.ingest.binance_ws import KlineMessageError, StreamStats, stream_klines
from services.ingest.kafka_io import last_published, published_dead_ids
from services.ingest.pacing import ReplayClock, due_time_ms
from services.ingest.pipeline import Pipeline, validate_or_reason
from services.ingest.sources import (
    Layout,
    RowError,
    SourceItem,
    merge_numbered,
    parse_file_name,
    read_numbered,
)

log = logging.getLogger(__name__)


def start(pipeline: Pipeline, platform: PlatformSettings, serde: AvroSerde, dlq_topic: str) -> None:
    """Resume: what the store has vs what the topic has; publish the difference once."""
    t = time.perf_counter()
    stored = pipeline.load_store_state()
    published = last_published(platform, serde, stored)
    dead_ids = published_dead_ids(platform, dlq_topic)
    pipeline.repair(published, dead_ids)
    log.info("resume state checked", extra={
        "series": len(stored), "behind": sorted(s for s, t_ in stored.items() if published.get(s, -1) < t_),
        "republished": pipeline.stats.republished, "dlq_republished": pipeline.stats.dlq_republished,
        "seconds": round(time.perf_counter() - t, 3)})


def file_series(files: Sequence[str]) -> dict[str, list[str]]:
    """Series key -> files of it (symbol and timeframe come from the file names)."""
    out: dict[str, list[str]] = {}
    for f in files:
        symbol, tf = parse_file_name(f)
        out.setdefault(series_key(symbol, tf), []).append(f)
    return out


def check_series(files: Sequence[str], derive: Sequence[str]) -> None:
    """A file series may not also be a derived one (two writers of BTCUSDT:1h would disagree)."""
    series = file_series(files)
    derived = {series_key(s.split(":")[0], tf) for s in series if s.endswith(":1m") for tf in derive}
    clash = sorted(derived & set(series))
    if clash:
        raise ConfigError(f"series {clash} come from a file AND are derived from 1m; drop one (INGEST_DERIVE)")


def first_candle_times(files: Sequence[str], layout: Layout) -> dict[str, int]:
    """open_time of the first valid candle of each series in the files: the store's history before
    it seeds the state; what the store has from it on is the part of this replay already done."""
    first: dict[str, int] = {}
    for f in files:
        for _, item in read_numbered(f, layout=layout):
            if isinstance(item, RowError) or validate_or_reason(item) is not None:
                continue
            s = series_key(item["symbol"], item["timeframe"])
            first[s] = min(first.get(s, item["open_time"]), item["open_time"])
            break
    return first


def _count_rows(files: Sequence[str]) -> int | None:
    total = 0
    for f in files:
        if not f.lower().endswith(".csv"):
            return None
        with open(f, "rb") as fh:
            total += max(0, sum(1 for _ in fh) - 1)
    return total


def _progress(enabled: bool, total: int | None) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="row", file=sys.stderr, dynamic_ncols=True, desc="ingest")


def progress_enabled(mode: str) -> bool:
    """'auto': a bar only when a person watches stderr (logs stay clean under a supervisor)."""
    if mode == "on":
        return True
    if mode == "off":
        return False
    return sys.stderr.isatty()


def replay_files(pipeline: Pipeline, files: Sequence[str], *, stop: threading.Event, health: Health,
                 layout: Layout = "auto", speed: float = 0.0, max_sleep_s: float | None = 60.0,
                 progress: bool = False) -> bool:
    """Replay ``files`` (merged in market order) through the pipeline; True if all were replayed,
    False if ``stop`` interrupted. The pending batch is always committed and published."""
    for s, t0 in sorted(first_candle_times(files, layout).items()):
        symbol, tf = s.split(":")
        pipeline.seed(symbol, tf, t0)
    health.set_ready(True)
    log.info("ready: replaying files", extra={"files": [Path(f).name for f in files], "speed": speed})
    clock = ReplayClock(speed, max_sleep_s=max_sleep_s)
    stored_before = dict(pipeline.stored_last)

    def already_stored(c: Candle) -> bool:
        """A resumed replay catches up unpaced on what an earlier run stored, then paces again."""
        return c["open_time"] <= stored_before.get(series_key(c["symbol"], c["timeframe"]), -1)

    bar = _progress(progress, _count_rows(files) if progress else None)
    items: Iterator[tuple[int, SourceItem]] = merge_numbered(read_numbered(f, layout=layout) for f in files)
    done = True
    n = 0
    try:
        for row, item in items:
            if stop.is_set():
                done = False
                break
            if speed > 0 and not isinstance(item, RowError) and not already_stored(item):
                delay = clock.delay(due_time_ms(item), time.monotonic())
                if delay > 0:
                    pipeline.flush()  # publish what is due before waiting
                    health.beat()
                    if stop.wait(delay):
                        done = False
                        break
            pipeline.offer(item, row)
            n += 1
            if n % 500 == 0:
                health.beat()
                if bar is not None:
                    bar.update(500)
        if done:
            pipeline.finish()
        else:
            pipeline.flush()
    finally:
        if bar is not None:
            bar.update(n % 500)
            bar.close()
    st = pipeline.stats
    log.info("replay complete" if done else "replay stopped", extra={
        "rows": n, "written": st.written, "already_stored": st.already_stored, "invalid": st.invalid,
        "duplicates": st.duplicates, "out_of_order": st.out_of_order, "gaps": st.gaps,
        "store_s": round(st.store_seconds, 3), "publish_s": round(st.publish_seconds, 3)})
    if done:
        m.REPLAY_COMPLETE.set(1)
    return done


def run_live(pipeline: Pipeline, url: str, *, stop: threading.Event, health: Health,
             idle_timeout: float | None = 30.0) -> None:
    """Closed klines from ``url`` through the same write-before-publish path, until ``stop``."""
    health.set_ready(True)
    log.info("ready: live mode", extra={"url": url})
    try:
        asyncio.run(_live(pipeline, url, stop, health, idle_timeout=idle_timeout))
    except ExceptionGroup as group:  # TaskGroup wraps the failing task's error: surface it, so the
        raise group.exceptions[0] from group  # caller can tell an outage (retry) from a bug (exit)


async def _live(pipeline: Pipeline, url: str, stop: threading.Event, health: Health,
                linger_s: float = 0.05, idle_timeout: float | None = 30.0) -> None:
    """The stream task receives and sequences; a ticker commits-then-publishes what is pending every
    ``linger_s``, so a burst (a reconnect catching up, many symbols closing together) goes to the
    store in one transaction instead of one per candle, and a lone candle waits at most ``linger_s``."""
    astop = asyncio.Event()
    stats = StreamStats()
    exported = StreamStats()

    def export() -> None:
        m.WS_CONNECTS.inc(stats.connects - exported.connects)
        m.WS_IN_PROGRESS.inc(stats.in_progress - exported.in_progress)
        m.DUPLICATES.inc(stats.duplicates - exported.duplicates)  # closed klines resent after a reconnect
        m.WS_IDLE_TIMEOUTS.inc(stats.idle_timeouts - exported.idle_timeouts)
        exported.connects, exported.in_progress = stats.connects, stats.in_progress
        exported.idle_timeouts = stats.idle_timeouts
        exported.duplicates = stats.duplicates

    async def ticker() -> None:
        while not stop.is_set():
            await asyncio.sleep(linger_s)
            if pipeline.pending:
                pipeline.flush()
            health.beat()
            export()
        astop.set()

    def on_candle(c: Candle) -> None:
        pipeline.offer(c, None)

    def on_bad(raw: str | bytes, err: KlineMessageError) -> None:
        pipeline.quarantine_message("binance-ws", raw, err.reason, err.detail)

    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(ticker())
            tg.create_task(stream_klines(url, on_candle, stop=astop, last_open_times=pipeline.last_open_times(),
                                         on_bad_message=on_bad, stats=stats, idle_timeout=idle_timeout))
    finally:
        export()
        try:
            pipeline.flush()  # what was received before the stop (or the failure) is kept
        except Exception:
            log.exception("final flush failed")
            raise
