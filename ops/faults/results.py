"""What a campaign records (exits, injected faults) and what it concludes (rows, checks): plain data,
written to ``result.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Exit:
    at: float
    instance: str
    code: int | None
    planned: bool
    liveness: bool = False  # killed by the emulated liveness probe (the service was stuck)


@dataclass
class Injection:
    kind: str
    detail: str
    start: float  # wall clock (time.time()), comparable with Kafka timestamps / 1000
    end: float
    recovered: float | None = None  # wall clock
    triggered: bool = True
    note: str = ""

    @property
    def recovery_s(self) -> float | None:
        return None if self.recovered is None else round(self.recovered - self.end, 1)


@dataclass
class Row:
    fault: str
    injected: int = 0
    expected: int = 0
    seen: int = 0
    lost: int = 0
    duplicated: int = 0
    extra: int = 0
    trained_twice: int = 0
    not_trained: int = 0
    crashes: int = 0
    hung: int = 0
    recovery_max_s: float | None = None
    recovery_median_s: float | None = None
    not_recovered: int = 0


@dataclass
class Result:
    size: str
    run_id: str
    rows: list[Row]
    totals: Row
    upstream: dict[str, dict[str, int]]
    bad_inputs: dict[str, Any]
    crash_loops: list[str]
    injections: list[dict[str, Any]]
    checks: dict[str, bool]
    #: Reported, not failing: what recovered only with help (a liveness restart of a stuck service).
    observations: dict[str, Any]
    meta: dict[str, Any]
    out_dir: str

    @property
    def ok(self) -> bool:
        return all(self.checks.values())

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

