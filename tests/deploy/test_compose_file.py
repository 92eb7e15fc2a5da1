"""docker-compose.yml, the Dockerfile and the Grafana provisioning, checked without a Docker engine.

Validation by real tools: the compose-spec JSON schema vendored in check-jsonschema (a dev
dependency), and Debian's docker-compose 1.29 (`apt-get install -y docker-compose`) when installed,
plus `docker compose` v2 where a Docker CLI is installed. Then the wiring the tools cannot see:
environment names against the settings dataclasses, ports against Prometheus and docs/platform.md,
health checks and start order, GPU reservation and the CPU fallback, images and their targets.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from reftrain import settings as settings_mod
from reftrain.settings import PlatformSettings
from tests.deploy import deployfiles as df

PLATFORM_ENV = df.env_names(PlatformSettings)


# ------------------------------------------------------------------------------ real validators
def test_compose_file_matches_the_compose_spec_schema(tmp_path: Path) -> None:
    checker = df.tool("check-jsonschema")
    if checker is None:
        pytest.skip("check-jsonschema is not installed (it is a dev dependency: pip install -e '.[dev]')")
    ok = df.run([checker, "--builtin-schema", "vendor.compose-spec", str(df.COMPOSE)])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # the validator does reject a broken file (a wrong depends_on condition, an unknown key)
    broken = df.COMPOSE.read_text().replace("condition: service_completed_successfully", "condition: finished", 1)
    broken = broken.replace("  pivots:\n", "  pivots:\n    replicas_typo: 2\n", 1)
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(broken)
    rejected = df.run([checker, "--builtin-schema", "vendor.compose-spec", str(bad)])
    assert rejected.returncode != 0
    assert "finished" in rejected.stdout + rejected.stderr


@pytest.mark.parametrize("profiles", [[], ["--profile", "cpu"]], ids=["default", "cpu-profile"])
def test_docker_compose_config_accepts_the_file(profiles: list[str]) -> None:
    """Debian's docker-compose 1.29 parses and validates the file (interpolation, merges, depends_on
    conditions, deploy.resources devices, profiles) the way `docker compose` does."""
    compose = df.tool("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed; CI: apt-get install -y docker-compose")
    res = df.run([compose, "-f", str(df.COMPOSE), *profiles, "config", "-q"], cwd=df.REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    listed = df.run([compose, "-f", str(df.COMPOSE), *profiles, "config", "--services"], cwd=df.REPO)
    assert listed.returncode == 0, listed.stderr
    names = set(listed.stdout.split())
    assert set(df.APP_SERVICES) - {"trainer-cpu"} <= names
    if profiles:  # (1.29 lists profiled services with or without --profile; v2 does not)
        assert "trainer-cpu" in names


def test_docker_compose_v2_config_accepts_the_file() -> None:
    docker = df.tool("docker")
    if docker is None or df.run([docker, "compose", "version"]).returncode != 0:
        pytest.skip("no Docker CLI with the compose v2 plugin here (only docker-compose 1.29 and the schema)")
    res = df.run([docker, "compose", "-f", str(df.COMPOSE), "--profile", "cpu", "config", "-q"], cwd=df.REPO)
    assert res.returncode == 0, res.stdout + res.stderr


# ------------------------------------------------------------------------------ services and env
def test_every_service_module_of_the_design_is_a_compose_service() -> None:
    for name, svc in df.APP_SERVICES.items():
        command = df.service(name)["command"]
        assert command == ["python", "-m", f"services.{svc}"], (name, command)
    assert set(df.compose()["services"]) == set(df.APP_SERVICES) | set(df.INFRA_SERVICES) | set(df.ONE_SHOT)


@pytest.mark.parametrize("name", list(df.APP_SERVICES))
def test_service_environment_uses_only_known_setting_names_with_valid_values(name: str) -> None:
    svc = df.APP_SERVICES[name]
    env = df.environment(name)
    cls, prefix = df.settings_class(svc)
    known = PLATFORM_ENV | df.env_names(cls, prefix)
    assert set(env) <= known, f"{name}: unknown variables {sorted(set(env) - known)}"
    # every value parses and passes the service's own validation (ConfigError otherwise)
    platform = settings_mod.platform(env)
    settings_mod.load(cls, prefix, env)
    assert platform.http_port == df.DEFAULT_PORTS[svc], "HTTP_PORT differs from docs/platform.md"
    assert platform.kafka_bootstrap_servers == "kafka:9092"
    assert platform.schema_registry_url == "http://registry:8080/apis/ccompat/v7"
    assert platform.store_catalog.startswith("postgres:") and "host=postgres" in platform.store_catalog
    assert "dbname=reftrain" in platform.store_catalog
    assert platform.instance_id == "", "INSTANCE_ID is set by the image's entry point (hostname)"
    # the shared DuckLake volume is mounted where STORE_DATA_PATH points
    assert any(str(v).split(":")[:2] == ["lake", platform.store_data_path] for v in df.service(name)["volumes"])


def test_init_job_environment_and_order() -> None:
    init = df.service("init")
    env = df.environment("init")
    known = PLATFORM_ENV | df.env_names(df.init_settings_class(), "INIT_")
    assert set(env) <= known, sorted(set(env) - known)
    settings_mod.load(df.init_settings_class(), "INIT_", env)
    assert init["command"] == ["python", "deploy/init/init_cluster.py"]
    assert init.get("restart") == "no"
    assert {k: v["condition"] for k, v in init["depends_on"].items()} == {
        "kafka": "service_healthy", "registry": "service_healthy", "postgres": "service_healthy"}
    assert init["build"]["target"] == "base"
    # init and the services agree on the platform (topic names, partitions, store)
    shared = {k: v for k, v in env.items() if k in PLATFORM_ENV and k != "HTTP_PORT"}
    for name in df.APP_SERVICES:
        app = {k: v for k, v in df.environment(name).items() if k in PLATFORM_ENV and k != "HTTP_PORT"}
        assert app == shared, name


def test_ingest_replays_bundled_files_that_exist() -> None:
    env = df.environment("ingest")
    files = [f for f in env["INGEST_FILES"].split(",") if f]
    assert files
    for f in files:
        assert f.startswith("/app/data/"), f
        assert (df.REPO / "data" / f[len("/app/data/"):]).is_file(), f
    assert env["INGEST_EXIT_WHEN_DONE"] == "false", "a finished replay must not make compose restart ingest"


# ------------------------------------------------------------------------------ health and order
def test_every_long_running_container_has_a_health_check_and_waits_for_healthy_dependencies() -> None:
    services = df.compose()["services"]
    for name, svc in services.items():
        if name in df.ONE_SHOT:
            continue
        hc = svc.get("healthcheck")
        assert hc and hc.get("test") and not hc.get("disable"), f"{name} has no health check"
        for dep, cond in (svc.get("depends_on") or {}).items():
            want = "service_completed_successfully" if dep in df.ONE_SHOT else "service_healthy"
            assert cond["condition"] == want, (name, dep, cond)
            if want == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep}, which has no health check"
    for name in df.APP_SERVICES:
        assert services[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("name", list(df.APP_SERVICES))
def test_app_health_check_is_python_urllib_on_the_services_own_healthz(name: str) -> None:
    test = df.service(name)["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    assert "/healthz" in test[3] and "HTTP_PORT" in test[3]
    assert df.duration_s(df.service(name)["healthcheck"]["start_period"]) >= 30


def test_infrastructure_health_checks_probe_readiness_not_just_a_port() -> None:
    assert "kafka-broker-api-versions.sh" in str(df.service("kafka")["healthcheck"]["test"])
    assert "/health/ready" in str(df.service("registry")["healthcheck"]["test"])
    pg = str(df.service("postgres")["healthcheck"]["test"])
    assert "-d registry" in pg and "-d reftrain" in pg and "-h 127.0.0.1" in pg
    assert "/-/ready" in str(df.service("prometheus")["healthcheck"]["test"])
    assert "/api/health" in str(df.service("grafana")["healthcheck"]["test"])


# ------------------------------------------------------------------------------ scaling and GPUs
def test_trainers_scale_gpu_reservation_and_cpu_fallback() -> None:
    services = df.compose()["services"]
    for name, svc in services.items():
        assert "container_name" not in svc, f"{name}: container_name prevents --scale"
    for name in df.APP_SERVICES:
        assert "ports" not in services[name], f"{name}: a fixed host port prevents --scale"
    trainer, cpu = services["trainer"], services["trainer-cpu"]
    assert "profiles" not in trainer, "`docker compose up` must start the GPU trainer"
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert cpu["profiles"] == ["cpu"]
    assert "deploy" not in cpu
    assert cpu["command"] == trainer["command"]
    t_env, c_env = df.environment("trainer"), df.environment("trainer-cpu")
    assert c_env.pop("TRAINER_DEVICE") == "cpu"
    t_env.pop("TRAINER_DEVICE", None)
    assert c_env == t_env, "the CPU trainer must join the same group with the same settings"


def test_ml_stack_only_where_needed() -> None:
    for name, svc in df.compose()["services"].items():
        if name in df.INFRA_SERVICES or "build" not in svc:
            assert not svc["image"].startswith("reftrain"), name
            continue
        target = svc["build"]["target"]
        ml = df.APP_SERVICES.get(name) in ("inference", "trainer")
        assert target == ("ml" if ml else "base"), (name, target)
        assert svc["image"] == f"reftrain:{target}"
        assert svc["build"]["dockerfile"] == "deploy/docker/Dockerfile"


# ------------------------------------------------------------------------------ Dockerfile
def _stages() -> dict[str, str]:
    text = (df.REPO / "deploy" / "docker" / "Dockerfile").read_text()
    stages: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        m = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.I)
        if m:
            name = m.group(1)
            stages[name] = ""
        elif name:
            stages[name] += line + "\n"
    return stages


def test_dockerfile_is_multi_stage_non_root_with_schemas_and_data() -> None:
    stages = _stages()
    assert {"deps", "deps-ml", "source", "runtime", "base", "ml"} <= set(stages)
    for target in ("base", "ml"):
        body = stages[target]
        user = re.findall(r"^USER\s+(\S+)", body, re.M)
        assert user and not user[-1].startswith(("root", "0")), target
        assert "COPY --from=source /app /app" in body
    assert "deps-ml" in stages["ml"] and "--from=deps-ml" in stages["ml"]
    assert "--from=deps " in stages["base"] and "deps-ml" not in stages["base"]
    for path in ("schemas/", "data/", "reftrain/", "services/", "deploy/init/"):
        assert f"COPY {path}" in stages["source"], path
    # the runtime images start from python slim, without build tools
    assert "apt-get install" not in stages["runtime"] + stages["base"] + stages["ml"]


def test_dockerignore_lets_every_copied_path_in() -> None:
    ignore = (df.REPO / "deploy" / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    text = (df.REPO / "deploy" / "docker" / "Dockerfile").read_text()
    for src in re.findall(r"^COPY\s+(?!--from)(?:--\S+\s+)*(.+)\s+\S+$", text, re.M):
        for path in src.split():
            assert any(path.rstrip("/") == a or path.startswith(a + "/") for a in allowed), path
            assert (df.REPO / path).exists(), path


def test_requirements_split_puts_torch_only_in_the_ml_image() -> None:
    script = df.REPO / "deploy" / "docker" / "requirements.py"
    base = df.run([sys.executable, str(script), "base", str(df.REPO / "pyproject.toml")])
    ml = df.run([sys.executable, str(script), "ml", str(df.REPO / "pyproject.toml")])
    assert base.returncode == 0 and ml.returncode == 0, base.stderr + ml.stderr
    assert not any(r.startswith("torch") for r in base.stdout.split())
    assert any(r.startswith("torch==") for r in ml.stdout.split())
    assert any(r.startswith("confluent-kafka") for r in base.stdout.split())


def test_entrypoint_sets_instance_id_to_the_hostname_unless_given() -> None:
    entry = df.REPO / "deploy" / "docker" / "entrypoint.sh"
    env = {k: v for k, v in os.environ.items() if k != "INSTANCE_ID"}
    out = subprocess.run(["sh", str(entry), "sh", "-c", 'printf %s "$INSTANCE_ID"'], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out == subprocess.run(["hostname"], capture_output=True, text=True, check=True).stdout.strip()
    out = subprocess.run(["sh", str(entry), "sh", "-c", 'printf %s "$INSTANCE_ID"'],
                         env={**env, "INSTANCE_ID": "trainer-a"}, capture_output=True, text=True, check=True).stdout
    assert out == "trainer-a"
    for field in dataclasses.fields(PlatformSettings):
        if field.name == "instance_id":
            break
    else:
        pytest.fail("PlatformSettings has no instance_id")


def test_postgres_init_script_creates_both_databases() -> None:
    pg = df.service("postgres")
    mounts = [v for v in pg["volumes"] if "docker-entrypoint-initdb.d" in v]
    assert mounts
    host = mounts[0].split(":")[0]
    sql = " ".join(p.read_text() for p in (df.REPO / host).glob("*.sql")).lower()
    assert "create database reftrain" in sql and "create database registry" in sql
    reg = df.environment("registry")
    assert reg["APICURIO_DATASOURCE_URL"] == "jdbc:postgresql://postgres:5432/registry"
    assert reg["APICURIO_STORAGE_KIND"] == "sql"


# ------------------------------------------------------------------------------ Grafana
def test_grafana_provisioning_points_at_the_dashboard_and_the_datasource() -> None:
    graf = df.service("grafana")
    mounts = {v.split(":")[1]: v.split(":")[0] for v in graf["volumes"] if v.startswith("./")}
    prov = df.REPO / mounts["/etc/grafana/provisioning"]
    providers = df.load_yaml(prov / "dashboards" / "reftrain.yml")["providers"]
    path = providers[0]["options"]["path"]
    assert path in mounts and (df.REPO / mounts[path] / "reftrain.json").is_file()
    ds = df.load_yaml(prov / "datasources" / "prometheus.yml")["datasources"][0]
    assert ds["url"] == "http://prometheus:9090"
    for dash in df.DASHBOARDS:
        board = json.loads(dash.read_text())
        uids = {t["datasource"]["uid"] for p in board["panels"] for t in p.get("targets", [])}
        assert uids == {ds["uid"]}, dash
        titles = " ".join(p["title"].lower() for p in board["panels"])
        for want in ("lag", "pending refs", "trigger", "dlq", "loss", "samples/s", "gpu"):
            assert want in titles, want


def test_every_referenced_metric_belongs_to_a_service_or_the_shared_library() -> None:
    """Static half of the metric check (the running half is in test_compose_services.py): each
    reftrain_* name in the dashboard and the alert rules is defined by reftrain.observability or by
    the services/<name>/metrics.py module of the service its prefix names."""
    import importlib

    from prometheus_client import REGISTRY

    import reftrain.observability  # noqa: F401 - registers the shared metrics

    for svc in df.SERVICES:
        if importlib.util.find_spec(f"services.{svc}.metrics") is not None:
            importlib.import_module(f"services.{svc}.metrics")
    defined: set[str] = set()
    for family in REGISTRY.collect():
        defined.update(df.exposed_series_names(
            f"# TYPE {family.name}{'_total' if family.type == 'counter' else ''} {family.type}\n"))
    missing = sorted(n for n in df.referenced_metrics() if n not in defined)
    assert not missing, f"dashboard/alert metrics defined nowhere: {missing}"
