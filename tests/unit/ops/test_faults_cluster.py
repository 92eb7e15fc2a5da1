"""The issue #19 faults of the campaign (3-broker cluster, lake on S3): scheduled only on a stack
that has what they act on, and the private stack's ports at fixed offsets of --port-base."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ops.faults.config import SIZES, scaling_only
from ops.faults.injectors import FaultInjector
from ops.faults.stack import PrivateStack
from reftrain.topics import CANDLES, TRAINING_JOBS


def _names(tmp_path: Path, brokers: int, lake: str, size: str = "scaling") -> list[str]:
    stack = PrivateStack(tmp_path / f"stack-{brokers}-{lake}", brokers=brokers, lake=lake, port_base=36000)
    s = scaling_only(SIZES["reduced"]) if size == "scaling" else SIZES[size]
    inj = FaultInjector(s, stack, tmp_path, seed=3, say=lambda _m: None)
    return [name for name, _fn in inj.schedule()]


def test_cluster_faults_need_the_cluster_and_s3(tmp_path: Path) -> None:
    full = Counter(_names(tmp_path, 3, "s3"))
    assert full == Counter({f"leader kill {TRAINING_JOBS}": 1, f"leader kill {CANDLES}": 1, "rolling restart": 1,
                            "object store": 1})
    assert _names(tmp_path, 1, "folder") == []  # one broker, a folder: none of them can run
    assert Counter(_names(tmp_path, 1, "s3")) == Counter({"object store": 1})


def test_the_data_path_fault_is_left_out_on_s3(tmp_path: Path) -> None:
    assert any(n == "data path" for n in _names(tmp_path, 1, "folder", "reduced"))
    assert not any(n == "data path" for n in _names(tmp_path, 1, "s3", "reduced"))
    # the full sizes hold the #19 faults too, when the stack has a cluster and S3
    assert {"rolling restart", "object store"} <= set(_names(tmp_path, 3, "s3", "reduced"))


def test_ports_at_fixed_offsets_of_the_base(tmp_path: Path) -> None:
    stack = PrivateStack(tmp_path / "s", brokers=3, lake="s3", port_base=36000)
    cluster = stack.ports.pop("CLUSTER")
    assert stack.ports == {"KAFKA": 36092, "CONTROLLER": 36093, "REGISTRY": 36081, "REGISTRY_MGMT": 36001,
                           "PG": 36032, "S3": 36300}
    assert 20000 <= cluster < 32768 - 20  # the cluster's block: below the ephemeral range (self-connects)
    stack.ports["CLUSTER"] = cluster
    env = stack.env()
    assert (env["REFTRAIN_CLUSTER_PORT"], env["REFTRAIN_S3_PORT"]) == (str(cluster), "36300")
    assert (env["REFTRAIN_BROKERS"], env["REFTRAIN_LAKE"]) == ("3", "s3")
    assert PrivateStack(tmp_path / "s").ports == stack.ports  # a kept stack keeps its ports


def test_a_stopped_node_leaves_no_pid_file_even_as_a_zombie(tmp_path: Path) -> None:
    """stack.sh's ``kill -0`` sees a zombie as running and would not start the node again: the
    stopped node's pid file goes away as soon as the process is dead (here: our unreaped child)."""
    import signal
    import subprocess

    stack = PrivateStack(tmp_path / "s", brokers=3, port_base=36000)
    child = subprocess.Popen(["sleep", "60"])
    try:
        pid_file = stack.node_pid_file(2)
        pid_file.parent.mkdir(parents=True)
        pid_file.write_text(f"{child.pid}\n")
        assert stack.pid("node-2") == child.pid
        stack.stop_component("node-2", signal.SIGKILL)
        assert not pid_file.exists() and stack.pid("node-2") is None
    finally:
        child.kill()
        child.wait()
