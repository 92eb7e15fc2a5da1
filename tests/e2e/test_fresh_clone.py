"""A newcomer's clone: the stack starts from a clone inside a 0700 folder, and a stack that cannot
start stops the test run within a minute with one clear line.

The clone lives in a fresh ``mkdtemp`` folder (mode 0700, as ``mktemp -d`` and /root are). As root,
PostgreSQL runs as the ``postgres`` OS user, which cannot enter that folder: this is the set-up that
once failed with "could not change directory ... Permission denied" and then errored every test.

The clone's stack runs on its own ports (``REFTRAIN_PORT_OFFSET``), next to the stack of this test
run, which also shows that two clones on one machine do not share or clobber each other's stack.
Kafka and Apicurio are not fetched again: the clone links this checkout's downloaded runtime (the
fetch itself runs in every ``make test``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops import catalog
from ops.stages import parse_stack_env

REPO = Path(__file__).resolve().parents[2]
PORTS = (19092, 19093, 18081, 19000, 15432)  # the stack's default ports, shifted by the offset
STACK_VARS = ("KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL", "STORE_CATALOG", "STORE_CATALOG_PASSWORD_FILE",
              "STORE_DATA_PATH", "TOPIC_PREFIX", "REFTRAIN_CATALOG_ADMIN_USER", "REFTRAIN_CATALOG_ADMIN_PASSWORD_FILE")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_offset() -> int:
    for offset in range(3000, 9000, 37):
        if not any(_listening(p + offset) for p in PORTS):
            return offset
    raise RuntimeError("no free block of ports for the clone's stack")


@pytest.fixture
def clone() -> Iterator[tuple[Path, dict[str, str]]]:
    parent = Path(tempfile.mkdtemp(prefix="reftrain-newcomer-"))
    assert parent.stat().st_mode & 0o777 == 0o700
    repo = parent / "p"
    subprocess.run(["git", "clone", "-q", str(REPO), str(repo)], check=True)
    runtime = REPO / "deploy" / "local" / ".runtime"
    assert runtime.is_dir(), "make test fetches the runtime before the suite"
    (repo / "deploy" / "local" / ".runtime").symlink_to(runtime)
    # Nothing of this run's stack, nor of its pytest workers (xdist), reaches the clone's own run.
    env = {k: v for k, v in os.environ.items() if k not in STACK_VARS and not k.startswith("PYTEST_")}
    env.update({"REFTRAIN_PORT_OFFSET": str(_free_offset()), "PYTHON": sys.executable,
                "PYTHONPATH": str(repo)})
    try:
        yield repo, env
    finally:
        subprocess.run([str(repo / "deploy/local/stack.sh"), "reset"], env=env, capture_output=True, check=False)
        subprocess.run(["rm", "-rf", str(parent)], check=False)


def _stack(repo: Path, env: dict[str, str], cmd: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(repo / "deploy/local/stack.sh"), cmd], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_stack_starts_from_a_0700_clone_and_a_broken_one_stops_pytest(clone: tuple[Path, dict[str, str]]) -> None:
    repo, env = clone
    up = _stack(repo, env, "up")
    assert up.returncode == 0, up.stderr[-3000:]
    status = _stack(repo, env, "status", timeout=60)
    assert status.returncode == 0, status.stdout
    stack_env = parse_stack_env(_stack(repo, env, "env", timeout=30).stdout)
    offset = int(env["REFTRAIN_PORT_OFFSET"])
    assert stack_env["KAFKA_BOOTSTRAP_SERVERS"] == f"127.0.0.1:{19092 + offset}"
    pg_line = next(line for line in status.stdout.splitlines() if line.startswith("postgres:"))
    if os.geteuid() == 0:
        # The catalog's data folder is one the postgres user can reach, never inside the 0700 clone.
        assert "/var/lib/reftrain/pg-" in pg_line and str(repo) not in pg_line
    # The catalog answers a real statement on the clone's own port (ops.catalog raises otherwise).
    assert f"port={15432 + offset}" in stack_env["STORE_CATALOG"]
    catalog.admin(stack_env["STORE_CATALOG"], "create table newcomer_check (x int); drop table newcomer_check",
                  environ=stack_env)

    # Then the same clone with a PostgreSQL that cannot start (one stack start serves both checks).
    data = Path(pg_line.split("(data ", 1)[1].rstrip(")"))
    assert _stack(repo, env, "down", timeout=120).returncode == 0
    # Break PostgreSQL on purpose: a configuration line it refuses to start with.
    with open(data / "postgresql.conf", "a") as fh:
        fh.write("\nthis line is not a setting\n")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/contract"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out[-3000:]
    assert elapsed < 60, f"took {elapsed:.0f} s"
    reason = [ln for ln in out.splitlines() if "the local stack did not start" in ln]
    assert len(reason) == 1 and "PostgreSQL did not start" in reason[0], out[-3000:]
    # Nothing of the failed start is left running.
    assert _stack(repo, env, "status", 60).returncode == 1
