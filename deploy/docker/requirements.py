"""Print the pinned requirements of pyproject.toml for one image target (used by the Dockerfile).

    python requirements.py base   # [project].dependencies: every service except the ML ones
    python requirements.py ml     # the ml extra only (torch); installed on top of base

Dependencies come from pyproject.toml alone, so the image and the virtualenv cannot drift apart, and
the dependency layers are rebuilt only when pyproject.toml changes, not when the code does.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(target: str, pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    if target == "base":
        return list(project["dependencies"])
    if target == "ml":
        return list(project["optional-dependencies"]["ml"])
    raise SystemExit(f"unknown target {target!r}: base | ml")


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "base"
    path = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("pyproject.toml")
    print("\n".join(requirements(target, path)))
