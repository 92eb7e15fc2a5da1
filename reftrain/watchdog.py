"""A watchdog for calls into librdkafka that may block past their own timeout.

librdkafka 2.12 can ignore the timeout of ``send_offsets_to_transaction`` while the group
coordinator is unavailable (confluentinc/librdkafka#5456, #5511): the main thread then sits in C
code, deaf to SIGTERM, and the process neither works nor dies (seen once in the fault campaign,
for more than 10 minutes after the broker was back). A liveness probe notices the stale
heartbeat, but docker compose does not restart unhealthy containers. So a guarded call that
outlives its timeout plus a grace period ends the process with exit code 70 (EX_SOFTWARE): any
restart policy brings it back, and Kafka's transactions make the restart safe (the new instance,
same ``transactional.id``, fences the stuck one and aborts its open transaction).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

#: Exit status of a process ended by the watchdog (EX_SOFTWARE).
STUCK_EXIT_CODE = 70


def _exit_stuck(what: str, elapsed_s: float) -> None:
    log.critical("a Kafka call outlived its timeout; exiting so the process is restarted",
                 extra={"call": what, "elapsed_s": round(elapsed_s, 1), "exit_code": STUCK_EXIT_CODE})
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(STUCK_EXIT_CODE)  # the stuck thread holds the GIL-free C call; sys.exit would wait on it


class Watchdog:
    """Guards blocking calls: ``with watchdog.guard("commit", 60): ...`` calls ``on_expire`` (by
    default: log and ``os._exit(70)``) if the block has not finished ``timeout_s + grace_s`` after
    it began. One background thread, started on first use, checks once per ``tick_s``."""

    def __init__(self, grace_s: float = 30.0, tick_s: float = 1.0,
                 on_expire: Callable[[str, float], None] = _exit_stuck) -> None:
        self.grace_s = grace_s
        self.tick_s = tick_s
        self.on_expire = on_expire
        self._lock = threading.Lock()
        self._active: dict[int, tuple[str, float, float]] = {}  # token -> (what, started, deadline)
        self._next = 0
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def guard(self, what: str, timeout_s: float) -> Iterator[None]:
        now = time.monotonic()
        with self._lock:
            token = self._next
            self._next += 1
            self._active[token] = (what, now, now + timeout_s + self.grace_s)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="kafka-call-watchdog", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._active.pop(token, None)

    def _watch(self) -> None:
        while True:
            time.sleep(self.tick_s)
            now = time.monotonic()
            with self._lock:
                expired = [(tok, what, now - started) for tok, (what, started, deadline) in self._active.items()
                           if now > deadline]
                for tok, _, _ in expired:
                    self._active.pop(tok, None)
            for _, what, elapsed in expired:
                self.on_expire(what, elapsed)
