"""The process supervisor an orchestrator would be: services run as processes from a snapshot of the
code, an exited one is restarted (at once after a planned exit, with back-off after an unplanned
one, which is counted), and a stuck one is killed by an emulated Kubernetes liveness probe."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ops.faults.config import LIVENESS_FAILURES, LIVENESS_PERIOD_S, STARTUP_GRACE_S
from ops.faults.results import Exit
from ops.procs import ServiceProcess, _die_with_parent, free_port
from ops.stages import BY_NAME, REPO

CODE = ("reftrain", "services", "schemas")


def snapshot_code(dest: Path) -> Path:
    """Copy the code the services run (reftrain/, services/, schemas/) into ``dest``: every restart
    during the campaign then runs the same code, even while the working tree changes (a restart
    that picked up an edited changelog topic name once lost the services' state mid-campaign)."""
    for name in CODE:
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                        dirs_exist_ok=True)
    return dest


@dataclass
class SnapshotProcess(ServiceProcess):
    """ops.procs.ServiceProcess, started from the campaign's code snapshot instead of the work tree."""

    code_dir: Path = REPO

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in close_log()
        env = {**self.env, "PYTHONPATH": str(self.code_dir)}
        self.proc = subprocess.Popen([sys.executable, "-m", self.stage.module], cwd=self.code_dir, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        self.started_at = time.time()


@dataclass
class Instance:
    """A supervised service instance. ``planned`` marks an exit the campaign caused (kill -9, a
    failpoint, a removal): restarted at once (or not at all, ``keep`` False) and not a crash."""

    proc: ServiceProcess
    base_env: dict[str, str]
    keep: bool = True
    planned: bool = False
    once_env: dict[str, str] = field(default_factory=dict)
    restart_at: float | None = None
    backoff: float = 1.0
    started: float = 0.0
    done: bool = False  # an ingest chunk that finished (exit 0)
    live_failures: int = 0
    liveness_kill: bool = False
    next_probe: float = 0.0
    answered: bool = False  # /healthz answered once since the start (the startup probe passed)

    @property
    def name(self) -> str:
        return self.proc.instance

    def start(self) -> None:
        self.proc.close_log()
        self.proc.env = {**self.base_env, **self.once_env}
        self.once_env = {}
        self.proc.start()
        self.started = time.monotonic()
        self.restart_at = None
        self.live_failures = 0
        self.answered = False
        self.next_probe = self.started + LIVENESS_PERIOD_S


def healthz(port: int, timeout: float) -> bool:
    """GET /healthz of a local service answered 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as r:
            return bool(r.status == 200)
    except Exception:
        return False


class Supervisor:
    """Starts instances and keeps them running; ``on_tick`` is the owner's hook, called on every
    tick (the campaign starts its next replay chunk there)."""

    def __init__(self, say: Callable[[str], None], log_dir: Path) -> None:
        self.say = say
        self.log_dir = log_dir
        self.code_dir = REPO
        self.instances: dict[str, Instance] = {}
        self.exits: list[Exit] = []
        self.ingest: Instance | None = None  # the running (or last) replay chunk

    def on_tick(self) -> None:
        """Called at the end of every ``tick``."""

    def start(self, stage: str, instance: str, env_of: Callable[[int], dict[str, str]], keep: bool = True) -> Instance:
        """Start ``instance`` of ``stage`` on a free port; ``env_of(port)`` is its environment."""
        port = free_port()
        env = env_of(port)
        proc = SnapshotProcess(BY_NAME[stage], instance, port, self.log_dir / f"{instance}.log", env,
                               code_dir=self.code_dir)
        inst = Instance(proc, env, keep=keep)
        self.instances[instance] = inst
        inst.start()
        return inst

    def tick(self) -> None:
        """Restart exited services (at once after a planned exit, with back-off otherwise), then
        ``on_tick``. A replay chunk that exited 0 is done, not restarted."""
        now = time.monotonic()
        for inst in list(self.instances.values()):
            if inst.done:
                continue
            if inst.proc.running():
                if now - inst.started > 60:
                    inst.backoff = 1.0
                if now >= inst.next_probe:
                    self._liveness(inst, now)
                continue
            if inst.restart_at is None:
                rc = inst.proc.returncode()
                is_chunk = inst.proc.stage.replay
                if is_chunk and rc == 0 and not inst.planned:
                    inst.done = True
                    self.exits.append(Exit(time.time(), inst.name, rc, True))
                    continue
                self.exits.append(Exit(time.time(), inst.name, rc, inst.planned, inst.liveness_kill))
                inst.liveness_kill = False
                if inst.planned:
                    inst.planned = False
                    if not inst.keep:
                        inst.done = True
                        continue
                    inst.restart_at = now
                else:
                    self.say(f"  ! {inst.name} exited unplanned ({rc}); restarting in {inst.backoff:.0f} s")
                    inst.restart_at = now + inst.backoff
                    inst.backoff = min(inst.backoff * 2, 30.0)
            if inst.restart_at is not None and now >= inst.restart_at:
                inst.start()
        self.on_tick()

    def _liveness(self, inst: Instance, now: float) -> None:
        """One probe of the emulated Kubernetes liveness check (see LIVENESS_*)."""
        inst.next_probe = now + LIVENESS_PERIOD_S
        if healthz(inst.proc.port, 5):
            inst.answered = True
            inst.live_failures = 0
            return
        if not inst.answered and now - inst.started < STARTUP_GRACE_S:
            return
        inst.live_failures += 1
        if inst.live_failures >= LIVENESS_FAILURES:
            self.say(f"  ! {inst.name}: /healthz failed {inst.live_failures} times: liveness restart")
            inst.liveness_kill = True
            inst.proc.signal(signal.SIGKILL)

    def sleep(self, seconds: float) -> None:
        """Sleep while supervising."""
        deadline = time.monotonic() + seconds
        while True:
            self.tick()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.25, left))

    def wait(self, cond: Callable[[], bool], timeout: float, every: float = 1.0) -> bool:
        """Wait for ``cond`` while supervising; its last value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return True
            self.sleep(every)
        return cond()

    def consumers(self) -> list[Instance]:
        return [i for i in self.instances.values() if not i.proc.stage.replay and not i.done]

    def not_ready(self) -> list[Instance]:
        insts = self.consumers()
        if self.ingest is not None and not self.ingest.done:
            insts.append(self.ingest)
        return [i for i in insts if not (i.proc.running() and i.proc.ready())]

    def all_ready(self) -> bool:
        return not self.not_ready()

    def kill(self, inst: Instance) -> None:
        """kill -9 as a planned exit; restarted at once, as an orchestrator would."""
        inst.planned = True
        inst.proc.signal(signal.SIGKILL)
        if inst.proc.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                inst.proc.proc.wait(10)
        self.tick()

    def remove(self, inst: Instance) -> None:
        """Stop an instance gracefully (SIGKILL after 90 s) for good."""
        inst.planned = True
        inst.keep = False
        inst.proc.signal(signal.SIGTERM)
        self.wait(lambda: not inst.proc.running(), 90, 0.5)
        if inst.proc.running():
            inst.proc.signal(signal.SIGKILL)
        self.tick()

    def stop_all(self) -> None:
        """SIGTERM every running instance (their last checkpoints are part of the result), SIGKILL
        what is still running after 60 s."""
        insts = [i for i in self.instances.values() if i.proc.running()]
        for i in insts:
            i.planned = True
            i.proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(i.proc.running() for i in insts):
            time.sleep(0.3)
        for i in insts:
            if i.proc.running():
                i.proc.signal(signal.SIGKILL)
            if i.proc.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    i.proc.proc.wait(10)
            i.proc.close_log()
