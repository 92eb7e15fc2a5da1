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
from typing import ClassVar

from ops.procs import free_port, pid_alive
from ops.stages import REPO, STACK, parse_stack_env


class PrivateStack:
    """deploy/local/stack.sh on its own folder and ports. Ports are kept in ``ports.json`` so a kept
    stack (``--keep-stack``) can be reused by the next campaign (``--stack-dir``).

    ``brokers=3``: the 3-node KRaft cluster (stack.sh BROKERS=3) in place of the single broker;
    ``lake="s3"``: S3Proxy with it (stack.sh LAKE=s3). ``port_base``: every port at a fixed offset
    from it (as REFTRAIN_PORT_OFFSET does for stack.sh) instead of free ports picked at random; the
    cluster's block is always a free one below the ephemeral range (``free_block``)."""

    PORTS = ("KAFKA", "CONTROLLER", "REGISTRY", "REGISTRY_MGMT", "PG")
    #: offsets from ``port_base`` (the stack.sh defaults minus 19000, kept apart)
    OFFSETS: ClassVar[dict[str, int]] = {"KAFKA": 92, "CONTROLLER": 93, "REGISTRY": 81, "REGISTRY_MGMT": 1,
                                         "PG": 32, "S3": 300}

    def __init__(self, root: Path | None = None, *, brokers: int = 1, lake: str = "folder",
                 port_base: int | None = None) -> None:
        self.owned_dir = root is None
        self.brokers = brokers
        self.lake = lake
        self.root = Path(root or tempfile.mkdtemp(prefix="reftrain-faults-"))
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # PostgreSQL runs as its own OS user and must reach its data dir
        saved = self.root / "ports.json"
        names = list(self.PORTS) + (["CLUSTER"] if brokers > 1 else []) + (["S3"] if lake == "s3" else [])
        if saved.is_file():
            self.ports: dict[str, int] = json.loads(saved.read_text())
        else:
            self.ports = {p: (port_base + self.OFFSETS[p] if port_base is not None else free_port())
                          for p in names if p != "CLUSTER"}
            if "CLUSTER" in names:  # always below the ephemeral range: see free_block
                self.ports["CLUSTER"] = free_block()
        if not saved.is_file():
            saved.write_text(json.dumps(self.ports))
        self.started_here = False

    @property
    def state(self) -> Path:
        return self.root / "stack"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REFTRAIN_")}
        env.update({f"REFTRAIN_{k}_PORT": str(v) for k, v in self.ports.items()})
        env.update({"REFTRAIN_STACK_DIR": str(self.state), "PYTHON": sys.executable,
                    "REFTRAIN_BROKERS": str(self.brokers), "REFTRAIN_LAKE": self.lake})
        for k in ("KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL", "STORE_CATALOG", "STORE_CATALOG_PASSWORD_FILE",
                  "STORE_DATA_PATH", "BROKERS", "LAKE"):
            env.pop(k, None)  # never let the shared stack's variables leak into this one
        for k in [k for k in env if k.startswith("STORE_S3_")]:
            env.pop(k)
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
        for _ in range(3):  # a port of the ephemeral range held a moment by some client's connection
            if rc == 0 or not ("already in use" in out or "exited" in out):
                break
            time.sleep(5)
            rc, out = self.run("up")  # starts only what is down
        if rc != 0:
            raise CampaignError(f"private stack did not start (stack.sh up exit {rc}):\n{out[-3000:]}")
        self.started_here = True

    def platform_env(self) -> dict[str, str]:
        _rc, out = self.run("env", 60)
        return parse_stack_env(out)

    def node_pid_file(self, node: int) -> Path:
        return self.state / "cluster" / f"node-{node}.pid"

    def pid(self, component: str) -> int | None:
        """pid of ``kafka``, ``registry``, ``s3proxy`` or a cluster node ``node-<id>``."""
        try:
            pid = int(self.pid_file(component).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def pid_file(self, component: str) -> Path:
        return (self.node_pid_file(int(component.removeprefix("node-"))) if component.startswith("node-")
                else self.state / f"{component}.pid")

    def stop_component(self, component: str, sig: signal.Signals = signal.SIGTERM, timeout: float = 60.0) -> None:
        """Stop the broker, the registry, S3Proxy or a cluster node of this stack only (by the pid
        stack.sh recorded). Its pid file is removed once it is dead: a zombie (not yet reaped by
        its parent) still answers ``kill -0``, and stack.sh would take it for running and not
        start it again."""
        pid = self.pid(component)
        if pid is None:
            raise CampaignError(f"{component} of the private stack is not running")
        try:
            self._stop(pid, sig, timeout)
        finally:
            if not pid_alive(pid):
                with contextlib.suppress(FileNotFoundError):
                    self.pid_file(component).unlink()

    def _stop(self, pid: int, sig: signal.Signals, timeout: float) -> None:
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30  # gone before anyone starts it again (stack.sh skips a live pid)
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)

    def down(self, remove: bool) -> None:
        with contextlib.suppress(Exception):
            self.run("down", 180)
        if remove and self.owned_dir:
            shutil.rmtree(self.root, ignore_errors=True)


def free_block(lo: int = 20000, hi: int = 32000) -> int:
    """A base port whose cluster ports (base..base+2, base+10..base+12) are free, below the kernel's
    ephemeral range. Inside it, a node that starts while its peers already dial its controller port
    loses that port to a TCP self-connect (a client connecting to a local port nobody listens on
    can be given that very port as its source port): seen again and again here with
    ``--port-base 36000``, "Address already in use" on the controller port of the node started
    first. So the cluster never takes its ports from --port-base."""
    import random
    import socket

    for _ in range(200):
        base = random.randrange(lo, hi, 20)
        ok = True
        for port in [base + i for i in range(3)] + [base + 10 + i for i in range(3)]:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise CampaignError("no free block of ports for the 3-node cluster")


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
