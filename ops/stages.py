"""The five stages of the loop as ops sees them: which process, which topics in and out, which group.

Read from the services' specs (services/catalog.py) so the orchestrator, the live progress view
and the report agree on what a stage is, and so a stage whose package has no ``__main__`` yet
(services are written in parallel) is detected in one place and reported as "not run" everywhere
instead of failing somewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reftrain.spec import ServiceSpec
from services import catalog

REPO = Path(__file__).resolve().parent.parent
STACK = REPO / "deploy" / "local" / "stack.sh"


def parse_stack_env(text: str) -> dict[str, str]:
    """The variables of ``stack.sh env`` output (``export K='v'`` lines) as a dict."""
    env = {}
    for line in text.splitlines():
        if line.startswith("export "):
            k, _, v = line[len("export "):].partition("=")
            env[k] = v.strip("'")
    return env


@dataclass(frozen=True)
class Stage:
    """One service of the loop, as ops needs it: its ``ServiceSpec`` (services/<name>/spec.py, the one
    place a service's port, group and topics are declared) plus whether its package can run here.

    ``inputs``/``outputs`` are logical topic names; ``group`` is the consumer-group stem the platform
    derives (``<TOPIC_PREFIX><name>``, docs/platform.md). ``replay`` marks ingest, which exits by
    itself once its files are replayed (INGEST_EXIT_WHEN_DONE), so its exit 0 is "done", not a crash.
    """

    spec: ServiceSpec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def inputs(self) -> tuple[str, ...]:
        return self.spec.inputs

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.spec.outputs

    @property
    def default_port(self) -> int:
        return self.spec.default_port

    @property
    def replay(self) -> bool:
        return self.spec.replay

    @property
    def module(self) -> str:
        return self.spec.module

    def group(self, topic_prefix: str) -> str:
        return self.spec.group(topic_prefix)

    def present(self, repo: Path = REPO) -> bool:
        """True when ``python -m services.<name>`` can start (the package has a ``__main__``)."""
        return (repo / "services" / self.name / "__main__.py").is_file()


#: In data-flow order (also the order of the progress table and the report).
STAGES: tuple[Stage, ...] = tuple(Stage(spec) for spec in catalog.SPECS)
BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}

#: Topics in data-flow order, with the stage that writes each.
TOPIC_ORDER: tuple[str, ...] = tuple(t for s in STAGES for t in s.outputs)
PRODUCER_OF: dict[str, str] = {t: s.name for s in STAGES for t in s.outputs}


def present_stages(repo: Path = REPO) -> list[Stage]:
    return [s for s in STAGES if s.present(repo)]
