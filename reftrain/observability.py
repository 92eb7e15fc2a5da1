"""Prometheus metrics and the /metrics, /healthz, /readyz HTTP endpoint of every service.

/healthz: the main loop has made progress recently (a stuck loop is restarted by the orchestrator).
/readyz: the service has finished start-up work (state restored, partitions assigned, model loaded).
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest

# Metrics shared by every service (label `service`); service-specific metrics live in the services.
MESSAGES_CONSUMED = Counter("reftrain_messages_consumed_total", "Messages consumed", ["service", "topic"])
MESSAGES_PRODUCED = Counter("reftrain_messages_produced_total", "Messages produced", ["service", "topic"])
DLQ_TOTAL = Counter("reftrain_dlq_total", "Messages sent to a dead-letter topic", ["service", "topic", "reason"])
TRANSACTIONS = Counter("reftrain_transactions_total", "Kafka transactions", ["service", "outcome"])
BATCH_SECONDS = Histogram("reftrain_batch_seconds", "Time to process and commit one consumed batch",
                          ["service"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
CONSUMER_LAG = Gauge("reftrain_consumer_lag", "High watermark minus position", ["service", "topic", "partition"])
SESSION_RESTARTS = Counter("reftrain_session_restarts_total",
                           "Main-loop sessions ended by a transient error and restarted in-process",
                           ["service", "error"])
READY = Gauge("reftrain_ready", "1 when the service is ready", ["service"])
RESTORED_STATE_KEYS = Gauge("reftrain_restored_state_keys", "State keys restored from the changelog", ["service"])


class Health:
    """Liveness heartbeat and readiness flag, shared by the loop and the HTTP endpoint."""

    def __init__(self, service: str, stale_after_s: float = 60.0) -> None:
        self.service = service
        self.stale_after_s = stale_after_s
        self._beat = time.monotonic()
        self._ready = False
        self.detail: dict[str, Any] = {}

    def beat(self) -> None:
        self._beat = time.monotonic()

    def set_ready(self, ready: bool) -> None:
        self._ready = ready
        READY.labels(self.service).set(1 if ready else 0)

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def alive(self) -> bool:
        return time.monotonic() - self._beat < self.stale_after_s


#: Seconds a client may take to send its request or read the answer: a client that connects and
#: sends nothing (slowloris) would otherwise hold a handler thread forever.
HTTP_SOCKET_TIMEOUT_S = 5.0


class _Handler(BaseHTTPRequestHandler):
    health: Health
    timeout = HTTP_SOCKET_TIMEOUT_S  # socket timeout of each connection (StreamRequestHandler)

    def do_GET(self) -> None:
        if self.path.startswith("/metrics"):
            self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
        elif self.path.startswith("/healthz"):
            ok = self.health.alive
            self._send(200 if ok else 503, b"ok\n" if ok else b"stale\n")
        elif self.path.startswith("/readyz"):
            ok = self.health.ready
            self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
        else:
            self._send(404, b"not found\n")

    def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


def serve_http(health: Health, host: str, port: int, timeout_s: float = HTTP_SOCKET_TIMEOUT_S) -> ThreadingHTTPServer:
    """Start the endpoint in a daemon thread; port 0 picks a free one (see server.server_port).
    ``host`` is loopback by default (settings.HTTP_HOST); containers widen it for their probes."""
    handler = type("Handler", (_Handler,), {"health": health, "timeout": timeout_s})
    server = ThreadingHTTPServer((host, port), handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
