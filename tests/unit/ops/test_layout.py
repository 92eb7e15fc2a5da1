"""Layout rules of issue 15 that a later change could quietly undo: bench/ never imports tests/
(shared fixtures live in ops.fixtures), and only ops/catalog.py runs psql."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_bench_does_not_import_tests() -> None:
    files = sorted((REPO / "bench").glob("*.py"))
    assert files
    bad = {f.name: sorted(m for m in _imports(f) if m == "tests" or m.startswith("tests.")) for f in files}
    assert not {k: v for k, v in bad.items() if v}


def test_only_ops_catalog_runs_psql() -> None:
    """On this host; the compose test's psql runs inside the postgres container (docker compose exec)."""
    inside_containers = {"tests/compose/test_compose_stack.py"}
    runs = [p.relative_to(REPO).as_posix() for d in ("ops", "bench", "tests", "services", "reftrain")
            for p in (REPO / d).rglob("*.py") if p != Path(__file__) and '"psql"' in p.read_text()]
    assert sorted(set(runs) - inside_containers) == ["ops/catalog.py"], runs
