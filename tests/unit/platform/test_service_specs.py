"""The service specs (services/<name>/spec.py, collected in services/catalog.py) are the one place a
service's port, group, topics and settings are declared: these tests hold the README table,
docs/platform.md, ops/stages.py, the code that builds the apps and ``--help`` to them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ops import stages
from reftrain import topics
from reftrain.settings import Settings
from reftrain.spec import ServiceSpec
from services import catalog

REPO = Path(__file__).resolve().parents[3]


def readme_row(spec: ServiceSpec) -> str:
    consumes = ", ".join([*spec.external_inputs, *(f"`{t}`" for t in spec.inputs)])
    produces = ", ".join(f"`{t}`" for t in spec.outputs)
    return f"| `{spec.name}` | {consumes} | {produces} | {spec.state} | {spec.default_port} | {spec.description} |"


def test_readme_service_table_is_what_the_specs_say() -> None:
    text = (REPO / "README.md").read_text()
    header = "| service | consumes | produces | state | port | what it does |"
    assert header in text
    rows = text.split(header, 1)[1].splitlines()[2:]
    table = [r for r in rows[: next(i for i, r in enumerate(rows) if not r.startswith("|"))]]
    assert table == [readme_row(s) for s in catalog.SPECS]


def test_platform_doc_lists_the_spec_ports() -> None:
    line = ", ".join(f"{s.name} {s.default_port}" for s in catalog.SPECS)
    assert f"Default HTTP ports: {line}." in (REPO / "docs" / "platform.md").read_text()


def test_specs_are_consistent_with_each_other_and_the_topics() -> None:
    names = [s.name for s in catalog.SPECS]
    assert names == ["ingest", "pivots", "inference", "coordinator", "trainer"]  # data-flow order
    for s in catalog.SPECS:
        assert (REPO / "services" / s.name / "spec.py").is_file()
        assert s.env_prefix == f"{s.name.upper()}_"
        assert s.group("t1-") == f"t1-{s.name}"
        assert issubclass(s.settings_class, Settings) and s.settings_class.env_prefix() == s.env_prefix
        assert set(s.inputs) | set(s.outputs) <= set(topics.RECORD_OF_TOPIC), s.name
    ports = [s.default_port for s in catalog.SPECS]
    assert len(set(ports)) == len(ports)
    produced = [t for s in catalog.SPECS for t in s.outputs]
    assert len(produced) == len(set(produced)), "one writer per topic"
    assert {t for s in catalog.SPECS for t in s.inputs} <= set(produced), "every input has a producer"


def test_the_apps_consume_what_their_specs_declare() -> None:
    from services.coordinator.processor import INPUTS

    assert set(INPUTS) == set(catalog.COORDINATOR.inputs)
    src = (REPO / "services" / "inference" / "__main__.py").read_text()
    assert "list(SPEC.inputs)" in src and "SPEC.group(" in src
    src = (REPO / "services" / "pivots" / "streaming.py").read_text()
    assert "list(SPEC.inputs)" in src and "SPEC.group(" in src


def test_ops_stages_are_the_specs() -> None:
    assert [st.spec for st in stages.STAGES] == list(catalog.SPECS)
    assert stages.BY_NAME["ingest"].replay and not stages.BY_NAME["trainer"].replay
    assert stages.BY_NAME["coordinator"].group("p-") == "p-coordinator"
    assert stages.TOPIC_ORDER == (topics.CANDLES, topics.PIVOTS, topics.INFERENCE_REFS, topics.TRAINING_JOBS,
                                  topics.MODEL_VERSIONS)
    assert stages.PRODUCER_OF[topics.TRAINING_JOBS] == "coordinator"


def test_help_of_every_service_prints_its_spec_and_settings() -> None:
    """``python -m services.<name> --help`` (a real process each, run side by side): name,
    description, topics, port and every setting's env name with its default; exit 0, no stack needed."""
    procs = {s.name: subprocess.Popen([sys.executable, "-m", s.module, "--help"], cwd=REPO, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for s in catalog.SPECS}
    for s in catalog.SPECS:
        out, err = procs[s.name].communicate(timeout=120)
        assert procs[s.name].returncode == 0, err
        assert out.startswith(f"python -m services.{s.name}: {s.description}\n")
        consumes = re.search(r"^consumes: (.*)$", out, re.M)
        produces = re.search(r"^produces: (.*)$", out, re.M)
        assert consumes and produces
        assert [t for t in consumes.group(1).split(", ") if t in topics.RECORD_OF_TOPIC] == list(s.inputs)
        assert produces.group(1).split(", ") == list(s.outputs)
        assert f"HTTP port: {s.default_port} " in out
        envs = re.findall(r"^  ([A-Z_]+) ", out, re.M)
        assert envs == [f"{s.env_prefix}{name}".upper() for name in s.settings_class.model_fields]


def test_help_shows_defaults_as_they_would_be_written_in_the_environment() -> None:
    from reftrain import settings

    for s in catalog.SPECS:
        docs = {d.env: d.default for d in s.settings()}
        env = {k: v for k, v in docs.items() if v}
        if s.name == "ingest":
            env["INGEST_FILES"] = "x.csv"
        # the printed defaults parse back to the dataclass defaults
        assert settings.load(s.settings_class, s.env_prefix, env) == settings.load(
            s.settings_class, s.env_prefix, {"INGEST_FILES": "x.csv"} if s.name == "ingest" else {})


def test_a_service_refuses_arguments_other_than_help() -> None:
    res = subprocess.run([sys.executable, "-m", "services.pivots", "--port", "1"], cwd=REPO, text=True,
                         capture_output=True, timeout=120)
    assert res.returncode == 2
    assert "usage: python -m services.pivots [--help]" in res.stderr
    assert "PIVOTS_*" in res.stderr


@pytest.mark.parametrize("value, message", [("fancy", "INGEST_LAYOUT='fancy': use auto, simple or binance")])
def test_ingest_settings_refuse_a_bad_layout_by_name(value: str, message: str) -> None:
    from reftrain.errors import ConfigError
    from services.ingest import settings as ingest_settings

    with pytest.raises(ConfigError) as exc:
        ingest_settings.load({"INGEST_FILES": "x.csv", "INGEST_LAYOUT": value})
    assert str(exc.value) == message
    with pytest.raises(ConfigError, match=r"set INGEST_FILES .* or INGEST_WS_URL"):
        ingest_settings.load({})
