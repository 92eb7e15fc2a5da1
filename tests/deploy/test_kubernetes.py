"""deploy/k8s rendered by kustomize (`kubectl kustomize`, no cluster needed) and checked: schema
validation with kubernetes-validate where it is installed, then the wiring (probes, ports, limits,
GPU requests, the KEDA scaler's group and topic, env names) against the code."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from reftrain import settings as settings_mod
from reftrain.settings import PlatformSettings
from reftrain.topics import TRAINING_JOBS, TopicCatalogue
from tests.deploy import deployfiles as df

KUSTOMIZATIONS = [df.K8S_BASE, *df.K8S_OVERLAYS]


def _render(path: Path) -> list[dict[str, Any]]:
    kubectl = df.tool("kubectl")
    kustomize = df.tool("kustomize")
    if kubectl:
        cmd = [kubectl, "kustomize", str(path)]
    elif kustomize:
        cmd = [kustomize, "build", str(path)]
    else:
        pytest.skip("neither kubectl nor kustomize is installed")
    res = df.run(cmd)
    assert res.returncode == 0, res.stderr
    return df.load_yaml_all(res.stdout)


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_kustomize_renders_and_validates(path: Path, tmp_path: Path) -> None:
    docs = _render(path)
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == ["ConfigMap", "Deployment", "Job", "Namespace", "PersistentVolumeClaim", "ScaledObject"]
    assert all(d["metadata"].get("namespace") == "reftrain" for d in docs if d["kind"] != "Namespace")
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.skip("rendered; schema validation needs kubernetes-validate (pip install kubernetes-validate)")
    import kubernetes_validate

    for doc in docs:
        if doc["kind"] == "ScaledObject":  # a KEDA CRD: checked field by field below
            continue
        kubernetes_validate.validate(doc, "1.34", strict=True)


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_deployments_run_the_compose_commands_with_probes_and_limits(path: Path) -> None:
    docs = _render(path)
    deployments = _by_kind(docs, "Deployment")
    assert set(deployments) == set(df.SERVICES)
    for name, dep in deployments.items():
        spec = dep["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        (c,) = spec["containers"]
        assert c["command"] == df.service(name)["command"]
        want_image = "reftrain:" + df.service(name)["build"]["target"]
        assert c["image"] == want_image, (name, c["image"])
        env = _env(c)
        port = df.DEFAULT_PORTS[name]
        assert env["HTTP_PORT"] == str(port)
        assert env["INSTANCE_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert c["ports"] == [{"name": "http", "containerPort": port}]
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), (name, kind)
        ann = dep["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/port"] == str(port)
        cls, prefix = df.settings_class(name)
        known = df.env_names(PlatformSettings) | df.env_names(cls, prefix)
        assert set(env) <= known, sorted(set(env) - known)
        settings_mod.load(cls, prefix, {k: v for k, v in env.items() if isinstance(v, str)})
        gpu = c["resources"]["limits"].get("nvidia.com/gpu")
        if name == "trainer" and path == df.K8S_BASE:
            assert gpu == "1" and c["resources"]["requests"]["nvidia.com/gpu"] == "1"
        elif name == "trainer":
            assert gpu is None and env["TRAINER_DEVICE"] == "cpu"
        else:
            assert gpu is None, name


def test_configmap_uses_platform_names_and_volume_matches_store_path() -> None:
    docs = _render(df.K8S_BASE)
    (cm,) = _by_kind(docs, "ConfigMap").values()
    assert set(cm["data"]) <= df.env_names(PlatformSettings)
    platform = settings_mod.platform(cm["data"])
    for dep in _by_kind(docs, "Deployment").values():
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        assert {m["mountPath"] for m in c["volumeMounts"]} == {platform.store_data_path}
        assert {"configMapRef": {"name": cm["metadata"]["name"]}} in c["envFrom"]
    pvc = _by_kind(docs, "PersistentVolumeClaim")["reftrain-lake"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    job = _by_kind(docs, "Job")["reftrain-init"]
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["command"] == df.service("init")["command"]


def test_keda_scales_trainers_on_their_groups_lag() -> None:
    docs = _render(df.K8S_BASE)
    (so,) = _by_kind(docs, "ScaledObject").values()
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    assert so["spec"]["scaleTargetRef"]["name"] == "trainer"
    assert so["spec"]["scaleTargetRef"]["name"] in _by_kind(docs, "Deployment")
    (cm,) = _by_kind(docs, "ConfigMap").values()
    platform = settings_mod.platform(cm["data"])
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    from services.trainer.config import group_id

    assert meta["consumerGroup"] == group_id(platform.topic_prefix)
    assert meta["topic"] == TopicCatalogue(platform).name(TRAINING_JOBS)
    assert meta["bootstrapServers"] == platform.kafka_bootstrap_servers
    assert int(meta["lagThreshold"]) > 0
    assert 1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"] <= platform.topic_partitions
    # keys KEDA's Kafka scaler knows (keda.sh/docs/2.x/scalers/apache-kafka)
    assert set(meta) <= {"bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold",
                         "offsetResetPolicy", "allowIdleConsumers", "scaleToZeroOnInvalidOffset",
                         "excludePersistentLag", "limitToPartitionsWithLag", "version", "partitionLimitation",
                         "sasl", "tls"}
