"""Each application service of docker-compose.yml, started from the compose file against the local stack.

For one compose service the test takes its `command` and `environment` as written (defaults
interpolated), rewrites the infrastructure hosts to the local stack (kafka:9092 -> the local broker,
registry:8080 -> the local Apicurio, the postgres catalog -> a fresh local catalog database, the
shared volume -> a temporary folder, /app/ -> the checkout) and sets a random TOPIC_PREFIX. It runs
the `init` service's command the same way, then the service, and checks:

- /healthz and /readyz answer 200 on the port the compose file gives it (HTTP_PORT);
- the compose health check command itself exits 0 against the running process;
- every metric named in the Grafana dashboard and the alert rules that is shared (reftrain_*) or
  belongs to this service (reftrain_<service>_*) is on its /metrics;
- SIGTERM stops it with exit code 0 within the compose stop_grace_period.

This proves the env names, commands, ports, topic names (init creates them from the same env) and
health URLs of the compose file without a Docker engine.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from reftrain.settings import PlatformSettings
from reftrain.topics import RECORD_OF_TOPIC, TopicCatalogue
from tests.deploy import deployfiles as df
from tests.support import start_service, wait_http

pytestmark = pytest.mark.kafka

COMPOSE_KAFKA = "kafka:9092"
COMPOSE_REGISTRY = "http://registry:8080"
APP_ROOT = "/app/"


def local_env(compose_service: str, platform: PlatformSettings, platform_env: dict[str, str]) -> dict[str, str]:
    """The compose service's environment with the infrastructure hosts rewritten to the local stack."""
    compose_env = df.environment(compose_service)
    assert compose_env["KAFKA_BOOTSTRAP_SERVERS"] == COMPOSE_KAFKA
    assert compose_env["SCHEMA_REGISTRY_URL"].startswith(COMPOSE_REGISTRY + "/")
    registry_path = compose_env["SCHEMA_REGISTRY_URL"][len(COMPOSE_REGISTRY):]
    local_registry = platform.schema_registry_url
    assert local_registry.endswith(registry_path), "compose and the local stack use the same registry API path"
    assert compose_env["STORE_CATALOG"].startswith("postgres:") and "host=postgres" in compose_env["STORE_CATALOG"]
    rewritten = dict(compose_env)
    rewritten.update({
        "KAFKA_BOOTSTRAP_SERVERS": platform.kafka_bootstrap_servers,
        "SCHEMA_REGISTRY_URL": local_registry[: -len(registry_path)] + registry_path,
        "STORE_CATALOG": platform.store_catalog,
        "STORE_DATA_PATH": platform.store_data_path,
        "TOPIC_PREFIX": platform.topic_prefix,
    })
    for key, value in rewritten.items():
        rewritten[key] = value.replace(APP_ROOT, str(df.REPO) + "/")
    env = {k: v for k, v in platform_env.items() if k not in ("HTTP_PORT", "INSTANCE_ID")}
    env.update(rewritten)
    # what deploy/docker/entrypoint.sh does in the container (tested on its own in test_compose_file.py)
    env.setdefault("INSTANCE_ID", f"{socket.gethostname()}-{compose_service}")
    return env


def run_init(platform: PlatformSettings, platform_env: dict[str, str], log: Path) -> dict[str, object]:
    command = df.service("init")["command"]
    assert command[0] == "python"
    env = local_env("init", platform, platform_env)
    res = subprocess.run([sys.executable, *command[1:]], env=env, cwd=df.REPO, capture_output=True, text=True,
                         timeout=240)
    log.write_text(res.stdout + res.stderr)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    cat = TopicCatalogue(platform)
    assert {t["topic"]: t["partitions"] for t in summary["topics"]} == {s.name: s.partitions for s in cat.specs()}
    assert {s["subject"] for s in summary["subjects"]} == {f"{cat.name(t)}-value" for t in RECORD_OF_TOPIC}
    return summary


def port_free(port: int, wait_s: float = 60.0) -> bool:
    """Whether the compose port can be bound here (waits a while: other test runs on this machine
    may hold it briefly)."""
    deadline = time.monotonic() + wait_s
    while True:
        with socket.socket() as s:
            # as http.server does: connections of a previous run in TIME_WAIT must not count as "in use"
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("0.0.0.0", port))
                return True
            except OSError:
                if time.monotonic() > deadline:
                    return False
        time.sleep(2)


def wait_bound(proc: subprocess.Popen[bytes], log: Path, port: int, timeout: float = 180.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("msg") == "starting" and entry.get("http_port") == port:
                return True
        time.sleep(0.5)
    return False


def wait_alive_http(proc: subprocess.Popen[bytes], url: str, timeout: float) -> bool:
    """wait_http, giving up at once when the process has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if wait_http(url, timeout=2.0):
            return proc.poll() is None
    return False


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


def test_init_command_is_idempotent(platform: PlatformSettings, platform_env: dict[str, str], tmp_path: Path) -> None:
    first = run_init(platform, platform_env, tmp_path / "init1.log")
    second = run_init(platform, platform_env, tmp_path / "init2.log")
    assert first["subjects"] == second["subjects"], "re-running init registers no new schema version"
    check = subprocess.run([sys.executable, *df.service("init")["command"][1:], "--check"],
                           env=local_env("init", platform, platform_env), cwd=df.REPO, capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 0, check.stderr[-2000:]


@pytest.mark.parametrize("compose_service", list(df.APP_SERVICES))
def test_service_starts_from_its_compose_definition(compose_service: str, platform: PlatformSettings,
                                                    platform_env: dict[str, str], tmp_path: Path) -> None:
    svc = df.APP_SERVICES[compose_service]
    if not df.service_present(svc):
        pytest.skip(f"services/{svc}/__main__.py does not exist yet")
    definition = df.service(compose_service)
    command = definition["command"]
    assert command[:2] == ["python", "-m"] and command[2] == f"services.{svc}"
    env = local_env(compose_service, platform, platform_env)
    port = int(env["HTTP_PORT"])
    if not port_free(port):
        pytest.skip(f"port {port} (the compose port of {compose_service}) is in use on this machine")

    run_init(platform, platform_env, tmp_path / "init.log")
    log = tmp_path / f"{compose_service}.log"
    proc = start_service(command[2], env, log_path=log)
    try:
        base = f"http://127.0.0.1:{port}"
        # it is OUR process that serves the port (reftrain.service logs "starting" once it is bound),
        # not another run's service on this machine
        if not wait_bound(proc, log, port):
            if "Address already in use" in log.read_text(errors="replace"):
                pytest.skip(f"port {port} was taken by another process on this machine before {compose_service} "
                            "could bind it")
            pytest.fail(f"{compose_service} did not bind port {port}:\n{log.read_text()[-4000:]}")
        for path, timeout in (("/healthz", 180.0), ("/readyz", 240.0)):
            assert wait_alive_http(proc, f"{base}{path}", timeout), \
                f"{path} never answered 200 (exit code {proc.poll()}):\n{log.read_text()[-4000:]}"
        assert proc.poll() is None, log.read_text()[-4000:]

        # the compose health check, exactly as the container runs it (python = this interpreter)
        hc = definition["healthcheck"]["test"]
        assert hc[0] == "CMD" and hc[1] == "python"
        res = subprocess.run([sys.executable, *hc[2:]], env=env, capture_output=True, text=True,
                             timeout=df.duration_s(definition["healthcheck"]["timeout"]) + 5)
        assert res.returncode == 0, res.stderr

        status, text = get(f"{base}/metrics")
        assert status == 200
        exposed = df.exposed_series_names(text)
        wanted = {m for m in df.referenced_metrics() if df.owner_of_metric(m) in (None, svc)}
        missing = sorted(wanted - exposed)
        assert not missing, f"{compose_service}: dashboard/alert metrics not on /metrics: {missing}"
        assert f'reftrain_ready{{service="{svc}"}} 1.0' in text
    finally:
        rc = proc.poll()
        if rc is None:
            proc.send_signal(signal.SIGTERM)
            grace = df.duration_s(definition.get("stop_grace_period", "10s"))
            try:
                rc = proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                pytest.fail(f"{compose_service} did not stop within stop_grace_period ({grace} s) of SIGTERM")
    assert rc == 0, f"{compose_service} exited {rc} on SIGTERM:\n{log.read_text()[-4000:]}"


def test_every_referenced_metric_is_checked_against_a_running_service() -> None:
    """The per-service test checks the shared metrics and the reftrain_<service>_* ones; this makes
    sure no dashboard or alert metric falls outside both (a typo in a prefix would never be checked)."""
    from prometheus_client.metrics import MetricWrapperBase

    import reftrain.observability as obs

    shared: set[str] = set()
    for value in vars(obs).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                shared |= df.exposed_series_names(
                    f"# TYPE {family.name}{'_total' if family.type == 'counter' else ''} {family.type}\n")
    for name in df.referenced_metrics():
        owner = df.owner_of_metric(name)
        assert owner in df.SERVICES or name in shared, f"{name}: neither shared nor a service's"
    present = [s for s in df.SERVICES if df.service_present(s)]
    if len(present) < len(df.SERVICES):
        pytest.skip(f"running-service checks ran only for {present}; missing: "
                    f"{sorted(set(df.SERVICES) - set(present))}")
