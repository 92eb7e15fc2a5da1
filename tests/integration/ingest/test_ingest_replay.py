"""`python -m services.ingest` replaying real files into the real store and broker: store == topic ==
source, derived timeframes == a batch resample of the stored 1m, SMA/EMA == a batch computation,
/readyz and /metrics served, SIGTERM -> exit 0 (after the replay, and in the middle of a paced one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reftrain.schemas import content_type
from reftrain.settings import PlatformSettings
from services.ingest.kafka_io import partition_of
from tests.integration.ingest.ingest_helpers import (
    BTC,
    ETH,
    as_binance_csv,
    as_parquet,
    assert_close,
    assert_exactly_once,
    batch_indicators,
    batch_resample,
    http_get,
    metric,
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
from tests.support import free_port

pytestmark = pytest.mark.kafka


def test_replay_two_series_store_topic_source_derived_and_indicators_agree(
        platform: PlatformSettings, platform_env: dict[str, str], tmp_path: Path) -> None:
    # both layouts and both formats, with the same real values: BTC as a Binance kline dump (CSV,
    # 12 columns, no header), ETH as a simple-layout Parquet file
    simple = [slice_file(tmp_path, BTC, 600), slice_file(tmp_path, ETH, 600)]
    sources = {f"{f.name.split('-')[0]}:1m": read_simple(f) for f in simple}
    files = [as_binance_csv(simple[0], tmp_path), as_parquet(simple[1], tmp_path)]
    for f, s in zip(files, sources, strict=True):
        for c in sources[s]:
            c["source"] = f.name
    port, log = free_port(), tmp_path / "ingest.log"
    proc = start_ingest(platform_env, {"INGEST_FILES": ",".join(map(str, files)), "INGEST_DERIVE": "5m,15m,1h",
                                       "INGEST_BATCH": "200", "INGEST_SMA": "20,50", "INGEST_EMA": "20,50",
                                       "INGEST_EXIT_WHEN_DONE": "false"}, log, port)
    try:
        wait_for(lambda: http_get(port, "/readyz")[0] == 200, 60, "/readyz", proc, log)
        wait_for(lambda: metric(http_get(port, "/metrics")[1], "reftrain_ingest_replay_complete") == 1, 90,
                 "the replay to complete", proc, log)
        text = http_get(port, "/metrics")[1]
        assert http_get(port, "/healthz")[0] == 200
    finally:
        sigterm(proc)
    assert wait_exit(proc, 30, log) == 0

    for s in sources:
        assert metric(text, "reftrain_ingest_candles_ingested_total", f'series="{s}"') == 600
    assert metric(text, "reftrain_ingest_store_write_seconds_count") >= 6
    assert metric(text, "reftrain_ingest_publish_seconds_count") >= 6
    assert metric(text, "reftrain_ingest_duplicates_total") == 0
    assert metric(text, "reftrain_ingest_out_of_order_total") == 0

    stored = store_rows(platform)
    derived_counts = {tf: sum(1 for r in stored if r["timeframe"] == tf) for tf in ("5m", "15m", "1h")}
    published = topic_messages(platform, expect=len(stored))
    assert len(published) == len(stored)
    for s, candles in sources.items():
        assert_exactly_once(candles, stored, published, s)
        symbol = s.split(":")[0]
        one_minute = [r for r in stored if r["symbol"] == symbol and r["timeframe"] == "1m"]
        for tf in ("5m", "15m", "1h"):
            want = batch_resample(one_minute, tf)
            got = [values(r) for r in stored if r["symbol"] == symbol and r["timeframe"] == tf]
            assert got == want, f"{symbol}:{tf} differs from a batch resample"
            assert_exactly_once([dict(zip(("symbol", "timeframe", "open_time", "close_time", "open", "high",
                                           "low", "close", "volume", "trades"), w, strict=True))  # type: ignore[misc]
                                 for w in want], stored, published, f"{symbol}:{tf}")
        ind = store_indicators(platform, symbol, "1m")
        closes = [c["close"] for c in candles]
        for p in (20, 50):
            sma, ema = batch_indicators(closes, p, p)
            assert_close([ind[c["open_time"]][f"sma_{p}"] for c in candles], sma)
            assert_close([ind[c["open_time"]][f"ema_{p}"] for c in candles], ema)
    assert derived_counts == {"5m": 2 * 120, "15m": 2 * 40, "1h": 2 * 9}  # 10 h from 05:15: 9 whole hours
    assert "row/s" not in log.read_text()  # no progress bar when stderr is not a terminal
    for m in published:
        assert m["partition"] == partition_of(m["key"], platform.topic_partitions)  # murmur2, as Java clients
        assert m["headers"]["content-type"] == content_type("reftrain.Candle").encode()


def test_sigterm_in_the_middle_of_a_paced_replay_drains_and_exits_zero(
        platform: PlatformSettings, platform_env: dict[str, str], tmp_path: Path) -> None:
    src = slice_file(tmp_path, ETH, 2000, skip=1000)
    port, log = free_port(), tmp_path / "ingest.log"
    # 1200x real time: 20 one-minute bars a second, so 2000 bars would take 100 s
    proc = start_ingest(platform_env, {"INGEST_FILES": str(src), "INGEST_SPEED": "1200", "INGEST_DERIVE": "5m"},
                        log, port)
    wait_for(lambda: metric(http_get(port, "/metrics")[1], "reftrain_ingest_candles_ingested_total",
                            'series="ETHUSDT:1m"') >= 40, 60, "40 candles", proc, log)
    sigterm(proc)
    assert wait_exit(proc, 30, log) == 0
    stored = store_rows(platform)
    one_minute = [r for r in stored if r["timeframe"] == "1m"]
    assert 40 <= len(one_minute) < 2000
    source = read_simple(src)
    published = topic_messages(platform, expect=len(stored))
    # everything committed before the stop was published too: a prefix of the source, in both
    assert_exactly_once(source[:len(one_minute)], stored, published, "ETHUSDT:1m")
    assert [values(r) for r in stored if r["timeframe"] == "5m"] == batch_resample(one_minute, "5m")
    assert sorted(m["value"]["open_time"] for m in published if m["key"] == "ETHUSDT:5m") == \
        [r["open_time"] for r in stored if r["timeframe"] == "5m"]
