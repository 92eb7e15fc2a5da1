"""Service wiring shared by every ``services/<name>/__main__.py``: settings, JSON logs, the
/metrics /healthz /readyz endpoint, and SIGTERM/SIGINT -> a stop event the main loop honours
(drain, commit, exit 0)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from reftrain import logs, settings
from reftrain.observability import Health, serve_http
from reftrain.settings import PlatformSettings
from reftrain.topics import TopicCatalogue

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    service: str
    platform: PlatformSettings
    health: Health
    stop: threading.Event
    catalogue: TopicCatalogue
    http_port: int


def run(service: str, body: Callable[[Runtime], None], default_port: int = 0) -> int:
    """Run ``body`` until it returns or a signal sets ``runtime.stop``; returns the exit code."""
    platform = settings.platform()
    logs.setup(service, platform.log_level, platform.log_format)
    health = Health(service)
    port = default_port if platform.http_port is None else platform.http_port
    server = serve_http(health, platform.http_host, port)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal received; draining", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    runtime = Runtime(service, platform, health, stop, TopicCatalogue(platform), server.server_port)
    log.info("starting", extra={"http_port": server.server_port, "bootstrap": platform.kafka_bootstrap_servers})
    try:
        body(runtime)
    except Exception:
        log.exception("service failed")
        return 1
    finally:
        server.shutdown()
    log.info("stopped cleanly")
    return 0


def main(service: str, body: Callable[[Runtime], None], default_port: int = 0) -> None:
    sys.exit(run(service, body, default_port))
