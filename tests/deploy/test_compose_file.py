"""docker-compose.yml, the Dockerfile and the Grafana provisioning, checked without a Docker engine.

Validation by real tools: the compose-spec JSON schema vendored in check-jsonschema (a dev
dependency), and Debian's docker-compose 1.29 (`apt-get install -y docker-compose`) when installed,
plus `docker compose` v2 where a Docker CLI is installed. Then the wiring the tools cannot see:
environment names against the settings dataclasses, ports against Prometheus and docs/platform.md,
health checks and start order, GPU reservation and the CPU fallback, images and their targets.
"""

from __future__ import annotations

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
    env = {**os.environ, **df.REQUIRED_ENV}
    res = df.run([compose, "-f", str(df.COMPOSE), *profiles, "config", "-q"], cwd=df.REPO, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    listed = df.run([compose, "-f", str(df.COMPOSE), *profiles, "config", "--services"], cwd=df.REPO, env=env)
    assert listed.returncode == 0, listed.stderr
    names = set(listed.stdout.split())
    assert set(df.APP_SERVICES) - {"trainer-cpu"} <= names
    if profiles:  # (1.29 lists profiled services with or without --profile; v2 does not)
        assert "trainer-cpu" in names


def test_docker_compose_v2_config_accepts_the_file() -> None:
    docker = df.tool("docker")
    if docker is None or df.run([docker, "compose", "version"]).returncode != 0:
        pytest.skip("no Docker CLI with the compose v2 plugin here (only docker-compose 1.29 and the schema)")
    res = df.run([docker, "compose", "-f", str(df.COMPOSE), "--profile", "cpu", "config", "-q"], cwd=df.REPO,
                 env={**os.environ, **df.REQUIRED_ENV})
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


def _cut(target: str) -> dict[str, list[str]]:
    """requirements.py's output for one target: name==version -> its hashes."""
    script = df.REPO / "deploy" / "docker" / "requirements.py"
    res = df.run([sys.executable, str(script), target, str(df.REPO / "pyproject.toml"),
                  str(df.REPO / "requirements.lock")])
    assert res.returncode == 0, res.stderr
    out: dict[str, list[str]] = {}
    req = ""
    for line in res.stdout.splitlines():
        line = line.strip().rstrip("\\").strip()
        if line.startswith("--hash=sha256:"):
            out[req].append(line)
        elif line:
            req = line
            out[req] = []
    return out


def test_requirements_split_puts_torch_only_in_the_ml_image_with_the_locks_hashes() -> None:
    lock = (df.REPO / "requirements.lock").read_text()
    base, ml, cpu, notriton = _cut("base"), _cut("ml"), _cut("ml-cpu"), _cut("ml-notriton")
    names = {t: {r.split("==")[0] for r in reqs} for t, reqs in
             {"base": base, "ml": ml, "cpu": cpu, "notriton": notriton}.items()}
    assert "torch" not in names["base"] and "confluent-kafka" in names["base"] and "duckdb" in names["base"]
    # dev and report tools never reach an image
    for tool in ("pytest", "mypy", "ruff", "matplotlib", "pandas", "hypothesis"):
        assert all(tool not in n for n in names.values()), tool
    assert "torch" in names["ml"] and "triton" in names["ml"] and any(n.startswith("nvidia-") for n in names["ml"])
    assert not names["ml"] & names["base"], "ml is installed on top of base"
    # CPU index variant: torch's pure-Python dependencies only (torch itself comes from the CPU index)
    assert "torch" not in names["cpu"] and "sympy" in names["cpu"]
    assert not any(n.startswith(("nvidia-", "cuda-")) or n == "triton" for n in names["cpu"])
    assert names["notriton"] == names["ml"] - {"triton"}
    # every requirement is pinned and carries exactly the lock's hashes
    for reqs in (base, ml):
        for req, hashes in reqs.items():
            assert "==" in req and hashes, req
            block = lock[lock.index(req + " "):].split("\n    # via", 1)[0]
            assert set(hashes) == set(re.findall(r"--hash=sha256:[0-9a-f]{64}", block)), req


def test_dockerfile_installs_from_the_hashed_lock_and_torch_with_index_url_only() -> None:
    text = (df.REPO / "deploy" / "docker" / "Dockerfile").read_text()
    stages = _stages()
    for stage in ("deps", "deps-ml"):
        assert "--require-hashes --no-deps -r requirements-" in stages[stage], stage
    assert "COPY pyproject.toml requirements.lock deploy/docker/requirements.py" in stages["deps"]
    assert "--extra-index-url" not in text.replace("never --extra-index-url", "")
    assert '--index-url "$TORCH_INDEX_URL"' in stages["deps-ml"]
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm$", text, re.M), "upstream default, exact"
    assert "ARG TORCH_VARIANT=cuda" in stages["deps-ml"]


# ------------------------------------------------------------------------------ security (issue 17)
PUBLISHED = {"kafka": "9092:29092", "registry": "8081:8080", "prometheus": "9090:9090", "grafana": "3000:3000"}


def test_every_published_port_binds_loopback_unless_widened_by_one_variable() -> None:
    published = {name: svc["ports"] for name, svc in df.compose()["services"].items() if svc.get("ports")}
    assert set(published) == set(PUBLISHED)
    for name, ports in published.items():
        assert ports == [f"127.0.0.1:{PUBLISHED[name]}"], (name, ports)
    # the one variable that widens them, and the only one
    raw = df.raw_compose()["services"]
    for name in PUBLISHED:
        for port in raw[name]["ports"]:
            assert port.startswith("${REFTRAIN_PUBLISH_ADDRESS:-127.0.0.1}:"), (name, port)
    wide = df.interpolate(raw, {**df.REQUIRED_ENV, "REFTRAIN_PUBLISH_ADDRESS": "0.0.0.0"})
    assert wide["kafka"]["ports"] == ["0.0.0.0:9092:29092"]
    # the risk is documented where the variable is
    doc = (df.REPO / "docs" / "compose.md").read_text()
    assert "REFTRAIN_PUBLISH_ADDRESS" in doc and "firewall" in doc


def test_prometheus_has_no_lifecycle_api_and_grafana_needs_a_password_from_the_environment() -> None:
    assert not any("lifecycle" in str(a) for a in df.service("prometheus")["command"])
    raw = df.raw_compose()["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert raw.startswith("${GRAFANA_ADMIN_PASSWORD:?"), raw
    with pytest.raises(KeyError):
        df.interpolate(df.raw_compose(), {})
    compose = df.tool("docker-compose")
    if compose is not None:  # the real tool refuses too
        env = {k: v for k, v in {**os.environ, **df.REQUIRED_ENV}.items() if k != "GRAFANA_ADMIN_PASSWORD"}
        res = df.run([compose, "-f", str(df.COMPOSE), "config", "-q"], cwd=df.REPO, env=env)
        assert res.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in res.stdout + res.stderr


def test_every_container_is_hardened() -> None:
    for name, svc in df.compose()["services"].items():
        assert svc.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in svc.get("security_opt", []), name
        assert svc.get("mem_limit"), name
        assert svc.get("privileged") is not True, name
        if name in df.APP_SERVICES or name in ("init", "prometheus"):
            assert svc.get("read_only") is True, name
            assert any(str(m).split(":")[0] == "/tmp" for m in svc.get("tmpfs", [])), name
    # only postgres adds capabilities back: the five its upstream entry point needs to switch user
    added = {n: s["cap_add"] for n, s in df.compose()["services"].items() if s.get("cap_add")}
    assert added == {"postgres": ["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"]}


def test_images_are_pinned_to_exact_releases() -> None:
    for name, svc in df.compose()["services"].items():
        image = svc["image"]
        if image.startswith("reftrain:"):
            continue  # built here from the Dockerfile
        if "@sha256:" in image:
            continue
        tag = image.rsplit(":", 1)[1]
        assert re.match(r"^v?\d+\.\d+(\.\d+)?(-[a-z]+)?$", tag), (name, image)
        assert re.search(r"\d+\.\d+", tag) and tag != "latest", (name, image)
    assert df.service("postgres")["image"] != "postgres:15"


# ------------------------------------------------------------------------------ offline override
STANDINS = {"kafka": "kafka", "postgres": "postgres", "registry": "registry", "prometheus": "prometheus",
            "kcat": "kcat"}


def test_offline_override_swaps_only_images_build_args_and_grafana() -> None:
    over = df.load_yaml(df.OFFLINE)["services"]
    base = df.compose()["services"]
    assert set(over) <= set(base)
    for name, svc in over.items():
        if name in STANDINS:
            assert set(svc) == {"image"}, name
            assert svc["image"].startswith("reftrain-offline/"), name
            dockerfile = df.REPO / "deploy" / "docker" / "offline" / f"{STANDINS[name]}.Dockerfile"
            assert dockerfile.is_file(), dockerfile
            assert svc["image"] in (df.REPO / "deploy" / "docker" / "offline" / "images.sh").read_text(), name
        elif name == "grafana":
            assert svc == {"profiles": ["grafana"]}
        else:
            assert set(svc) == {"build"}, name
            assert svc["build"]["target"] == base[name]["build"]["target"], name
            assert svc["build"]["args"] == {"PYTHON_IMAGE": "reftrain-offline/python:3.11", "TORCH_VARIANT": "cpu"}
    # the stand-ins run the releases the compose file names, where Debian or Maven Central has them
    assert over["kafka"]["image"].endswith(":" + base["kafka"]["image"].split(":")[1])
    assert over["registry"]["image"].endswith(":" + base["registry"]["image"].split(":")[1])
    compose = df.tool("docker-compose")
    if compose is not None:
        res = df.run([compose, "-f", str(df.COMPOSE), "-f", str(df.OFFLINE), "--profile", "cpu", "config", "-q"],
                     cwd=df.REPO, env={**os.environ, **df.REQUIRED_ENV})
        assert res.returncode == 0, res.stdout + res.stderr


def test_offline_kafka_takes_the_same_server_properties_as_compose(tmp_path: Path) -> None:
    """kafka-run.sh turns the compose KAFKA_* variables into server.properties as apache/kafka does."""
    script = (df.REPO / "deploy" / "docker" / "offline" / "kafka-run.sh").read_text()
    conf = tmp_path / "server.properties"
    # run only the translation part of the entry point, on the compose environment
    head = script.split("cat >/opt/kafka/config/log4j2.yaml")[0].replace("/opt/kafka/config/server.properties",
                                                                          str(conf))
    env = {"PATH": os.environ["PATH"], **{k: str(v) for k, v in df.environment("kafka").items()}}
    subprocess.run(["sh", "-c", head], env=env, check=True)
    props = dict(line.split("=", 1) for line in conf.read_text().splitlines())
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://:9092,HOST://:29092,CONTROLLER://:9093"
    assert props["advertised.listeners"] == "PLAINTEXT://kafka:9092,HOST://localhost:9092"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["auto.create.topics.enable"] == "false"
    assert "heap.opts" not in props and len(props) == len(df.environment("kafka")) - 2  # CLUSTER_ID, HEAP


def test_entrypoint_sets_instance_id_to_the_hostname_unless_given() -> None:
    entry = df.REPO / "deploy" / "docker" / "entrypoint.sh"
    env = {k: v for k, v in os.environ.items() if k != "INSTANCE_ID"}
    out = subprocess.run(["sh", str(entry), "sh", "-c", 'printf %s "$INSTANCE_ID"'], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out == subprocess.run(["hostname"], capture_output=True, text=True, check=True).stdout.strip()
    out = subprocess.run(["sh", str(entry), "sh", "-c", 'printf %s "$INSTANCE_ID"'],
                         env={**env, "INSTANCE_ID": "trainer-a"}, capture_output=True, text=True, check=True).stdout
    assert out == "trainer-a"
    if "instance_id" not in PlatformSettings.model_fields:
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


# ------------------------------------------------------------------------------ PostgreSQL roles
def test_no_service_but_postgres_uses_the_superuser() -> None:
    """Issue 17: the superuser's password stays in the postgres container; the services and the init
    job log in as `reftrain`, the registry as `registry` (both made by deploy/docker/postgres-init);
    no database password has a default."""
    raw = df.raw_compose()["services"]
    for name, svc in df.compose()["services"].items():
        env = {k: str(v) for k, v in (svc.get("environment") or {}).items()}
        raw_env = {k: str(v) for k, v in (raw[name].get("environment") or {}).items()}
        if name == "postgres":
            assert set(raw_env) >= {"POSTGRES_PASSWORD", "CATALOG_DB_PASSWORD", "REGISTRY_DB_PASSWORD"}
            continue
        assert not any("POSTGRES_PASSWORD" in v for v in raw_env.values()), name
        assert not any(re.search(r"\buser=postgres\b", v) for v in env.values()), name
        if "STORE_CATALOG" in env:
            assert re.search(r"\buser=reftrain\b", env["STORE_CATALOG"]), name
            assert "${CATALOG_DB_PASSWORD:?" in raw_env["STORE_CATALOG"], name
    reg = df.environment("registry")
    assert reg["APICURIO_DATASOURCE_USERNAME"] == "registry"
    assert raw["registry"]["environment"]["APICURIO_DATASOURCE_PASSWORD"].startswith("${REGISTRY_DB_PASSWORD:?")
    for name, svc in raw.items():  # a password is required from the environment, never a known default
        for k, v in (svc.get("environment") or {}).items():
            assert not re.search(r"PASSWORD:-", str(v)), (name, k, v)
    # the health check logs in as both roles: healthy only once the init script made them
    hc = " ".join(df.service("postgres")["healthcheck"]["test"])
    assert "-U registry -d registry" in hc and "-U reftrain -d reftrain" in hc


def test_compose_sh_makes_the_database_passwords() -> None:
    script = (df.REPO / "deploy" / "docker" / "compose.sh").read_text()
    for var in ("POSTGRES_PASSWORD", "CATALOG_DB_PASSWORD", "REGISTRY_DB_PASSWORD"):
        assert var in script and var in df.REQUIRED_ENV
