"""Readers for the deployment files (docker-compose.yml, Prometheus, Grafana, kustomize output) shared by
the tests in tests/deploy. No Docker engine is needed: the files are parsed, validated by real tools
where they are installed, and the services are started from them as local processes."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from reftrain.settings import Settings
from services import catalog

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"
RULES = sorted((REPO / "deploy" / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = sorted((REPO / "deploy" / "prometheus" / "tests").glob("*.yml"))
DASHBOARDS = sorted((REPO / "deploy" / "grafana" / "dashboards").glob("*.json"))
K8S_BASE = REPO / "deploy" / "k8s" / "base"
K8S_OVERLAYS = sorted(p.parent for p in (REPO / "deploy" / "k8s" / "overlays").glob("*/kustomization.yaml"))
INIT_SCRIPT = REPO / "deploy" / "init" / "init_cluster.py"

#: The five services and their default ports, read from their specs (services/<name>/spec.py).
SERVICES = tuple(s.name for s in catalog.SPECS)
DEFAULT_PORTS = {s.name: s.default_port for s in catalog.SPECS}
#: Compose services that run a service module, and the service each one is.
APP_SERVICES = {"ingest": "ingest", "pivots": "pivots", "inference": "inference", "coordinator": "coordinator",
                "trainer": "trainer", "trainer-cpu": "trainer"}
INFRA_SERVICES = ("kafka", "postgres", "registry", "prometheus", "grafana")
#: Run to completion (`init`) or on demand (`kcat`, profile tools): no health check.
ONE_SHOT = ("init", "kcat")

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$\$")


def _yaml() -> YAML:
    return YAML(typ="safe", pure=True)


def interpolate(value: Any, environ: dict[str, str] | None = None) -> Any:
    """Compose variable interpolation (${VAR}, ${VAR:-default}, ${VAR-default}, $$) with the given
    environment (none by default: the file's defaults, what `docker compose up` uses on a clean shell)."""
    env = environ or {}
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, default = m.group(1), m.group(2), m.group(3)
        if op == ":-":
            return env.get(name) or (default or "")
        if op == "-":
            return env.get(name, default or "")
        if op in (":?", "?"):
            if name not in env:
                raise KeyError(f"compose requires ${name}: {default}")
            return env[name]
        return env.get(name, "")

    return _VAR.sub(sub, value)


#: The variables compose requires (${VAR:?...}, no default), as a user must set them.
REQUIRED_ENV = {"GRAFANA_ADMIN_PASSWORD": "test-only-grafana-password", "POSTGRES_PASSWORD": "test-only-pg-admin",
                "CATALOG_DB_PASSWORD": "test-only-catalog", "REGISTRY_DB_PASSWORD": "test-only-registry"}
OFFLINE = REPO / "deploy" / "docker" / "compose.offline.yml"


@cache
def compose() -> dict[str, Any]:
    """docker-compose.yml with YAML anchors and merge keys resolved and variables interpolated."""
    return interpolate(_yaml().load(COMPOSE.read_text()), REQUIRED_ENV)


def raw_compose() -> dict[str, Any]:
    """docker-compose.yml with anchors resolved and no interpolation (`${...}` kept)."""
    return _yaml().load(COMPOSE.read_text())  # type: ignore[no-any-return]


def service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


def environment(name: str) -> dict[str, str]:
    env = service(name).get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def duration_s(text: str | int | float) -> float:
    """Compose duration ('1m30s', '60s', '500ms') in seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)(ms|us|h|m|s)", text):
        total += float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    return total


def load_yaml(path: Path) -> Any:
    return _yaml().load(path.read_text())


def load_yaml_all(text: str) -> list[Any]:
    return [d for d in _yaml().load_all(text) if d]


# ------------------------------------------------------------------------------------ settings
def settings_class(svc: str) -> tuple[type[Settings], str]:
    """The settings model of a service and its env prefix, as its spec declares them."""
    spec = catalog.BY_NAME[svc]
    return spec.settings_class, spec.env_prefix


def init_settings_class() -> type[Settings]:
    spec = importlib.util.spec_from_file_location("reftrain_deploy_init", INIT_SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("reftrain_deploy_init", mod)
    spec.loader.exec_module(mod)
    return mod.InitSettings


def env_names(cls: type[Settings], prefix: str = "") -> set[str]:
    return {f"{prefix}{name}".upper() for name in cls.model_fields}


def service_present(svc: str) -> bool:
    return (REPO / "services" / svc / "__main__.py").exists()


# ------------------------------------------------------------------------------------ metrics
_METRIC = re.compile(r"\b(reftrain_[a-z0-9_]+)")


def promql_of_dashboards() -> list[str]:
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                out.append(node["expr"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for path in DASHBOARDS:
        walk(json.loads(path.read_text()))
    return out


def promql_of_rules() -> list[str]:
    out: list[str] = []
    for path in RULES:
        for group in load_yaml(path)["groups"]:
            out.extend(str(rule["expr"]) for rule in group["rules"])
    return out


def referenced_metrics() -> set[str]:
    """reftrain_* series names used by the dashboards and the alert rules."""
    names: set[str] = set()
    for expr in promql_of_dashboards() + promql_of_rules():
        names.update(_METRIC.findall(expr))
    return names


def exposed_series_names(text: str) -> set[str]:
    """Every series name a /metrics page can produce, labelled metrics without samples included:
    from the # TYPE lines (a histogram X exposes X_bucket, X_sum, X_count) and the sample lines."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            names.add(name)
            if kind == "histogram":
                names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"})
            elif kind == "summary":
                names.update({f"{name}_sum", f"{name}_count", f"{name}_created"})
            elif kind == "counter":
                base = name[: -len("_total")] if name.endswith("_total") else name
                names.update({f"{base}_total", f"{base}_created"})
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def owner_of_metric(name: str) -> str | None:
    """The service a reftrain_<service>_* metric belongs to (None: a shared one)."""
    for svc in SERVICES:
        if name.startswith(f"reftrain_{svc}_"):
            return svc
    return None


# ------------------------------------------------------------------------------------ tools
def tool(name: str) -> str | None:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 120), **kw)
