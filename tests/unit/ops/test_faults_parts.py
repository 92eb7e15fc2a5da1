"""The fault campaign's parts that need no stack: which fault a moment belongs to, the schedule a
size implies, the markdown table, and the CLI's flags (``python -m ops.faults``, ``make faults``)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from ops.faults import SIZES, Result, Row, markdown
from ops.faults.__main__ import main
from ops.faults.injectors import FaultInjector
from ops.faults.results import Injection
from ops.faults.stack import PrivateStack
from ops.faults.verdict import _window_of

REPO = Path(__file__).resolve().parents[3]


def test_a_moment_belongs_to_the_latest_fault_active_then() -> None:
    a = Injection("kill -9 pivots", "pivots", start=100.0, end=101.0, recovered=110.0)
    b = Injection("broker stop + restart", "SIGTERM", start=105.0, end=120.0, recovered=None)
    assert _window_of([a, b], 99.0) is a  # 2 s before the start counts (the kill's own moment)
    assert _window_of([a, b], 106.0) is b  # both active: the later one
    assert _window_of([a], 114.0) is a  # up to 5 s after the recovery
    assert _window_of([a], 116.0) is None
    assert _window_of([b], 120.0 + 240.0 + 5.0) is b  # not recovered: 240 s after its end
    assert _window_of([b], 120.0 + 240.0 + 6.0) is None


@pytest.mark.parametrize("size", sorted(SIZES))
def test_the_schedule_holds_every_fault_of_the_size(size: str, tmp_path: Path) -> None:
    s = SIZES[size]
    inj = FaultInjector(s, PrivateStack.__new__(PrivateStack), tmp_path, seed=7, say=lambda _m: None)
    first = [name for name, _fn in inj.schedule()]
    names = Counter(name.split()[0] for name in first)
    assert names["kill"] == 5 * s.kills_per_service  # ingest + the four consumers
    assert names["checkpoint"] == len(s.failpoints)
    assert names["commit"] == len(s.commit_kills)
    assert names["rebalance"] == s.rebalance_kills
    assert names["broker"] == len(s.broker_stops)
    assert names["registry"] == s.registry_stops and names["store"] == s.store_outages
    assert names["data"] == s.data_path_outages and names["scale"] == s.scale_events
    again = FaultInjector(s, PrivateStack.__new__(PrivateStack), tmp_path, seed=7, say=lambda _m: None)
    assert [n for n, _ in again.schedule()] == first  # a seed replays its schedule


def test_markdown_shows_rows_totals_and_failed_checks() -> None:
    row = Row("kill -9 coordinator", injected=1, expected=10, seen=9, lost=1, recovery_max_s=4.5,
              recovery_median_s=4.5)
    res = Result("reduced", "run", [row], Row("TOTAL", injected=1, expected=10, seen=9, lost=1),
                 {"candles": {"expected": 5, "seen": 5, "missing": 0, "duplicated": 0, "extra": 0}},
                 {"injected": 1, "expected_dlq_entries": 3, "accounted": 3, "missing": 0, "duplicate_entries_stream": 0,
                  "duplicate_entries_trainer (at-least-once)": 0, "other_dlq_entries": 0, "detail": []},
                 [], [], {"lost = 0": False, "duplicated = 0": True}, {}, {}, "/tmp/run")
    md = markdown(res)
    assert "| kill -9 coordinator | 1 | 10 | 9 | 1 | 0 | 0 | 0 | 0 | 0 | 0 | 4.5 | 4.5 |" in md
    assert "| TOTAL | 1 | 10 | 9 | 1 |" in md
    assert "| lost = 0 | FAIL |" in md and "| duplicated = 0 | pass |" in md
    assert "| candles | 5 | 5 | 0 | 0 | 0 |" in md
    assert not res.ok


def test_cli_flags_are_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--size {full,reduced}", "--seed", "--out", "--stack-dir", "--keep-stack", "--keep-data"):
        assert flag in out
    res = subprocess.run([sys.executable, "-m", "ops.faults", "--size", "tiny"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and "invalid choice: 'tiny'" in res.stderr
