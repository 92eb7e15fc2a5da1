"""Binance kline messages and the reconnecting client, against a local WebSocket server that replays
real candles in Binance's message format and drops the connection mid-stream."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import InvalidURI
from websockets.http11 import Request, Response

from reftrain.records import Candle
from services.ingest.binance_ws import (
    SOURCE,
    Backoff,
    KlineMessageError,
    StreamStats,
    kline_stream_url,
    parse_kline_message,
    stream_klines,
)

Loader = Callable[[str], list[Candle]]
BTC = "BTCUSDT-1m-2025-10-29_2025-11-01.csv"
ETH = "ETHUSDT-1m-2025-10-29_2025-11-01.csv"


def kline(c: Candle, *, closed: bool, frac: float = 1.0, unit: int = 1, combined: bool = False) -> str:
    """A Binance kline message for ``c``; ``frac`` < 1 makes an in-progress update with partial values."""
    high = c["open"] + (c["high"] - c["open"]) * frac
    low = c["open"] - (c["open"] - c["low"]) * frac
    close = c["close"] if closed else (c["open"] + c["close"]) / 2
    k = {
        "t": c["open_time"] * unit,
        "T": c["close_time"] * unit + (unit - 1),
        "s": c["symbol"],
        "i": c["timeframe"],
        "f": 100,
        "L": 200,
        "o": f"{c['open']:.8f}",
        "c": f"{close:.8f}",
        "h": f"{high:.8f}",
        "l": f"{low:.8f}",
        "v": f"{c['volume'] * frac:.8f}",
        "n": int((c["trades"] or 0) * frac),
        "x": closed,
        "q": "0",
        "V": "0",
        "Q": "0",
        "B": "0",
    }
    msg: dict[str, Any] = {"e": "kline", "E": c["close_time"] + 1, "s": c["symbol"], "k": k}
    if combined:
        msg = {"stream": f"{c['symbol'].lower()}@kline_{c['timeframe']}", "data": msg}
    return json.dumps(msg)


def port_of(server: Server) -> int:
    port: int = next(iter(server.sockets)).getsockname()[1]
    return port


def ws_candle(c: Candle) -> Candle:
    return Candle(**{**c, "source": SOURCE})


def test_parse_closed_in_progress_wrapped_and_other(load_real: Loader) -> None:
    c = load_real(BTC)[7]
    ev = parse_kline_message(kline(c, closed=True))
    assert ev is not None
    assert ev.closed
    assert ev.candle == ws_candle(c)
    assert ev.event_time == c["close_time"] + 1
    wrapped = parse_kline_message(kline(c, closed=True, combined=True).encode())
    assert wrapped is not None
    assert wrapped.candle == ws_candle(c)
    micro = parse_kline_message(kline(c, closed=True, unit=1000))
    assert micro is not None
    assert micro.candle == ws_candle(c)  # us timestamps become ms, close_time floors to ...999
    partial = parse_kline_message(kline(c, closed=False, frac=0.5))
    assert partial is not None
    assert not partial.closed
    assert parse_kline_message('{"result": null, "id": 1}') is None
    assert parse_kline_message({"e": "trade", "s": "BTCUSDT"}) is None
    assert parse_kline_message({"stream": "btcusdt@trade", "data": {"e": "trade"}}) is None


K = {"t": 0, "T": 59999, "s": "X", "i": "1m", "o": "1", "h": "1", "l": "1", "c": "1", "v": "1", "x": True}


def bad_kline(**change: object) -> str:
    return json.dumps({"e": "kline", "k": {**K, **change}})


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("not json", "not_json"),
        (b"\xff\xfe", "not_json"),
        ("[1, 2]", "not_an_object"),
        ('{"e": "kline"}', "missing_field"),
        ('{"e": "kline", "k": {"t": 0}}', "missing_field"),
        (bad_kline(t="0"), "bad_field"),
        (bad_kline(T=-1), "bad_field"),
        (bad_kline(o="a"), "bad_field"),
        (bad_kline(v=None), "bad_field"),
        (bad_kline(x=1), "bad_field"),
        (bad_kline(n="5"), "bad_field"),
        (bad_kline(s=5), "bad_field"),
    ],
)
def test_malformed_messages(raw: str | bytes, reason: str) -> None:
    with pytest.raises(KlineMessageError) as exc:
        parse_kline_message(raw)
    assert exc.value.reason == reason


def test_stream_url() -> None:
    assert kline_stream_url(["BTCUSDT", "ETHUSDT"]) == (
        "wss://stream.binance.com:9443/stream?streams=btcusdt@kline_1m/ethusdt@kline_1m"
    )


@settings(max_examples=50, deadline=None)
@given(attempt=st.integers(0, 5000), seed=st.integers(0, 2**32), jitter=st.floats(0, 1))
def test_backoff_is_exponential_capped_and_jittered(attempt: int, seed: int, jitter: float) -> None:
    b = Backoff(initial=0.5, cap=30.0, factor=2.0, jitter=jitter)
    base = min(30.0, 0.5 * 2.0 ** min(attempt, 10))
    assert b.base(attempt) == base
    d = b.delay(attempt, random.Random(seed))
    assert base * (1 - jitter) <= d <= base <= 30.0
    with pytest.raises(ValueError, match="bad backoff"):
        Backoff(initial=2.0, cap=1.0)


@dataclass
class ReplayServer:
    """Sends ``script`` in order; at each index in ``drops`` it drops the connection (cleanly with
    1001 as Binance does every 24 h, or by aborting the TCP connection). A new connection resumes
    ``rewind`` messages back, so closed candles already delivered are sent again. Connection number
    ``reject_conn`` is refused at the handshake with HTTP 503."""

    script: list[str]
    drops: dict[int, str]
    rewind: int = 25
    reject_conn: int | None = None
    pos: int = 0
    connections: int = 0
    done: set[int] = field(default_factory=set)

    def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        self.connections += 1
        if self.connections == self.reject_conn:
            return conn.respond(HTTPStatus.SERVICE_UNAVAILABLE, "busy\n")
        return None

    async def handler(self, ws: ServerConnection) -> None:
        await ws.send('{"result": null, "id": 1}')  # subscription reply: not a kline
        i = max(0, self.pos - self.rewind)
        while i < len(self.script):
            how = self.drops.get(i)
            if how is not None and i not in self.done:
                self.done.add(i)
                self.pos = i
                if how == "close":
                    await ws.close(1001, "going away")
                else:
                    await asyncio.sleep(0.02)  # let what was sent leave before the reset
                    ws.transport.abort()
                return
            await ws.send(self.script[i])
            i += 1
            self.pos = i
        await ws.wait_closed()


def build_script(btc: list[Candle], eth: list[Candle]) -> tuple[list[str], list[Candle]]:
    """Per minute: in-progress updates of both symbols interleaved with their closed klines, mixing
    raw and combined-stream messages, plus one malformed message."""
    script: list[str] = []
    expected: list[Candle] = []
    for i, (b, e) in enumerate(zip(btc, eth, strict=True)):
        script += [kline(b, closed=False, frac=0.3), kline(e, closed=False, frac=0.3, combined=True)]
        script += [
            kline(b, closed=False, frac=0.8, combined=True),
            kline(b, closed=True, combined=i % 2 == 0),
        ]
        script += [kline(e, closed=False, frac=0.9), kline(e, closed=True, combined=True)]
        expected += [ws_candle(b), ws_candle(e)]
        if i == 40:
            script.append("garbage{")
    return script, expected


def test_client_survives_drops_without_duplicates_or_losses(load_real: Loader) -> None:
    btc, eth = load_real(BTC)[:150], load_real(ETH)[:150]
    script, expected = build_script(btc, eth)
    n = len(script)
    server = ReplayServer(
        script, drops={n // 5: "close", n // 2: "abort", (4 * n) // 5: "close"}, reject_conn=3
    )
    got: list[Candle] = []
    bad: list[str] = []

    async def main() -> StreamStats:
        stop = asyncio.Event()

        async def on_candle(c: Candle) -> None:  # an async callback is awaited
            got.append(c)
            await asyncio.sleep(0)
            if len(got) == len(expected):
                stop.set()

        async with serve(server.handler, "127.0.0.1", 0, process_request=server.process_request) as srv:
            port = port_of(srv)
            return await asyncio.wait_for(
                stream_klines(
                    f"ws://127.0.0.1:{port}/stream?streams=btcusdt@kline_1m/ethusdt@kline_1m",
                    on_candle,
                    stop=stop,
                    backoff=Backoff(initial=0.01, cap=0.05),
                    on_bad_message=lambda raw, e: bad.append(e.reason),
                    rng=random.Random(1),
                ),
                timeout=30,
            )

    stats = asyncio.run(main())
    assert got == expected  # every closed candle, in order, once; no in-progress update
    assert bad == ["not_json"]
    assert stats.closed == len(expected)
    assert stats.connects == 4  # first + 3 reconnects (one attempt refused with 503 in between)
    assert stats.disconnects == 4  # 3 drops + the refused handshake
    assert stats.duplicates > 0  # the server did resend closed candles after reconnecting
    assert stats.in_progress > 0
    assert stats.ignored == 4  # one subscription reply per connection
    assert server.done == set(server.drops)


def test_resume_state_and_sync_callback(load_real: Loader) -> None:
    btc, eth = load_real(BTC)[:20], load_real(ETH)[:20]
    script, expected = build_script(btc, eth)
    server = ReplayServer(script, drops={})
    seen = {"BTCUSDT:1m": btc[9]["open_time"], "ETHUSDT:1m": eth[14]["open_time"]}
    want = [c for c in expected if c["open_time"] > seen[f"{c['symbol']}:1m"]]
    got: list[Candle] = []

    async def main() -> None:
        stop = asyncio.Event()

        def on_candle(c: Candle) -> None:
            got.append(c)
            if len(got) == len(want):
                stop.set()

        async with serve(server.handler, "127.0.0.1", 0) as srv:
            port = port_of(srv)
            await asyncio.wait_for(
                stream_klines(f"ws://127.0.0.1:{port}/", on_candle, stop=stop, last_open_times=seen),
                timeout=20,
            )

    asyncio.run(main())
    assert got == want
    assert seen == {"BTCUSDT:1m": btc[-1]["open_time"], "ETHUSDT:1m": eth[-1]["open_time"]}


def test_stop_while_nothing_listens() -> None:
    """No server: the client keeps retrying with back-off and returns promptly once stopped."""

    async def main() -> StreamStats:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.3, stop.set)
        return await asyncio.wait_for(
            stream_klines("ws://127.0.0.1:9/", lambda c: None, stop=stop, backoff=Backoff(0.02, 0.1)),
            timeout=5,
        )

    stats = asyncio.run(main())
    assert stats.connects == 0
    assert stats.disconnects >= 2


def test_bad_url_raises() -> None:
    with pytest.raises(InvalidURI):
        asyncio.run(stream_klines("http://x", lambda c: None))


def test_on_candle_errors_propagate_and_leave_state(load_real: Loader) -> None:
    btc, eth = load_real(BTC)[:3], load_real(ETH)[:3]
    script, _ = build_script(btc, eth)
    server = ReplayServer(script, drops={})
    seen: dict[str, int] = {}

    def on_candle(c: Candle) -> None:
        raise RuntimeError("store down")

    async def main() -> None:
        async with serve(server.handler, "127.0.0.1", 0) as srv:
            port = port_of(srv)
            await asyncio.wait_for(
                stream_klines(f"ws://127.0.0.1:{port}/", on_candle, last_open_times=seen), 10
            )

    with pytest.raises(RuntimeError, match="store down"):
        asyncio.run(main())
    assert seen == {}  # not marked as emitted: a retry will deliver it again


def test_stop_from_the_callback_with_messages_buffered(load_real: Loader) -> None:
    btc, eth = load_real(BTC)[:100], load_real(ETH)[:100]
    script, expected = build_script(btc, eth)
    server = ReplayServer(script, drops={})
    got: list[Candle] = []

    async def main() -> StreamStats:
        stop = asyncio.Event()

        def on_candle(c: Candle) -> None:
            got.append(c)
            if len(got) == 5:
                stop.set()

        async with serve(server.handler, "127.0.0.1", 0) as srv:
            return await asyncio.wait_for(
                stream_klines(f"ws://127.0.0.1:{port_of(srv)}/", on_candle, stop=stop, close_timeout=0.2),
                timeout=10,
            )

    stats = asyncio.run(main())
    assert got == expected[:5]
    assert stats.closed == 5


def test_a_silent_connection_is_closed_reopened_and_counted(load_real: Loader,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """The server accepts, sends one real candle, then goes silent while still answering pings (a
    stuck stream: websockets' ping timeout never fires). Without the idle timeout the client would
    wait forever; with it, the connection is closed after ``idle_timeout``, counted, logged and
    reopened, and the second connection delivers the next candle."""
    btc = load_real(BTC)[:2]
    opened: list[float] = []
    closed_by_client: list[bool] = []

    async def handler(ws: ServerConnection) -> None:
        opened.append(asyncio.get_running_loop().time())
        await ws.send(kline(btc[len(opened) - 1], closed=True))
        await ws.wait_closed()  # silent from here on; pings are still answered by websockets
        closed_by_client.append(True)

    got: list[Candle] = []

    async def main() -> StreamStats:
        stop = asyncio.Event()

        def on_candle(c: Candle) -> None:
            got.append(c)
            if len(got) == 2:
                stop.set()

        async with serve(handler, "127.0.0.1", 0) as srv:
            return await asyncio.wait_for(
                stream_klines(f"ws://127.0.0.1:{port_of(srv)}/", on_candle, stop=stop, idle_timeout=0.5,
                              ping_interval=0.1, backoff=Backoff(initial=0.01, cap=0.05)),
                timeout=10,  # without the idle timeout: TimeoutError here, the test fails
            )

    with caplog.at_level("WARNING", logger="services.ingest.binance_ws"):
        stats = asyncio.run(main())
    assert got == [ws_candle(c) for c in btc]
    assert stats.idle_timeouts == 1 and stats.disconnects == 1 and stats.connects == 2
    assert len(opened) == 2 and opened[1] - opened[0] >= 0.5  # reopened only after the silence
    assert closed_by_client  # the client closed the stuck connection (not the server)
    assert any("no message for 0.5 s" in r.getMessage() for r in caplog.records)


def test_idle_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="idle_timeout"):
        asyncio.run(stream_klines("ws://127.0.0.1:9/", lambda c: None, idle_timeout=0))
