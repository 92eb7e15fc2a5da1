"""Failpoints: SIGKILL this process at a named point of a protocol, for fault tests.

``FAILPOINT=<stage>:<n>`` kills the process the n-th time it reaches ``<stage>``, so a test can
land a kill -9 exactly inside a transaction commit instead of hoping a random kill hits one.
Off (empty) in production; an unknown stage is a configuration error, not a silent no-op.
"""

from __future__ import annotations

import logging
import os
import signal
from collections import Counter

from reftrain.errors import ConfigError

log = logging.getLogger(__name__)


class FailpointHit(Exception):
    """Raised instead of killing the process when the failpoint was made with ``kill=False``
    (unit tests that run the protocol in-process)."""


class Failpoint:
    def __init__(self, spec: str, stages: tuple[str, ...], setting: str = "FAILPOINT", *, kill: bool = True) -> None:
        self.stage: str | None = None
        self.n = 0
        self.kill = kill
        self._hits: Counter[str] = Counter()
        if not spec:
            return
        stage, _, n = spec.partition(":")
        if stage not in stages or not n.isdigit() or int(n) < 1:
            raise ConfigError(f"{setting} must be '<stage>:<n>' with stage in {stages} and n >= 1, got {spec!r}")
        self.stage, self.n = stage, int(n)

    @property
    def armed(self) -> bool:
        return self.stage is not None

    def reached(self, stage: str) -> None:
        """Count ``stage``; on its n-th time, SIGKILL this process (no cleanup, as a crash), or
        raise FailpointHit when ``kill`` is False."""
        if stage != self.stage:
            return
        self._hits[stage] += 1
        if self._hits[stage] == self.n:
            log.warning("failpoint reached: killing this process", extra={"stage": stage})
            if self.kill:
                os.kill(os.getpid(), signal.SIGKILL)
            raise FailpointHit(stage)
