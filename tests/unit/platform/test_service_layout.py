"""Every service folder has the same shape, so a newcomer finds the same things in the same files:
``__main__.py`` (wiring only), ``spec.py`` (what it is: services/catalog.py), ``settings.py``,
pure domain module(s) without Kafka imports, ``metrics.py`` and a README that says what it
consumes, produces and guarantees."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from services import catalog

SERVICES_DIR = Path(__file__).resolve().parents[3] / "services"
REQUIRED = ("__init__.py", "__main__.py", "spec.py", "settings.py", "metrics.py", "README.md")
#: The pure domain modules of each service: the logic, testable without a broker.
DOMAIN = {
    "ingest": ("aggregate", "indicators", "sequencing"),
    "pivots": ("detector",),
    "inference": ("windows", "refs"),
    "coordinator": ("join", "join_config", "oracle"),
    "trainer": ("engine", "batch", "windows"),
}
#: Kafka runtime modules: a domain module imports none of them.
KAFKA = ("confluent_kafka", "reftrain.streams", "reftrain.serde")
#: services/trainer/config.py re-exports settings.py/spec.py for kafka_loop.py until that loop moves
#: onto reftrain.streams (issue 15 item 1); no other service keeps a config.py.
TRANSITIONAL = {("trainer", "config.py")}


def imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_the_catalog_names_every_service_folder() -> None:
    folders = {p.parent.name for p in SERVICES_DIR.glob("*/__init__.py")}
    assert folders == {s.name for s in catalog.SPECS} == set(DOMAIN)


@pytest.mark.parametrize("name", list(DOMAIN))
def test_service_folder_shape(name: str) -> None:
    folder = SERVICES_DIR / name
    missing = [f for f in REQUIRED if not (folder / f).is_file()]
    assert not missing, f"services/{name} lacks {missing}"
    assert not (folder / "config.py").exists() or (name, "config.py") in TRANSITIONAL, \
        f"services/{name}: settings live in settings.py"
    # __main__ is wiring: no classes, one body(), the spec-driven entry point
    tree = ast.parse((folder / "__main__.py").read_text())
    assert not [n for n in tree.body if isinstance(n, ast.ClassDef)]
    assert [n.name for n in tree.body if isinstance(n, ast.FunctionDef)] == ["body"]
    assert "service.main(SPEC, body)" in (folder / "__main__.py").read_text()
    # the domain modules exist and import no Kafka runtime
    for mod in DOMAIN[name]:
        path = folder / f"{mod}.py"
        assert path.is_file(), path
        bad = sorted(i for i in imports(path) if i.startswith(KAFKA))
        assert not bad, f"services/{name}/{mod}.py is domain logic but imports {bad}"


@pytest.mark.parametrize("spec", catalog.SPECS, ids=lambda s: s.name)
def test_service_readme_says_what_it_consumes_produces_and_guarantees(spec: object) -> None:
    from reftrain.spec import ServiceSpec

    assert isinstance(spec, ServiceSpec)
    text = (SERVICES_DIR / spec.name / "README.md").read_text()
    assert text.startswith(f"# {spec.name}\n")
    consumes = re.search(r"^Consumes: (.*)$", text, re.M)
    produces = re.search(r"^Produces: (.*)$", text, re.M)
    assert consumes and produces, f"services/{spec.name}/README.md: no Consumes:/Produces: line"

    def topics_of(line: str) -> list[str]:
        return [t for t in re.findall(r"`([a-z-]+)`", line)]

    assert topics_of(consumes.group(1)) == list(spec.inputs)
    assert topics_of(produces.group(1).split(";")[0]) == list(spec.outputs)
    assert re.search(r"^## Guarantees$", text, re.M)
