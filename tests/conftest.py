"""Test fixtures: the REAL local stack (Kafka broker, Apicurio Registry, PostgreSQL catalog).

The stack is started once per test run by deploy/local/stack.sh (or taken from
KAFKA_BOOTSTRAP_SERVERS / SCHEMA_REGISTRY_URL / STORE_CATALOG when they are set) and stopped at
the end if this run started it. Every test gets random topic names (a random prefix) and, for the
store, its own PostgreSQL catalog database and data folder, so tests never see each other's data.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.catalog import fresh_catalog
from ops.stages import STACK, parse_stack_env
from reftrain import settings as settings_mod
from reftrain.settings import PlatformSettings
from tests.support import register_schemas

REPO = Path(__file__).resolve().parent.parent


def _stack_env() -> dict[str, str]:
    out = subprocess.run([str(STACK), "env"], check=True, capture_output=True, text=True).stdout
    return parse_stack_env(out)


def _start_stack_or_exit() -> None:
    """``stack.sh up``; when it fails the whole run stops at once with its one-line reason.

    Without this every stack-backed test would error on the same fixture, one after the other,
    for minutes, burying the reason.
    """
    proc = subprocess.run([str(STACK), "up"], capture_output=True, text=True)
    if proc.returncode == 0:
        return
    lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    reason = next((ln for ln in reversed(lines) if "ERROR" in ln), lines[-1] if lines else "no output")
    subprocess.run([str(STACK), "down"], capture_output=True, check=False)
    pytest.exit(f"the local stack did not start (deploy/local/stack.sh up exit {proc.returncode}): {reason}",
                returncode=3)


_STARTED_STACK = pytest.StashKey[bool]()


def _external_stack() -> bool:
    return bool(os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("SCHEMA_REGISTRY_URL"))


def pytest_configure(config: pytest.Config) -> None:
    """With parallel workers (pytest -n), the controller starts the stack once, before any worker,
    and stops it at the end: workers cannot share the ownership of a stack one of them started."""
    if hasattr(config, "workerinput") or not config.getoption("numprocesses", None) or _external_stack():
        return
    if subprocess.run([str(STACK), "status"], capture_output=True).returncode != 0:
        _start_stack_or_exit()
        config.stash[_STARTED_STACK] = True


def pytest_unconfigure(config: pytest.Config) -> None:
    if config.stash.get(_STARTED_STACK, False) and not os.environ.get("REFTRAIN_KEEP_STACK"):
        subprocess.run([str(STACK), "down"], check=False)


#: The longest scenarios start first: with two workers (make test), the reduced fault campaign
#: then runs beside everything else instead of after it (measured: it alone is ~7 min of CI).
LONG_FIRST = ("tests/faults/test_campaign.py", "tests/e2e/test_run_loop.py",
              "tests/integration/trainer/test_trainer_service.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONG_FIRST.index(path) if path in LONG_FIRST else len(LONG_FIRST)

    items.sort(key=rank)  # stable: the order inside each file and among the others is kept


@pytest.fixture(scope="session")
def stack() -> Iterator[dict[str, str]]:
    """Environment of a running stack; starts one if none is given or running."""
    if _external_stack():
        yield {k: os.environ[k] for k in ("KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL", "STORE_CATALOG",
                                           "STORE_CATALOG_PASSWORD_FILE", "STORE_DATA_PATH") if k in os.environ}
        return
    was_up = subprocess.run([str(STACK), "status"], capture_output=True).returncode == 0
    if not was_up:
        if os.environ.get("PYTEST_XDIST_WORKER"):  # the controller's start failed or was skipped
            pytest.exit("no local stack is running: start it first (make up), or use make test", returncode=3)
        _start_stack_or_exit()
    env = _stack_env()
    os.environ.update(env)
    yield env
    if not was_up and not os.environ.get("REFTRAIN_KEEP_STACK"):
        subprocess.run([str(STACK), "down"], check=False)


@pytest.fixture
def platform(stack: dict[str, str], tmp_path: Path) -> PlatformSettings:
    """Platform settings with a random topic prefix and a fresh store (own catalog database)."""
    base = settings_mod.platform(stack)
    prefix = f"t{uuid.uuid4().hex[:10]}-"
    # created by the admin role, owned by the services' role (ops.catalog; docs/security.md)
    catalog = fresh_catalog(base.store_catalog, f"test_{uuid.uuid4().hex[:12]}")
    p = base.replace(topic_prefix=prefix, store_catalog=catalog, store_data_path=str(tmp_path / "lake"), http_port=0)
    register_schemas(p)  # what the init job does in compose: services never register schemas
    return p


@pytest.fixture
def platform_env(platform: PlatformSettings) -> dict[str, str]:
    """The same settings as environment variables, for starting services as subprocesses."""
    env = dict(os.environ)
    env.update(platform.connection_env())
    env.update({
        "HTTP_PORT": "0",  # a free port unless a test names one: parallel runs never clash
        "PYTHONPATH": str(REPO),
        "LOG_FORMAT": "json",
    })
    return env
