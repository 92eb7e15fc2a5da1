"""The five stages of the loop as ops sees them: which process, which topics in and out, which group.

Kept in one table so the orchestrator, the live progress view and the report agree on what a stage
is, and so a stage whose package has no ``__main__`` yet (services are written in parallel) is
detected in one place and reported as "not run" everywhere instead of failing somewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reftrain import topics

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
    """One service of the loop.

    ``inputs``/``outputs`` are logical topic names; ``group`` is the consumer-group stem the platform
    derives (``<TOPIC_PREFIX><name>``, docs/platform.md). ``replay`` marks ingest, which exits by
    itself once its files are replayed (INGEST_EXIT_WHEN_DONE), so its exit 0 is "done", not a crash.
    """

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    default_port: int
    replay: bool = False

    @property
    def module(self) -> str:
        return f"services.{self.name}"

    def group(self, topic_prefix: str) -> str:
        return f"{topic_prefix}{self.name}"

    def present(self, repo: Path = REPO) -> bool:
        """True when ``python -m services.<name>`` can start (the package has a ``__main__``)."""
        return (repo / "services" / self.name / "__main__.py").is_file()


INGEST = Stage("ingest", (), (topics.CANDLES,), 8001, replay=True)
PIVOTS = Stage("pivots", (topics.CANDLES,), (topics.PIVOTS,), 8002)
INFERENCE = Stage("inference", (topics.CANDLES, topics.MODEL_VERSIONS), (topics.INFERENCE_REFS,), 8003)
COORDINATOR = Stage("coordinator", (topics.INFERENCE_REFS, topics.PIVOTS, topics.CANDLES),
                    (topics.TRAINING_JOBS,), 8004)
TRAINER = Stage("trainer", (topics.TRAINING_JOBS,), (topics.MODEL_VERSIONS,), 8005)

#: In data-flow order (also the order of the progress table and the report).
STAGES: tuple[Stage, ...] = (INGEST, PIVOTS, INFERENCE, COORDINATOR, TRAINER)
BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}

#: Topics in data-flow order, with the stage that writes each.
TOPIC_ORDER: tuple[str, ...] = (topics.CANDLES, topics.PIVOTS, topics.INFERENCE_REFS, topics.TRAINING_JOBS,
                                topics.MODEL_VERSIONS)
PRODUCER_OF: dict[str, str] = {t: s.name for s in STAGES for t in s.outputs}


def present_stages(repo: Path = REPO) -> list[Stage]:
    return [s for s in STAGES if s.present(repo)]
