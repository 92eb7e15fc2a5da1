"""A private 3-node KRaft cluster (deploy/local/stack.sh cluster-up) on ports from 24100 (below the
kernel's ephemeral range), in its own state folder, stopped at the end; the registry and catalog
are the session's stack."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ops.stages import STACK
from reftrain.settings import PlatformSettings

#: Below the ephemeral range (32768+): there, peers dialling a node's controller port before it
#: binds can take the port through a TCP self-connect ("Address already in use"; ops/faults/stack.py).
CLUSTER_PORT = 24100


@dataclass(frozen=True)
class Cluster:
    bootstrap: str
    state: Path

    def pid_of(self, node_id: int) -> int:
        return int((self.state / "cluster" / f"node-{node_id}.pid").read_text())


def _ports_free(base: int) -> bool:
    for port in [base + i for i in range(3)] + [base + 10 + i for i in range(3)]:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The base is the first of a few whose six ports are free, and a start that lost a port anyway
    (a node exits at once, 'Address already in use') is tried once more."""
    state = tmp_path_factory.mktemp("cluster-stack")
    bases = [b for b in range(CLUSTER_PORT, CLUSTER_PORT + 1000, 100) if _ports_free(b)][:2]
    assert bases, f"no free port block in {CLUSTER_PORT}-{CLUSTER_PORT + 999}"
    env: dict[str, str] = {}
    try:
        for attempt, base in enumerate(bases):
            env = dict(os.environ, REFTRAIN_STACK_DIR=str(state), REFTRAIN_CLUSTER_PORT=str(base),
                       REFTRAIN_BROKERS="3")
            up = subprocess.run([str(STACK), "cluster-up"], env=env, capture_output=True, text=True, timeout=300)
            if up.returncode == 0 or "Address already in use" not in up.stderr or attempt == len(bases) - 1:
                break
            subprocess.run([str(STACK), "cluster-down"], env=env, capture_output=True, timeout=120)
            shutil.rmtree(state / "cluster", ignore_errors=True)
        assert up.returncode == 0, up.stderr[-2000:]
        out = subprocess.run([str(STACK), "cluster-env"], env=env, capture_output=True, text=True, check=True)
        bootstrap = out.stdout.strip().split("=", 1)[1]
        yield Cluster(bootstrap, state)
    finally:
        if env:
            subprocess.run([str(STACK), "cluster-down"], env=env, capture_output=True, timeout=120)


@pytest.fixture
def cluster_platform(platform: PlatformSettings, cluster: Cluster) -> PlatformSettings:
    """The test's platform (random prefix, own catalog) on the 3-broker cluster."""
    return platform.replace(kafka_bootstrap_servers=cluster.bootstrap)


#: REFTRAIN_TEST_S3_PORT moves it; below the ephemeral range for the reason of CLUSTER_PORT (stack.sh
#: polls the port with a connect while S3Proxy starts: a self-connect there would even pass the poll).
S3_PORT = int(os.environ.get("REFTRAIN_TEST_S3_PORT", "24300"))


@dataclass(frozen=True)
class S3:
    env: dict[str, str]  # the STORE_S3_* variables of `stack.sh s3-env`
    backing: Path  # S3Proxy's filesystem backend: the bucket's objects as files
    port: int = S3_PORT


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    """A private S3Proxy (deploy/local/stack.sh s3-up) on the first free port from S3_PORT, one per
    pytest session (xdist worker): a JVM takes 5-10 s to start; every test has its own prefix.
    Stopped at the end."""
    state = tmp_path_factory.mktemp("s3-stack")
    port = next((p for p in range(S3_PORT, S3_PORT + 50) if _port_free(p)), S3_PORT)
    env = dict(os.environ, REFTRAIN_STACK_DIR=str(state), REFTRAIN_S3_PORT=str(port))
    up = subprocess.run([str(STACK), "s3-up"], env=env, capture_output=True, text=True, timeout=180)
    try:
        assert up.returncode == 0, up.stderr[-2000:]
        out = subprocess.run([str(STACK), "s3-env"], env=env, capture_output=True, text=True, check=True).stdout
        pairs = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines() if "=" in line)
        yield S3({k: v for k, v in pairs.items() if k.startswith("STORE_S3_")}, state / "s3", port)
    finally:
        subprocess.run([str(STACK), "s3-down"], env=env, capture_output=True, timeout=60)


@pytest.fixture
def s3_platform(platform: PlatformSettings, s3: S3) -> PlatformSettings:
    """The test's platform (own catalog database) with its lake under its own prefix of the bucket."""
    e = s3.env
    return platform.replace(store_data_path=f"s3://reftrain/{platform.topic_prefix.rstrip('-')}",
                   store_s3_endpoint=e["STORE_S3_ENDPOINT"], store_s3_access_key_id=e["STORE_S3_ACCESS_KEY_ID"],
                   store_s3_secret_access_key=e["STORE_S3_SECRET_ACCESS_KEY"], store_s3_region=e["STORE_S3_REGION"],
                   store_s3_url_style=e["STORE_S3_URL_STYLE"], store_s3_use_ssl=e["STORE_S3_USE_SSL"] == "true")
