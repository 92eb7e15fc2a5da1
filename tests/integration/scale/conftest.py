"""A private 3-node KRaft cluster (deploy/local/stack.sh cluster-up) on ports 41000-41012, in its
own state folder, stopped at the end; the registry and catalog are the session's stack."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from ops.stages import STACK
from reftrain.settings import PlatformSettings

CLUSTER_PORT = 41000


@dataclass(frozen=True)
class Cluster:
    bootstrap: str
    state: Path

    def pid_of(self, node_id: int) -> int:
        return int((self.state / "cluster" / f"node-{node_id}.pid").read_text())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    state = tmp_path_factory.mktemp("cluster-stack")
    env = dict(os.environ, REFTRAIN_STACK_DIR=str(state), REFTRAIN_CLUSTER_PORT=str(CLUSTER_PORT),
               REFTRAIN_BROKERS="3")
    up = subprocess.run([str(STACK), "cluster-up"], env=env, capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stderr[-2000:]
        out = subprocess.run([str(STACK), "cluster-env"], env=env, capture_output=True, text=True, check=True)
        bootstrap = out.stdout.strip().split("=", 1)[1]
        yield Cluster(bootstrap, state)
    finally:
        subprocess.run([str(STACK), "cluster-down"], env=env, capture_output=True, timeout=120)


@pytest.fixture
def cluster_platform(platform: PlatformSettings, cluster: Cluster) -> PlatformSettings:
    """The test's platform (random prefix, own catalog) on the 3-broker cluster."""
    return replace(platform, kafka_bootstrap_servers=cluster.bootstrap)
