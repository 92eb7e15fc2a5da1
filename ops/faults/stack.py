"""The campaign's private stack (deploy/local/stack.sh on its own folder and ports) and the faults
that act on it from the outside: stopping its broker or registry, making the store's data path
read-only. Never the shared stack: the campaign stops its components."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from ops.procs import free_port, pid_alive
from ops.stages import REPO, STACK, parse_stack_env


class PrivateStack:
    """deploy/local/stack.sh on its own folder and ports. Ports are kept in ``ports.json`` so a kept
    stack (``--keep-stack``) can be reused by the next campaign (``--stack-dir``)."""

    PORTS = ("KAFKA", "CONTROLLER", "REGISTRY", "REGISTRY_MGMT", "PG")

    def __init__(self, root: Path | None = None) -> None:
        self.owned_dir = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="reftrain-faults-"))
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # PostgreSQL runs as its own OS user and must reach its data dir
        saved = self.root / "ports.json"
        if saved.is_file():
            self.ports: dict[str, int] = json.loads(saved.read_text())
        else:
            self.ports = {p: free_port() for p in self.PORTS}
            saved.write_text(json.dumps(self.ports))
        self.started_here = False

    @property
    def state(self) -> Path:
        return self.root / "stack"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REFTRAIN_")}
        env.update({f"REFTRAIN_{k}_PORT": str(v) for k, v in self.ports.items()})
        env.update({"REFTRAIN_STACK_DIR": str(self.state), "PYTHON": sys.executable})
        for k in ("KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL", "STORE_CATALOG", "STORE_CATALOG_PASSWORD_FILE",
                  "STORE_DATA_PATH"):
            env.pop(k, None)  # never let the shared stack's variables leak into this one
        return env

    def command(self, cmd: str) -> subprocess.Popen[str]:
        return subprocess.Popen([str(STACK), cmd], env=self.env(), text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, cwd=REPO)

    def run(self, cmd: str, timeout: float = 600.0) -> tuple[int, str]:
        p = self.command(cmd)
        out, _ = p.communicate(timeout=timeout)
        return p.returncode, out

    def running(self) -> bool:
        return self.run("status", 60)[0] == 0

    def up(self) -> None:
        if self.running():
            return
        rc, out = self.run("up")
        if rc != 0:
            raise CampaignError(f"private stack did not start (stack.sh up exit {rc}):\n{out[-3000:]}")
        self.started_here = True

    def platform_env(self) -> dict[str, str]:
        _rc, out = self.run("env", 60)
        return parse_stack_env(out)

    def pid(self, component: str) -> int | None:
        try:
            pid = int((self.state / f"{component}.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def stop_component(self, component: str, sig: signal.Signals = signal.SIGTERM, timeout: float = 60.0) -> None:
        """Stop the broker or the registry of this stack only (by the pid stack.sh recorded)."""
        pid = self.pid(component)
        if pid is None:
            raise CampaignError(f"{component} of the private stack is not running")
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)

    def down(self, remove: bool) -> None:
        with contextlib.suppress(Exception):
            self.run("down", 180)
        if remove and self.owned_dir:
            shutil.rmtree(self.root, ignore_errors=True)


class CampaignError(Exception):
    """The campaign cannot run (stack, data): exit 2."""


def set_immutable(path: Path, on: bool) -> None:
    """``chattr -R +i`` / ``-i``: nobody, root included, may create, change or delete under ``path``."""
    res = subprocess.run(["chattr", "-R", "-f", "+i" if on else "-i", str(path)], capture_output=True, text=True,
                         timeout=120)
    if res.returncode != 0 and on:
        raise CampaignError(f"chattr +i {path} failed: {res.stderr.strip()}")


def immutable_supported(scratch: Path) -> bool:
    """Whether ``chattr +i`` works here (ext4/xfs and CAP_LINUX_IMMUTABLE) and really stops a write."""
    probe = scratch / f".immutable-probe-{uuid.uuid4().hex[:6]}"
    probe.mkdir(parents=True, exist_ok=True)
    try:
        if shutil.which("chattr") is None:
            return False
        set_immutable(probe, True)
        try:
            (probe / "x").write_text("x")
            return False
        except OSError:
            return True
    except CampaignError:
        return False
    finally:
        set_immutable(probe, False)
        shutil.rmtree(probe, ignore_errors=True)
