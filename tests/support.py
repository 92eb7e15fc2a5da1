"""Helpers for tests that talk to the real broker: produce/consume through reftrain's serde,
read real candles from data/, start a service as a subprocess."""

from __future__ import annotations

import contextlib
import csv
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from reftrain.records import Candle
from reftrain.settings import PlatformSettings, kafka_client_config
from reftrain.streams import Serdes, consumer_config, producer_config
from reftrain.topics import TopicCatalogue

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"


def real_candles(file: str, symbol: str | None = None, timeframe: str | None = None,
                 limit: int | None = None) -> list[Candle]:
    """Candles of a file in data/ (simple layout), symbol/timeframe from the file name."""
    name = Path(file).name
    sym, tf = name.split("-")[0], name.split("-")[1]
    symbol, timeframe = symbol or sym, timeframe or tf
    bar = {"1m": 60_000, "1h": 3_600_000}[tf]
    out: list[Candle] = []
    with open(DATA / name) as fh:
        for row in csv.DictReader(fh):
            t = int(row["open_time_ms"])
            out.append({"symbol": symbol, "timeframe": timeframe, "open_time": t, "close_time": t + bar - 1,
                        "open": float(row["open"]), "high": float(row["high"]), "low": float(row["low"]),
                        "close": float(row["close"]), "volume": float(row["volume"]),
                        "trades": int(row["trades"]) if row.get("trades") else None, "source": name})
            if limit is not None and len(out) >= limit:
                break
    return out


def ensure_topics(platform: PlatformSettings) -> TopicCatalogue:
    cat = TopicCatalogue(platform)
    cat.ensure(AdminClient(kafka_client_config(platform)))
    return cat


def register_schemas(platform: PlatformSettings) -> None:
    """The init job's schema step for this prefix (BACKWARD_TRANSITIVE + the current schemas), one
    subject per thread: every test that uses the ``platform`` fixture pays for it."""
    from concurrent.futures import ThreadPoolExecutor

    from deploy.init.init_cluster import register_schemas as init_register
    from reftrain.serde import registry_client
    from reftrain.topics import RECORD_OF_TOPIC

    client = registry_client(platform)

    def one(logical: str) -> None:
        init_register(platform, client, "BACKWARD_TRANSITIVE", check_only=False, only=(logical,))

    with ThreadPoolExecutor(len(RECORD_OF_TOPIC)) as pool:
        list(pool.map(one, RECORD_OF_TOPIC))


def produce_records(platform: PlatformSettings, logical: str, records: Iterable[tuple[str, dict[str, Any]]]) -> int:
    """Produce (key, value) records through reftrain's serde with the content-type header."""
    cat = TopicCatalogue(platform)
    serde = Serdes(platform, cat).for_topic(logical)
    producer = Producer(producer_config(platform))
    n = 0
    for key, value in records:
        producer.produce(serde.topic, key=key.encode(), value=serde.encode(value),
                         headers=[("content-type", serde.content_type.encode())])
        producer.poll(0)
        n += 1
    assert producer.flush(30) == 0
    return n


def produce_raw(platform: PlatformSettings, topic: str, key: bytes | None, value: bytes | None,
                headers: list[tuple[str, bytes]] | None = None) -> None:
    producer = Producer(producer_config(platform))
    producer.produce(topic, key=key, value=value, headers=headers or [])
    assert producer.flush(30) == 0


def consume_all(platform: PlatformSettings, topic: str, expect: int | None = None, timeout: float = 60.0,
                idle: float = 3.0) -> list[Any]:
    """Raw messages of a physical topic (read_committed), until ``expect`` arrived or ``idle`` s pass."""
    consumer = Consumer(consumer_config(platform, f"reader-{time.time_ns()}"))
    md = consumer.list_topics(topic, timeout=10)
    parts = list(md.topics[topic].partitions) if topic in md.topics else []
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            msgs = consumer.consume(500, 0.5)
            good = [m for m in msgs if m.error() is None]
            if good:
                out.extend(good)
                last = time.monotonic()
            if expect is not None and len(out) >= expect:
                # read a little more to catch duplicates
                out.extend(m for m in consumer.consume(500, 1.0) if m.error() is None)
                break
            if expect is None and time.monotonic() - last > idle:
                break
    finally:
        consumer.close()
    return out


def decode_all(platform: PlatformSettings, logical: str, msgs: list[Any]) -> list[dict[str, Any]]:
    serde = Serdes(platform, TopicCatalogue(platform)).for_topic(logical)
    return [serde.decode(m.value()) for m in msgs]


def start_service(module: str, env: dict[str, str], extra_env: dict[str, str] | None = None,
                  log_path: Path | None = None) -> subprocess.Popen[bytes]:
    e = dict(env)
    e.update(extra_env or {})
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen([sys.executable, "-m", module], env=e, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def wait_http(port_file_or_url: str, timeout: float = 60.0) -> bool:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(port_file_or_url, timeout=2) as r:
                if r.status == 200:
                    return True
        except Exception:
            time.sleep(0.5)
    return False


def dump(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def catalog_admin(platform: PlatformSettings, sql: str) -> None:
    """Run ``sql`` as the PostgreSQL superuser of the store's catalog server (database postgres)."""
    info = dict(part.split("=", 1) for part in platform.store_catalog.split(":", 1)[1].split())
    subprocess.run(["psql", "-q", "-h", info.get("host", "127.0.0.1"), "-p", info.get("port", "5432"),
                    "-U", info.get("user", "postgres"), "-d", "postgres", "-c", sql], check=True, capture_output=True)


@contextlib.contextmanager
def catalog_unavailable(platform: PlatformSettings) -> Iterator[None]:
    """The store's catalog database refuses connections and its sessions are cut (as in a database
    restart or failover); the DuckLake data files stay. Allowed again on exit."""
    db = platform.store_catalog.split("dbname=")[1].split()[0]
    catalog_admin(platform, f"ALTER DATABASE {db} ALLOW_CONNECTIONS false")
    try:
        catalog_admin(platform, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'")
        yield
    finally:
        catalog_admin(platform, f"ALTER DATABASE {db} ALLOW_CONNECTIONS true")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_metrics(text: str) -> dict[str, float]:
    """A Prometheus text exposition as {'name{labels}': value}."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def scrape(port: int) -> dict[str, float]:
    """/metrics of a service on this machine, parsed."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return parse_metrics(r.read().decode())


def metric(port: int, name: str) -> float:
    """One sample ('name{labels}' exactly as exposed); 0 when absent or the service is not up."""
    try:
        return scrape(port).get(name, 0.0)
    except OSError:
        return 0.0


def stop_gracefully(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """SIGTERM (drain and commit), then the exit code; SIGKILL if it did not exit in ``timeout``."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
