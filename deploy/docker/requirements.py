"""Print the hashed requirements of one image target, cut from requirements.lock (used by the Dockerfile).

    python requirements.py base [pyproject.toml] [requirements.lock]            # every service but the ML ones
    python requirements.py ml   [pyproject.toml] [requirements.lock]            # torch with its CUDA wheels
    python requirements.py ml-cpu [pyproject.toml] [requirements.lock]          # torch's pure deps, no CUDA
    python requirements.py ml-notriton [pyproject.toml] [requirements.lock]     # torch + CUDA libs, no triton

The lock (uv, hashes, every extra) is the one source of versions and hashes: a target's requirements are
its direct pins in pyproject.toml plus everything the lock says they pull in (the `# via` lines), each
printed with its hashes, so `pip install --require-hashes --no-deps -r -` installs exactly the lock's
files. `ml-cpu` leaves torch itself and every CUDA package out: the Dockerfile installs torch from the
CPU wheel index given by TORCH_INDEX_URL. `ml-notriton` is the CPU image built where only PyPI is
reachable: PyPI's torch needs the CUDA libraries to import, but not triton (GPU kernels, ~1 GB).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*(?:[=<>!~].*)?$")
#: Packages that exist only for torch's CUDA build (left out of `ml-cpu`).
_CUDA = re.compile(r"^(nvidia-|cuda-|triton$)")


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str) -> dict[str, tuple[str, set[str]]]:
    """name -> (the requirement block with its hashes, the names it is required by)."""
    out: dict[str, tuple[str, set[str]]] = {}
    name = ""
    block: list[str] = []
    vias: set[str] = set()

    def flush() -> None:
        if name:
            out[name] = ("\n".join(block), vias)

    for line in text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            flush()
            name, block, vias = _canon(line.split("==")[0].split("[")[0]), [line.rstrip()], set()
        elif line.strip().startswith("--hash") and name:
            block.append(line.rstrip())
        elif line.strip().startswith("# via") or line.strip().startswith("#   "):
            via = line.strip().removeprefix("# via").removeprefix("#").strip()
            if via:
                vias.add(_canon(via.split(" ")[0]))
    flush()
    # strip a trailing continuation from the last hash line of each block
    return {n: (b.rstrip(" \\"), v) for n, (b, v) in out.items()}


def direct(target: str, pyproject: Path) -> set[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    if target == "base":
        reqs = project["dependencies"]
    elif target in ("ml", "ml-cpu", "ml-notriton"):
        reqs = project["optional-dependencies"]["ml"]
    else:
        raise SystemExit(f"unknown target {target!r}: base | ml | ml-cpu | ml-notriton")
    names = set()
    for r in reqs:
        m = _NAME.match(r.strip())
        if m is None:
            raise SystemExit(f"cannot read requirement {r!r}")
        names.add(_canon(m.group(1)))
    return names


def closure(roots: set[str], lock: dict[str, tuple[str, set[str]]]) -> set[str]:
    """roots plus every locked package required (transitively) by one of them."""
    missing = roots - set(lock)
    if missing:
        raise SystemExit(f"not in the lock (regenerate it): {sorted(missing)}")
    got = set(roots)
    changed = True
    while changed:
        changed = False
        for name, (_, vias) in lock.items():
            if name not in got and vias & got:
                got.add(name)
                changed = True
    return got


def requirements(target: str, pyproject: Path, lockfile: Path) -> list[str]:
    lock = parse_lock(lockfile.read_text())
    names = closure(direct(target, pyproject), lock)
    if target == "ml-cpu":
        names = {n for n in names if n != "torch" and not _CUDA.match(n)}
    elif target == "ml-notriton":
        names.discard("triton")
    if target != "base":  # ml is installed on top of base: only what base lacks
        names -= closure(direct("base", pyproject), lock)
    return [lock[n][0] for n in sorted(names)]


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "base"
    pyproject = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("pyproject.toml")
    lockfile = Path(sys.argv[3]) if len(sys.argv) > 3 else pyproject.with_name("requirements.lock")
    print("\n".join(requirements(target, pyproject, lockfile)))
