"""Helpers of the reliability tests: services as real subprocesses watched through their HTTP
endpoints, a producer that reports where each raw message landed, dead-letter entries as plain
records, and the bad messages of the corpus.

Why raw bytes and delivery coordinates: a DLQ entry must name the exact source message
(``source.topic/partition/offset`` headers), so every bad message is produced here byte for byte and
its offset recorded, then looked up in ``<topic>.dlq``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from ops.kafkaview import read_messages, read_topic
from ops.procs import free_port
from ops.promtext import Scrape, scrape
from reftrain.settings import PlatformSettings
from reftrain.streams import MAX_MESSAGE_BYTES, producer_config

REPO = Path(__file__).resolve().parents[2]

#: The broker's default ``message.max.bytes`` (Kafka 4.1: 1 MiB + 12), which deploy/local/stack.sh
#: does not change; topics inherit it as ``max.message.bytes``.
BROKER_MAX_MESSAGE_BYTES = 1_048_588
#: ``message.max.bytes`` of every producer built by reftrain.streams.producer_config.
SERVICE_PRODUCER_MAX_BYTES = MAX_MESSAGE_BYTES


class Service:
    """One service process (``python -m services.<name>``) with its own HTTP port and log file."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, extra: dict[str, str] | None = None,
                 instance: str | None = None) -> None:
        self.name = name
        self.instance = instance or name
        self.port = free_port()
        self.log_path = log_dir / f"{self.instance}.log"
        self.env = {**env, **(extra or {}), "HTTP_HOST": "127.0.0.1", "HTTP_PORT": str(self.port),
                    "INSTANCE_ID": self.instance, "PYTHONUNBUFFERED": "1"}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", f"services.{self.name}"], cwd=REPO, env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self, path: str) -> int:
        """HTTP status of ``path`` (0 when the endpoint does not answer)."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=3) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except Exception:
            return 0

    def metrics(self) -> Scrape:
        return scrape(self.url + "/metrics")

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (drain and commit), SIGKILL after ``timeout``; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def tail(self, n: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def assert_healthy(self) -> None:
        """Still running (no crash loop), live and ready: what an orchestrator's probes see."""
        assert self.running(), f"{self.instance} exited with {self.proc and self.proc.returncode}:\n{self.tail()}"
        assert self.status("/healthz") == 200, f"{self.instance} /healthz is not 200:\n{self.tail()}"
        assert self.status("/readyz") == 200, f"{self.instance} /readyz is not 200:\n{self.tail()}"


def wait_for(cond: Callable[[], bool], timeout: float, what: str, services: Sequence[Service] = (),
             every: float = 0.5) -> None:
    """Poll ``cond`` until true; fail at once if one of ``services`` died meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        for s in services:
            if not s.running():
                raise AssertionError(f"{s.instance} exited ({s.proc and s.proc.returncode}) while waiting for "
                                     f"{what}:\n{s.tail()}")
        time.sleep(every)
    details = "\n".join(f"--- {s.instance}\n{s.tail(15)}" for s in services)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{details}")


@dataclass(frozen=True)
class Landed:
    """Where the broker stored a produced message."""

    topic: str
    partition: int
    offset: int


class RawProducer:
    """Produces exact bytes and returns where each message landed (delivery confirmed). Its
    ``message.max.bytes`` is the broker's, so messages near the broker's limit can be sent."""

    def __init__(self, platform: PlatformSettings) -> None:
        self.producer = Producer(producer_config(platform, **{"message.max.bytes": BROKER_MAX_MESSAGE_BYTES + 100_000,
                                                              "compression.type": "none"}))

    def send(self, topic: str, key: bytes | None, value: bytes | None,
             headers: Sequence[tuple[str, bytes]] = ()) -> Landed:
        out: list[Landed | KafkaError] = []

        def report(err: KafkaError | None, msg: Message) -> None:
            out.append(err if err is not None else Landed(msg.topic() or "", msg.partition() or 0, msg.offset() or 0))

        self.producer.produce(topic, key=key, value=value, headers=list(headers), on_delivery=report)
        assert self.producer.flush(30) == 0, "delivery not confirmed"
        assert out and isinstance(out[0], Landed), f"delivery failed: {out}"
        return out[0]


@dataclass
class DlqEntry:
    """One dead-letter message: original key and value, error and source headers."""

    key: bytes | None
    value: bytes | None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def source(self) -> tuple[str, int, int]:
        h = self.headers
        return h.get("source.topic", ""), int(h.get("source.partition", "-1")), int(h.get("source.offset", "-1"))


def read_dlq(platform: PlatformSettings, topic: str) -> list[DlqEntry]:
    """Every committed message of a dead-letter topic, keys and values as bytes (DLQ copies can be
    nearly 1 MB each: a large fetch size)."""
    messages, _complete = read_messages(platform, topic, timeout=60, **{"fetch.max.bytes": 60_000_000})
    return [DlqEntry(m.key(), m.value(), {k: (v or b"").decode("utf-8", "replace") for k, v in m.headers() or []})
            for m in messages]


def dlq_count(platform: PlatformSettings, topic: str) -> int:
    return len(read_topic(platform, topic, None, timeout=30).messages)


# -- bad bytes ----------------------------------------------------------------------------------------
def wire(schema_id: int, payload: bytes) -> bytes:
    """Confluent wire format: magic byte 0, big-endian schema id, Avro body."""
    return struct.pack(">bI", 0, schema_id) + payload


def schema_id_of(data: bytes) -> int:
    return int(struct.unpack_from(">bI", data)[1])


def oversized(valid: bytes, total: int) -> bytes:
    """A valid record followed by incompressible filler up to ``total`` bytes: it decodes to
    'trailing bytes', and it stays big on the wire (random filler does not compress)."""
    return valid + os.urandom(total - len(valid))


def series_counts(values: Iterable[dict[str, Any]], *keys: str) -> dict[tuple[Any, ...], int]:
    out: dict[tuple[Any, ...], int] = {}
    for v in values:
        k = tuple(v[x] for x in keys)
        out[k] = out.get(k, 0) + 1
    return out
