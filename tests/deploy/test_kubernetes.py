"""deploy/k8s rendered by kustomize (`kubectl kustomize`, no cluster needed) and checked: schema
validation with kubernetes-validate where it is installed, then the wiring (probes, ports, limits,
GPU requests, the KEDA scaler's group and topic, env names) against the code."""

from __future__ import annotations

import importlib.util
import re
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
    assert kinds == ["ConfigMap", "Deployment", "Job", "Namespace", "NetworkPolicy", "PersistentVolumeClaim",
                     "PodDisruptionBudget", "ScaledObject", "TriggerAuthentication"]
    assert all(d["metadata"].get("namespace") == "reftrain" for d in docs if d["kind"] != "Namespace")
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.skip("rendered; schema validation needs kubernetes-validate (pip install kubernetes-validate)")
    import kubernetes_validate

    for doc in docs:
        if doc["kind"] in ("ScaledObject", "TriggerAuthentication"):  # KEDA CRDs: checked field by field below
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
        assert {m["mountPath"] for m in c["volumeMounts"]} == {platform.store_data_path, "/tmp", "/etc/reftrain/kafka",
                                                               "/etc/reftrain/catalog"}
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
    from services.catalog import TRAINER

    assert meta["consumerGroup"] == TRAINER.group(platform.topic_prefix)
    assert meta["topic"] == TopicCatalogue(platform).name(TRAINING_JOBS)
    assert meta["bootstrapServers"] == platform.kafka_bootstrap_servers
    assert int(meta["lagThreshold"]) > 0
    assert 1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"] <= platform.topic_partitions
    # keys KEDA's Kafka scaler knows (keda.sh/docs/2.x/scalers/apache-kafka)
    assert set(meta) <= {"bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold",
                         "offsetResetPolicy", "allowIdleConsumers", "scaleToZeroOnInvalidOffset",
                         "excludePersistentLag", "limitToPartitionsWithLag", "version", "partitionLimitation",
                         "sasl", "tls"}


# -- hardening (issue 17) ------------------------------------------------------------------------------
def _pods(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pod specs of every Deployment and Job, by workload name."""
    return {d["metadata"]["name"]: d["spec"]["template"] for d in docs if d["kind"] in ("Deployment", "Job")}


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=lambda p: p.name)
def test_pods_are_restricted_read_only_and_without_a_token(path: Path) -> None:
    docs = _render(path)
    (ns,) = _by_kind(docs, "Namespace").values()
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pods = _pods(docs)
    assert set(pods) == {*df.SERVICES, "reftrain-init"}
    for name, tpl in pods.items():
        spec = tpl["spec"]
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        (c,) = spec["containers"]
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"]["drop"] == ["ALL"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], name  # the only writable path besides the lake
        creds = volumes[mounts["/etc/reftrain/kafka"]]["secret"]
        assert creds == {"secretName": "reftrain-kafka", "optional": True, "defaultMode": 0o440}
        refs = [e["secretRef"] for e in c["envFrom"] if "secretRef" in e]
        assert {"name": "reftrain-kafka", "optional": True} in refs
        assert {"name": "reftrain-registry", "optional": True} in refs


def test_pdbs_cover_every_multi_replica_service() -> None:
    docs = _render(df.K8S_BASE)
    pdbs = _by_kind(docs, "PodDisruptionBudget")
    (so,) = _by_kind(docs, "ScaledObject").values()
    for name, dep in _by_kind(docs, "Deployment").items():
        scaled = so["spec"]["scaleTargetRef"]["name"] == name and so["spec"]["maxReplicaCount"] > 1
        if dep["spec"]["replicas"] > 1 or scaled:
            pdb = pdbs[name]
            assert pdb["spec"]["maxUnavailable"] == 1
            assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
        else:
            assert name not in pdbs  # a single replica: a PDB would only block node drains


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        assert expr["operator"] == "In"
        if labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


def test_network_policy_denies_by_default_and_allows_only_the_needed_flows() -> None:
    docs = _render(df.K8S_BASE)
    policies = _by_kind(docs, "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"] == {} and sorted(deny["policyTypes"]) == ["Egress", "Ingress"]
    assert "ingress" not in deny and "egress" not in deny
    (cm,) = _by_kind(docs, "ConfigMap").values()
    kafka_ns = cm["data"]["KAFKA_BOOTSTRAP_SERVERS"].split(".")[1]  # kafka-bootstrap.<ns>.svc:9092
    kafka_port = int(cm["data"]["KAFKA_BOOTSTRAP_SERVERS"].rsplit(":", 1)[1])
    registry_ns = cm["data"]["SCHEMA_REGISTRY_URL"].split("//")[1].split(".")[1]

    def egress_ports(labels: dict[str, str], namespace: str) -> set[int]:
        out: set[int] = set()
        for pol in policies.values():
            spec = pol["spec"]
            if "Egress" not in spec["policyTypes"] or not _selects(spec["podSelector"], labels):
                continue
            for rule in spec.get("egress", []):
                if any(p.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
                       == namespace for p in rule["to"]):
                    out |= {int(p["port"]) for p in rule["ports"]}
        return out

    for name, tpl in _pods(docs).items():
        labels = tpl["metadata"]["labels"]
        assert kafka_port in egress_ports(labels, kafka_ns), name
        assert 8080 in egress_ports(labels, registry_ns), name
        assert 5432 in egress_ports(labels, "postgres"), name
        assert 53 in egress_ports(labels, "kube-system"), name
        internet = [r for pol in policies.values() if _selects(pol["spec"]["podSelector"], labels)
                    for r in pol["spec"].get("egress", []) if any("ipBlock" in p for p in r["to"])]
        if labels["app.kubernetes.io/name"] == "ingest":
            assert [int(p["port"]) for r in internet for p in r["ports"]] == [443]
            assert "10.0.0.0/8" in internet[0]["to"][0]["ipBlock"]["except"]
        else:
            assert not internet, name
    scrape = policies["allow-metrics-scrape"]["spec"]
    assert scrape["ingress"][0]["ports"] == [{"protocol": "TCP", "port": "http"}]


def test_keda_trigger_authenticates_with_the_pods_kafka_secret() -> None:
    docs = _render(df.K8S_BASE)
    (so,) = _by_kind(docs, "ScaledObject").values()
    (trigger,) = so["spec"]["triggers"]
    (auth,) = _by_kind(docs, "TriggerAuthentication").values()
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert set(refs) == {"sasl", "tls", "username", "password", "ca"}
    assert {name for name, _ in refs.values()} == {"reftrain-kafka"}
    # the pods read the same keys as client properties (KAFKA_SASL_USERNAME -> sasl.username)
    props = dict(settings_mod.kafka_env_properties({k: "x" for _, k in refs.values()}))
    assert {"sasl.username", "sasl.password"} <= set(props)


@pytest.mark.parametrize("path", [df.K8S_BASE, df.K8S_BASE.parent / "overlays" / "cpu"], ids=["base", "cpu"])
def test_every_pod_reaches_the_catalog_as_its_own_role_with_a_password_file(path: Path) -> None:
    """Issue 17: the catalog password is a file from the Secret `reftrain-catalog` (the role
    `reftrain`, not the superuser); STORE_CATALOG (Secret `reftrain-store`) carries no password."""
    docs = _render(path)
    (cm,) = _by_kind(docs, "ConfigMap").values()
    pw_file = Path(cm["data"]["STORE_CATALOG_PASSWORD_FILE"])
    for name, tpl in _pods(docs).items():
        spec = tpl["spec"]
        (c,) = spec["containers"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        mount = mounts[str(pw_file.parent)]
        assert mount["readOnly"] is True, name
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == "reftrain-catalog" and "optional" not in secret, name
        assert {"key": "password", "path": pw_file.name} in secret["items"] and secret["defaultMode"] == 0o440
        assert {"secretRef": {"name": "reftrain-store"}} in c["envFrom"], name
    readme = (df.K8S_BASE.parent / "README.md").read_text()
    (store,) = re.findall(r"STORE_CATALOG='([^']*)'", readme)
    assert "user=reftrain" in store and "password" not in store, store
    assert "user=postgres" not in readme
    assert "deploy/docker/postgres-init/01-databases.sql" in readme  # the roles' set-up, shared with compose


@pytest.mark.parametrize("path", [df.K8S_BASE, df.K8S_BASE.parent / "overlays" / "cpu"], ids=["base", "cpu"])
def test_no_image_floats(path: Path) -> None:
    """Every image is the project's own (built from deploy/docker/Dockerfile, tags set per release by
    `kustomize edit set image`) or an exact release; never latest or a bare major."""
    for name, tpl in _pods(_render(path)).items():
        for c in tpl["spec"]["containers"]:
            image = c["image"]
            if image in ("reftrain:base", "reftrain:ml") or "@sha256:" in image:
                continue
            assert re.match(r"^[^:]+:v?\d+\.\d+\.\d+", image), (name, image)
