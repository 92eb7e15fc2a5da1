"""Helpers of the ingest integration tests: slices of the real data files, an independent reader of
them (the expectation must not come from the code under test), the store and topic as plain lists,
batch resampling and batch indicators to compare with the streaming results."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from reftrain.records import Candle
from reftrain.settings import PlatformSettings
from reftrain.store import CANDLE_COLS, LAKE, Store
from reftrain.topics import CANDLES, TopicCatalogue
from tests.support import DATA, consume_all, decode_all, start_service

BTC = "BTCUSDT-1m-2025-09-22_2025-09-25.csv"
ETH = "ETHUSDT-1m-2025-09-22_2025-09-25.csv"
TF_MS = {"1m": 60_000, "5m": 300_000, "15m": 900_000, "1h": 3_600_000}


def slice_file(tmp: Path, name: str, rows: int, skip: int = 0) -> Path:
    """The header and ``rows`` data lines (after ``skip``) of a real file in data/, under a name
    that keeps the SYMBOL-TF- prefix the service reads the series from."""
    lines = (DATA / name).read_text().splitlines(keepends=True)
    symbol, tf = name.split("-")[:2]
    out = tmp / f"{symbol}-{tf}-slice{skip}_{rows}.csv"
    out.write_text("".join([lines[0], *lines[1 + skip:1 + skip + rows]]))
    return out


def as_binance_csv(src: Path, out_dir: Path) -> Path:
    """The same real rows in Binance's 12-column kline layout, no header (as data.binance.vision
    ships them). The columns ingest does not read (quote volume, taker volumes) are left 0."""
    symbol, tf = src.name.split("-")[:2]
    out = out_dir / f"{symbol}-{tf}-binance.csv"
    rows = []
    for line in src.read_text().splitlines()[1:]:
        t, o, h, low, c, v, n = line.split(",")
        rows.append(",".join([t, o, h, low, c, v, str(int(t) + TF_MS[tf] - 1), "0", n, "0", "0", "0"]))
    out.write_text("\n".join(rows) + "\n")
    return out


def as_parquet(src: Path, out_dir: Path) -> Path:
    """The same real rows (simple layout) as a Parquet file, written by DuckDB."""
    import duckdb

    symbol, tf = src.name.split("-")[:2]
    out = out_dir / f"{symbol}-{tf}-simple.parquet"
    df = pd.read_csv(src, dtype={"open_time_ms": "int64", "trades": "Int64"})  # pandas 3: round-trip floats by default
    con = duckdb.connect()
    con.register("df", df)
    con.execute(f"COPY df TO '{out}' (FORMAT parquet)")
    con.close()
    return out


def read_simple(path: Path) -> list[Candle]:
    """Candles of a clean simple-layout file, parsed here (independently of services.ingest)."""
    symbol, tf = path.name.split("-")[:2]
    lines = path.read_text().splitlines()
    cols = lines[0].split(",")
    out: list[Candle] = []
    for line in lines[1:]:
        row = dict(zip(cols, line.split(","), strict=True))
        t = int(row["open_time_ms"])
        out.append({"symbol": symbol, "timeframe": tf, "open_time": t, "close_time": t + TF_MS[tf] - 1,
                    "open": float(row["open"]), "high": float(row["high"]), "low": float(row["low"]),
                    "close": float(row["close"]), "volume": float(row["volume"]),
                    "trades": int(row["trades"]) if row.get("trades") else None, "source": path.name})
    return out


def values(c: Mapping[str, Any]) -> tuple[Any, ...]:
    return (c["symbol"], c["timeframe"], c["open_time"], c["close_time"], c["open"], c["high"], c["low"],
            c["close"], c["volume"], c.get("trades"))


def store_rows(platform: PlatformSettings) -> list[dict[str, Any]]:
    """Every candle row in the store (duplicates included), ordered by series and time."""
    store = Store.from_settings(platform, create=False)
    try:
        rows = store.query(f"SELECT {', '.join(CANDLE_COLS)} FROM {LAKE}.candles "
                           "ORDER BY symbol, timeframe, open_time")
        return [dict(zip(CANDLE_COLS, r, strict=True)) for r in rows]
    finally:
        store.close()


def store_indicators(platform: PlatformSettings, symbol: str, tf: str) -> dict[int, dict[str, float | None]]:
    store = Store.from_settings(platform, create=False)
    try:
        rows = store.query(f"SELECT open_time, name, value FROM {LAKE}.candle_indicators "
                           "WHERE symbol = ? AND timeframe = ?", [symbol, tf])
    finally:
        store.close()
    out: dict[int, dict[str, float | None]] = {}
    for t, name, value in rows:
        assert name not in out.setdefault(int(t), {}), f"indicator {name} stored twice at {t}"
        out[int(t)][name] = value
    return out


def quarantine_rows(platform: PlatformSettings) -> list[dict[str, Any]]:
    store = Store.from_settings(platform, create=False)
    try:
        rows = store.query(f"SELECT source, reason, detail, payload FROM {LAKE}.quarantine")
    finally:
        store.close()
    return [{"source": s, "reason": r, "detail": d, "payload": json.loads(p)} for s, r, d, p in rows]


def topic_messages(platform: PlatformSettings, expect: int | None = None) -> list[dict[str, Any]]:
    """Every message of ``candles``: key, partition, headers and the decoded value."""
    topic = TopicCatalogue(platform).name(CANDLES)
    msgs = consume_all(platform, topic, expect=expect, timeout=60, idle=3.0)
    decoded = decode_all(platform, CANDLES, msgs)
    return [{"key": m.key().decode(), "partition": m.partition(), "offset": m.offset(),
             "headers": dict(m.headers() or []), "value": v} for m, v in zip(msgs, decoded, strict=True)]


def dlq_messages(platform: PlatformSettings, expect: int | None = None) -> list[Any]:
    return consume_all(platform, TopicCatalogue(platform).dlq(CANDLES), expect=expect, timeout=30, idle=3.0)


def assert_exactly_once(expected: list[Candle], stored: list[dict[str, Any]], published: list[dict[str, Any]],
                        series: str) -> None:
    """Store and topic each hold every expected candle of ``series`` once, with the source's values."""
    symbol, tf = series.split(":")
    want = [values(c) for c in expected]
    got_store = [values(r) for r in stored if r["symbol"] == symbol and r["timeframe"] == tf]
    got_topic = [values(m["value"]) for m in published if m["key"] == series]
    for name, got in (("store", got_store), ("topic", got_topic)):
        dups = [k for k, n in Counter(g[2] for g in got).items() if n > 1]
        assert not dups, f"{series}: {len(dups)} duplicate open_times in the {name}, e.g. {dups[:3]}"
        missing = sorted({w[2] for w in want} - {g[2] for g in got})
        extra = sorted({g[2] for g in got} - {w[2] for w in want})
        assert not missing and not extra, f"{series} {name}: missing {missing[:5]} extra {extra[:5]}"
        assert sorted(got, key=lambda v: v[2]) == want, f"{series}: {name} values differ from the source"
    times = [m["value"]["open_time"] for m in published if m["key"] == series]
    assert times == sorted(times), f"{series}: published out of order"


def batch_resample(one_minute: list[dict[str, Any]], tf: str) -> list[tuple[Any, ...]]:
    """Complete buckets only (pandas groupby), volume summed exactly (fsum)."""
    ms = TF_MS[tf]
    df = pd.DataFrame(one_minute).sort_values("open_time")
    df["bucket"] = df["open_time"] - df["open_time"] % ms
    g = df.groupby("bucket")
    agg = pd.DataFrame({
        "n": g["open_time"].count(), "open": g["open"].first(), "high": g["high"].max(),
        "low": g["low"].min(), "close": g["close"].last(), "volume": g["volume"].agg(math.fsum),
        "trades": g["trades"].sum(), "trades_missing": g["trades"].apply(lambda s: s.isna().any()),
    })
    agg = agg[agg["n"] == ms // 60_000]
    sym = one_minute[0]["symbol"]
    return [(sym, tf, int(b), int(b) + ms - 1, r.open, r.high, r.low, r.close, r.volume,
             None if r.trades_missing else int(r.trades)) for b, r in agg.iterrows()]


def batch_indicators(closes: list[float], sma: int, ema: int) -> tuple[list[float | None], list[float | None]]:
    """SMA by pandas rolling mean; EMA by its definition (seeded with the SMA of the first N)."""
    s = pd.Series(closes, dtype="float64").rolling(sma).mean()
    sma_out = [None if math.isnan(x) else float(x) for x in s]
    ema_out: list[float | None] = [None] * min(len(closes), ema - 1)
    if len(closes) >= ema:
        a = 2.0 / (ema + 1)
        e = math.fsum(closes[:ema]) / ema
        ema_out.append(e)
        for c in closes[ema:]:
            e = a * c + (1 - a) * e
            ema_out.append(e)
    return sma_out, ema_out


def assert_close(got: list[float | None], want: list[float | None], rel: float = 1e-9) -> None:
    assert [g is None for g in got] == [w is None for w in want]
    worst = max((abs(g - w) / abs(w) for g, w in zip(got, want, strict=True) if g is not None and w is not None),
                default=0.0)
    assert worst <= rel, worst


# -- the service as a process --------------------------------------------------------------------
def start_ingest(env: dict[str, str], extra: dict[str, str], log_path: Path, port: int) -> subprocess.Popen[bytes]:
    e = {"HTTP_PORT": str(port), "HTTP_HOST": "127.0.0.1", "INGEST_SMA": "20", "INGEST_EMA": "20", **extra}
    return start_service("services.ingest", env, e, log_path)


def run_in_terminal(env: dict[str, str], extra: dict[str, str], port: int, timeout: float) -> tuple[int, str]:
    """Run the service with stdout/stderr on a pseudo-terminal (as a person at a shell would)."""
    import fcntl
    import pty
    import select
    import struct
    import sys
    import termios

    from tests.support import REPO

    master, slave = pty.openpty()
    # A person's terminal has a size; a bare pty is 0x0, and tqdm (>= 4.70) draws nothing in 0 columns.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    e = {**env, "HTTP_PORT": str(port), "HTTP_HOST": "127.0.0.1", "INGEST_SMA": "20", "INGEST_EMA": "20", **extra}
    proc = subprocess.Popen([sys.executable, "-m", "services.ingest"], env=e, cwd=REPO, stdout=slave,
                            stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        rc = wait_exit(proc, max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
    return rc, out.decode("utf-8", "replace")


def records_in(text: str) -> list[dict[str, Any]]:
    """JSON log records in terminal output (lines may share a line with progress-bar redraws)."""
    out = []
    for part in text.replace("\r", "\n").split("\n"):
        part = part.strip()
        if part.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(part))
    return out


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


def wait_for(pred: Any, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None,
             log_path: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"service exited ({proc.returncode}) before {what}:\n{tail(log_path)}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail(log_path)}")


def wait_exit(proc: subprocess.Popen[bytes], timeout: float, log_path: Path | None = None) -> int:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"service did not exit within {timeout}s\n{tail(log_path)}") from None


def sigterm(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGTERM)


def tail(log_path: Path | None, n: int = 30) -> str:
    if log_path is None or not log_path.exists():
        return ""
    return "\n".join(log_path.read_text(errors="replace").splitlines()[-n:])


def log_records(log_path: Path) -> list[dict[str, Any]]:
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def metric(text: str, name: str, labels: str = "") -> float:
    """Value of one sample in a Prometheus text exposition (0 when absent)."""
    want = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0
