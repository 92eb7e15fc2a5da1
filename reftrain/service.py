"""Service wiring shared by every ``services/<name>/__main__.py``: settings, JSON logs, the
/metrics /healthz /readyz endpoint, and SIGTERM/SIGINT -> a stop event the main loop honours
(drain, commit, exit 0)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Protocol

from reftrain import logs, settings
from reftrain import observability as obs
from reftrain.observability import Health, serve_http
from reftrain.settings import PlatformSettings
from reftrain.spec import ServiceSpec
from reftrain.topics import TopicCatalogue

if TYPE_CHECKING:
    from reftrain.store import Store

log = logging.getLogger(__name__)


class Runnable(Protocol):
    """What a service body runs: a ``reftrain.streams.StreamApp`` (stop event, health)."""

    def run(self, stop: threading.Event, health: Health) -> None: ...


@dataclass
class Runtime:
    service: str
    platform: PlatformSettings
    health: Health
    stop: threading.Event
    catalogue: TopicCatalogue
    http_port: int

    def run_with_store(self, build: Callable[[Store], Runnable]) -> None:
        """Open the store, build the app on it, run it until stopped, close the store: the body
        of every service that reads or writes the lake."""
        from reftrain.store import Store  # here: ``--help`` answers without loading DuckDB

        store = Store.from_settings(self.platform)
        try:
            build(store).run(self.stop, self.health)
        finally:
            store.close()


def restart_on(
    errors: tuple[type[BaseException], ...],
    session: Callable[[], None],
    *,
    service: str,
    stop: threading.Event,
    health: Health,
    first_delay_s: float = 0.5,
    max_delay_s: float = 15.0,
    healthy_after_s: float = 60.0,
) -> None:
    """Run ``session`` until it returns or ``stop`` is set; when it raises one of ``errors`` (an
    outage: broker, registry or store away), report not-ready, count it, wait and run it again.

    The wait doubles from ``first_delay_s`` up to ``max_delay_s`` and starts over after a session
    that lasted ``healthy_after_s``. Riding out an outage in-process keeps the service's state and
    avoids an orchestrator's crash-loop back-off (minutes under Kubernetes) for a 30 s outage; any
    other exception is a bug and ends the service."""
    delay = first_delay_s
    while not stop.is_set():
        started = time.monotonic()
        try:
            session()
            return
        except errors as exc:
            health.set_ready(False)
            obs.SESSION_RESTARTS.labels(service, type(exc).__name__).inc()
            if time.monotonic() - started >= healthy_after_s:
                delay = first_delay_s
            log.warning("session ended by a transient error; restarting", extra={
                "error": f"{type(exc).__name__}: {exc}"[:500], "retry_in_s": delay})
            health.beat()  # backing off is not being stuck: keep /healthz (liveness) green
            stop.wait(delay)
            health.beat()
            delay = min(delay * 2, max_delay_s)


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


def main(spec: ServiceSpec, body: Callable[[Runtime], None], argv: list[str] | None = None) -> None:
    """The entry point of ``python -m services.<name>``: ``--help`` prints the spec (what the service
    consumes and produces, its port and its settings with their env names) and exits 0; any other
    argument is refused (everything is configured by environment); no argument runs the service."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        sys.stdout.write(spec.help_text())
        sys.exit(0)
    if args:
        sys.stderr.write(f"usage: python -m {spec.module} [--help]  (settings come from the environment: "
                         f"{spec.env_prefix}*, see --help)\n")
        sys.exit(2)
    sys.exit(run(spec.name, body, spec.default_port))
