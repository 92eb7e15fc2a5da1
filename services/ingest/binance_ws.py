"""Binance public kline WebSocket: message parsing and a reconnecting client.

Binance pushes an update of the forming candle about every 2 s (``k.x == false``) and one last
update when it closes (``k.x == true``). Only closed candles are candles in this system (docs/semantics.md,
rule 2: ``candles`` carries COMPLETED candles only), so in-progress updates are parsed, counted and
dropped. Both the raw stream (``/ws/btcusdt@kline_1m``) and the combined-stream wrapper
(``/stream?streams=...``, ``{"stream": ..., "data": {...}}``) are understood.

The client reconnects with exponential back-off (capped, with jitter so that many ingest replicas
do not reconnect in lock-step) and emits each (series, open_time) at most once across reconnects:
a closed candle whose open_time is not after the last one emitted for its series is a duplicate
(Binance, and proxies in front of it, may resend the last kline after a reconnect). Candles missed
while disconnected are NOT fetched here; the sequencer reports them as a gap.

A connection that stays open but delivers nothing for ``idle_timeout`` seconds (default 30 s; Binance
sends a forming-candle update every ~2 s per stream, and a ping every 20 s that a stuck stream still
answers, so websockets' own ping timeout does not catch it) is closed, counted
(``StreamStats.idle_timeouts``), logged, and reconnected with the same back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidURI, WebSocketException

from reftrain.records import Candle, series_key
from services.ingest import limits

log = logging.getLogger(__name__)

SOURCE = "binance-ws"
DEFAULT_BASE_URL = "wss://stream.binance.com:9443"
_US_MIN = 10**14  # see sources.py: at or above this an epoch value is in microseconds


class KlineMessageError(ValueError):
    """A message that claims to be a kline but cannot be read; ``reason`` is a counter label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class KlineEvent:
    candle: Candle
    closed: bool
    event_time: int | None


def kline_stream_url(symbols: Iterable[str], interval: str = "1m", base: str = DEFAULT_BASE_URL) -> str:
    """Combined-stream URL for the klines of ``symbols`` (Binance wants lower-case stream names)."""
    streams = "/".join(f"{s.lower()}@kline_{interval}" for s in symbols)
    return f"{base}/stream?streams={streams}"


def _ms(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise KlineMessageError("bad_field", f"{field}={value!r}")
    return value // 1000 if value >= _US_MIN else value


def _num(value: Any, field: str) -> float:
    if isinstance(value, bool):
        raise KlineMessageError("bad_field", f"{field}={value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise KlineMessageError("bad_field", f"{field}={value!r}") from None


def parse_kline_message(raw: str | bytes | Mapping[str, Any]) -> KlineEvent | None:
    """A KlineEvent for a kline message; None for any other message (subscription replies, other
    event types); raises KlineMessageError for a kline that cannot be read. Values are not validated
    here (the sequencer validates every candle, whatever its source)."""
    if isinstance(raw, Mapping):
        msg: Any = raw
    else:
        try:
            msg = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise KlineMessageError("not_json", str(e)[:200]) from None
    if not isinstance(msg, Mapping):
        raise KlineMessageError("not_an_object", type(msg).__name__)
    if "stream" in msg and isinstance(msg.get("data"), Mapping):
        msg = msg["data"]
    if msg.get("e") != "kline":
        return None
    k = msg.get("k")
    if not isinstance(k, Mapping):
        raise KlineMessageError("missing_field", "k")
    try:
        symbol = k.get("s") or msg["s"]
        timeframe = k["i"]
        open_time = _ms(k["t"], "t")
        close_time = _ms(k["T"], "T")
        closed = k["x"]
        o, h, low, c, v = (_num(k[f], f) for f in ("o", "h", "l", "c", "v"))
        n = k.get("n")
    except KeyError as e:
        raise KlineMessageError("missing_field", str(e)) from None
    if not isinstance(symbol, str) or not isinstance(timeframe, str) or not isinstance(closed, bool):
        raise KlineMessageError("bad_field", f"s={symbol!r} i={timeframe!r} x={closed!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int)):
        raise KlineMessageError("bad_field", f"n={n!r}")
    event_time = msg.get("E")
    candle = Candle(
        symbol=symbol,
        timeframe=timeframe,
        open_time=open_time,
        close_time=close_time,
        open=o,
        high=h,
        low=low,
        close=c,
        volume=v,
        trades=n,
        source=SOURCE,
    )
    return KlineEvent(candle, closed, event_time if isinstance(event_time, int) else None)


@dataclass(frozen=True)
class Backoff:
    """Delay before reconnect attempt ``attempt`` (0-based): ``min(cap, initial * factor**attempt)``
    scaled by a random factor in ``[1 - jitter, 1]``, so it never exceeds the cap."""

    initial: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.initial < 0 or self.cap < self.initial or self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ValueError(f"bad backoff {self}")

    def base(self, attempt: int) -> float:
        # cap the exponent too: factor**attempt overflows a float long before attempt ~ 1100
        if self.initial == 0:
            return 0.0
        exp = 0
        value = self.initial
        while exp < attempt and value < self.cap:
            value *= self.factor
            exp += 1
        return min(self.cap, value)

    def delay(self, attempt: int, rng: random.Random) -> float:
        return self.base(attempt) * (1.0 - self.jitter * rng.random())


@dataclass
class StreamStats:
    """Counters of one ``stream_klines`` run (the service exports them)."""

    connects: int = 0
    disconnects: int = 0
    messages: int = 0
    closed: int = 0
    in_progress: int = 0
    ignored: int = 0
    duplicates: int = 0
    bad: int = 0
    #: connections closed because nothing arrived for ``idle_timeout`` seconds (also in disconnects)
    idle_timeouts: int = 0


class IdleTimeout(TimeoutError):
    """No message for ``idle_timeout`` seconds on an open connection: it is closed and reopened."""


OnCandle = Callable[[Candle], Awaitable[None] | None]
OnBadMessage = Callable[[str | bytes, KlineMessageError], None]


async def _recv_or_stop(ws: ClientConnection, stop: asyncio.Event) -> str | bytes | None:
    """The next message, or None once ``stop`` is set (recv is cancellation-safe in websockets)."""
    if stop.is_set():  # checked first: with messages buffered, recv would always win the race
        return None
    recv = asyncio.ensure_future(ws.recv())
    stopper = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait({recv, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not recv.done():
            recv.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketException):
                await recv
    if recv in done:
        return recv.result()
    return None


async def stream_klines(
    url: str,
    on_candle: OnCandle,
    *,
    stop: asyncio.Event | None = None,
    backoff: Backoff | None = None,
    last_open_times: dict[str, int] | None = None,
    on_bad_message: OnBadMessage | None = None,
    rng: random.Random | None = None,
    open_timeout: float = 10.0,
    ping_interval: float | None = 20.0,
    close_timeout: float = 1.0,
    stats: StreamStats | None = None,
    idle_timeout: float | None = 30.0,
) -> StreamStats:
    """Receive klines from ``url`` until ``stop`` is set; call ``on_candle`` once per closed candle.

    ``last_open_times`` (series key -> open_time) is the dedupe state; pass the store's last open
    times to resume without re-emitting, and read it back afterwards (it is updated in place, after
    ``on_candle`` returned). Exceptions from ``on_candle`` propagate (the caller owns the candle).
    Connection failures of any kind are retried with ``backoff``; a malformed URL raises.
    On stop the connection is closed cleanly, waiting at most ``close_timeout`` for the server's
    reply (websockets stops reading while unread messages are queued, so the handshake may not
    complete); when ``on_candle`` raises, or the task is cancelled, the socket is aborted at once.
    ``idle_timeout``: seconds without any message after which the connection is closed and reopened
    (None: never; see the module docstring).
    """
    if idle_timeout is not None and idle_timeout <= 0:
        raise ValueError(f"idle_timeout must be positive, got {idle_timeout}")
    stop = stop if stop is not None else asyncio.Event()
    backoff = backoff or Backoff()
    rng = rng or random.Random()
    seen = last_open_times if last_open_times is not None else {}
    stats = stats if stats is not None else StreamStats()
    attempt = 0
    while not stop.is_set():
        received = False
        try:
            async with connect(
                url, open_timeout=open_timeout, ping_interval=ping_interval, close_timeout=close_timeout,
                max_size=limits.WS_MAX_MESSAGE_BYTES,  # ping_timeout (20 s default) drops a silent peer
            ) as ws:
                stats.connects += 1
                log.info("kline stream connected", extra={"url": url, "connects": stats.connects})
                try:
                    while True:
                        try:
                            raw = await asyncio.wait_for(_recv_or_stop(ws, stop), idle_timeout)
                        except TimeoutError:
                            raise IdleTimeout(f"no message for {idle_timeout:g} s") from None
                        if raw is None:
                            return stats
                        received = True
                        stats.messages += 1
                        await _handle(raw, on_candle, on_bad_message, seen, stats)
                except (WebSocketException, OSError, TimeoutError):
                    raise
                except BaseException:
                    # on_candle failed or we were cancelled: with unread messages queued, websockets
                    # stops reading the socket, so a close handshake would only wait for close_timeout
                    ws.transport.abort()
                    raise
        except InvalidURI:
            raise
        except (WebSocketException, OSError, TimeoutError) as e:
            stats.disconnects += 1
            if isinstance(e, IdleTimeout):
                stats.idle_timeouts += 1
            log.warning(
                "kline stream disconnected: %r", e,
                extra={"url": url, "disconnects": stats.disconnects, "idle_timeouts": stats.idle_timeouts}
            )
        if received:
            attempt = 0
        delay = backoff.delay(attempt, rng)
        attempt += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
    return stats


async def _handle(
    raw: str | bytes,
    on_candle: OnCandle,
    on_bad_message: OnBadMessage | None,
    seen: dict[str, int],
    stats: StreamStats,
) -> None:
    try:
        event = parse_kline_message(raw)
    except KlineMessageError as e:
        stats.bad += 1
        if on_bad_message is not None:
            on_bad_message(raw, e)
        else:
            log.warning("bad kline message: %s", e)
        return
    if event is None:
        stats.ignored += 1
        return
    if not event.closed:
        stats.in_progress += 1
        return
    c = event.candle
    key = series_key(c["symbol"], c["timeframe"])
    last = seen.get(key)
    if last is not None and c["open_time"] <= last:
        stats.duplicates += 1
        return
    result = on_candle(c)
    if inspect.isawaitable(result):
        await result
    seen[key] = c["open_time"]
    stats.closed += 1
