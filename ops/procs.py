"""Service processes: start one per instance, watch them, stop them cleanly.

Each service runs in its own session (process group) so a Ctrl-C at the terminal reaches only the
orchestrator, which then stops the services in an orderly way (SIGTERM: drain and commit; SIGKILL
only after a grace period). On Linux each child also asks the kernel for SIGTERM when its parent
dies (PR_SET_PDEATHSIG), so even a SIGKILLed orchestrator leaves no service behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from ops.stages import REPO, Stage

PR_SET_PDEATHSIG = 1


class Interrupted(BaseException):
    """SIGINT or SIGTERM reached an ops command. Not an Exception: no ``except Exception`` (around
    a metrics scrape, say) may swallow a Ctrl-C."""


@contextlib.contextmanager
def signals_handled(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """SIGINT and SIGTERM go to ``handler`` inside the block; the previous handlers come back after."""
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def signals_raise() -> contextlib.AbstractContextManager[None]:
    """SIGINT and SIGTERM raise Interrupted in the main thread, so every path goes through the
    caller's cleanup (stop the services, the stack it started)."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise Interrupted(signal.Signals(signum).name)

    return signals_handled(handler)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A port the kernel says is free now (a tiny race with other processes is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServiceProcess:
    """One running instance of a stage."""

    stage: Stage
    instance: str
    port: int
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    stopped_at: float = 0.0
    #: Every pid this instance had (restarts included) and the exit codes that caused restarts.
    all_pids: list[int] = field(default_factory=list)
    crashes: list[int] = field(default_factory=list)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.instance

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        self.proc = subprocess.Popen([sys.executable, "-m", self.stage.module], cwd=REPO, env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=preexec)
        self.started_at = time.time()
        self.all_pids.append(self.proc.pid)

    def restart(self) -> None:
        """Start again after a crash (what an orchestrator does); the log is appended to."""
        rc = self.returncode()
        if rc is not None:
            self.crashes.append(rc)
        self.close_log()
        self.start()

    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self, timeout: float = 2.0) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=timeout) as r:
                return bool(r.status == 200)
        except Exception:
            return False

    def signal(self, sig: int) -> None:
        if self.running() and self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def stop_all(procs: list[ServiceProcess], grace_s: float = 30.0) -> dict[str, str]:
    """SIGTERM every running instance, wait up to ``grace_s``, SIGKILL the rest, reap all.

    Returns instance -> how it ended ("exit 0", "killed after 30 s", ...), for the report.
    """
    outcome: dict[str, str] = {}
    for p in procs:
        if not p.running():
            rc = p.returncode()
            outcome[p.instance] = "not started" if rc is None else f"had exited ({rc})"
    for p in procs:
        p.signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(p.running() for p in procs):
        time.sleep(0.2)
    for p in procs:
        if p.running():
            p.signal(signal.SIGKILL)
            outcome[p.instance] = f"killed after {grace_s:.0f} s"
    for p in procs:
        if p.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                rc = p.proc.wait(timeout=10)
                outcome.setdefault(p.instance, f"exit {rc}" if rc >= 0 else f"signal {-rc}")
        p.stopped_at = p.stopped_at or time.time()
        p.close_log()
    return outcome


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a reaped child is gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True
