"""Live mode end to end: a local WebSocket server speaks Binance's kline stream, replaying REAL
candles (an in-progress update before each close, a garbage frame, a dropped connection, closed
klines resent after the reconnect); ingest stores and publishes each closed candle exactly once."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from reftrain.records import Candle
from reftrain.settings import PlatformSettings
from tests.integration.ingest.ingest_helpers import (
    BTC,
    ETH,
    assert_exactly_once,
    batch_resample,
    http_get,
    metric,
    quarantine_rows,
    sigterm,
    start_ingest,
    store_rows,
    topic_messages,
    values,
    wait_exit,
    wait_for,
)
from tests.support import free_port, real_candles

pytestmark = pytest.mark.kafka


def kline(c: Candle, closed: bool) -> str:
    """A combined-stream kline message as Binance sends it (prices as strings)."""
    k = {"t": c["open_time"], "T": c["close_time"], "s": c["symbol"], "i": c["timeframe"],
         "o": repr(c["open"]), "c": repr(c["close"]), "h": repr(c["high"]), "l": repr(c["low"]),
         "v": repr(c["volume"]), "n": c["trades"], "x": closed}
    if not closed:  # the forming candle: part of the bar so far
        k.update({"c": repr(c["open"]), "h": repr(max(c["open"], c["close"])), "v": repr(c["volume"] / 2)})
    return json.dumps({"stream": f"{c['symbol'].lower()}@kline_1m",
                       "data": {"e": "kline", "E": c["close_time"] + 1, "s": c["symbol"], "k": k}})


class FakeBinance:
    """First connection: candles [0, drop_at), then the server closes it. Every later connection:
    a garbage frame, then candles from ``resend_from`` (already sent ones are resent) to the end."""

    def __init__(self, candles: list[Candle], drop_at: int, resend_from: int) -> None:
        self.candles = candles
        self.drop_at = drop_at
        self.resend_from = resend_from
        self.connections = 0
        self.port = 0

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        first = self.connections == 1
        if not first:
            await ws.send("{not json")
        part = self.candles[:self.drop_at] if first else self.candles[self.resend_from:]
        for c in part:
            await ws.send(kline(c, closed=False))
            await ws.send(kline(c, closed=True))
        if first:
            await ws.close()
            return
        await ws.wait_closed()

    @contextmanager
    def running(self) -> Iterator[FakeBinance]:
        loop = asyncio.new_event_loop()
        started = threading.Event()
        stop: dict[str, Any] = {}

        async def main() -> None:
            async with serve(self.handler, "127.0.0.1", 0) as server:
                self.port = next(iter(server.sockets)).getsockname()[1]
                stop["future"] = loop.create_future()
                started.set()
                await stop["future"]

        thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
        thread.start()
        assert started.wait(10)
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(stop["future"].set_result, None)
            thread.join(10)


def test_live_stream_of_two_series_with_disconnect_reaches_store_and_topic_once(
        platform: PlatformSettings, platform_env: dict[str, str], tmp_path: Path) -> None:
    per_series = {s: real_candles(f, limit=120) for s, f in (("ETHUSDT:1m", ETH), ("BTCUSDT:1m", BTC))}
    for cs in per_series.values():
        for c in cs:
            c["source"] = "binance-ws"
    # both symbols close every minute: the combined stream interleaves them
    candles = sorted((c for cs in per_series.values() for c in cs), key=lambda c: (c["open_time"], c["symbol"]))
    server = FakeBinance(candles, drop_at=140, resend_from=120)
    with server.running():
        port, log = free_port(), tmp_path / "ingest.log"
        url = f"ws://127.0.0.1:{server.port}/stream?streams=ethusdt@kline_1m/btcusdt@kline_1m"
        proc = start_ingest(platform_env, {"INGEST_WS_URL": url, "INGEST_DERIVE": "5m"}, log, port)

        def all_in() -> bool:
            text = http_get(port, "/metrics")[1]
            return all(metric(text, "reftrain_ingest_candles_ingested_total", f'series="{s}"') >= 120
                       for s in per_series)

        try:
            wait_for(all_in, 90, "every candle", proc, log)
            text = http_get(port, "/metrics")[1]
        finally:
            sigterm(proc)
        assert wait_exit(proc, 30, log) == 0
    assert server.connections >= 2
    assert metric(text, "reftrain_ingest_ws_connects_total") >= 2
    assert metric(text, "reftrain_ingest_ws_in_progress_total") >= len(candles)  # forming candles dropped
    assert metric(text, "reftrain_ingest_duplicates_total") >= 20  # closed klines 120..139 resent
    assert metric(text, "reftrain_ingest_invalid_total", 'reason="not_json"') >= 1
    stored = store_rows(platform)
    published = topic_messages(platform, expect=len(stored))
    assert len(published) == len(stored)
    for s, cs in per_series.items():
        assert_exactly_once(cs, stored, published, s)
        symbol = s.split(":")[0]
        one_minute = [r for r in stored if r["symbol"] == symbol and r["timeframe"] == "1m"]
        assert [values(r) for r in stored if r["symbol"] == symbol and r["timeframe"] == "5m"] == \
            batch_resample(one_minute, "5m")
    assert {r["reason"] for r in quarantine_rows(platform)} == {"not_json"}
