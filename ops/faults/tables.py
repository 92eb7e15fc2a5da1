"""The campaign's result as tables: markdown (``table.md``, docs/reliability.md) and the terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable

from ops.faults.results import Result, Row

COLUMNS = ("fault", "injected", "jobs expected", "jobs seen", "lost", "duplicated", "extra", "trained twice",
           "not trained", "unplanned exits", "liveness restarts", "recovery max s", "recovery median s")


def _cells(r: Row) -> list[str]:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:g}"

    rec = f(r.recovery_max_s) + (f" ({r.not_recovered} not recovered)" if r.not_recovered else "")
    return [r.fault, str(r.injected), str(r.expected), str(r.seen), str(r.lost), str(r.duplicated), str(r.extra),
            str(r.trained_twice), str(r.not_trained), str(r.crashes), str(r.hung), rec, f(r.recovery_median_s)]


def markdown(res: Result) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in [*res.rows, res.totals]:
        lines.append("| " + " | ".join(_cells(r)) + " |")
    lines += ["", "| stage | expected | seen | missing | duplicated | extra |", "|---|---|---|---|---|---|"]
    for name, v in res.upstream.items():
        lines.append(f"| {name} | {v['expected']} | {v['seen']} | {v['missing']} | {v['duplicated']} | {v['extra']} |")
    b = res.bad_inputs
    lines += ["", f"Bad inputs injected during the campaign: {b['injected']}; DLQ entries expected "
              f"{b['expected_dlq_entries']}, found {b['accounted']}, missing {b['missing']}, duplicated "
              f"(stream services) {b['duplicate_entries_stream']}, duplicated (trainer, at-least-once) "
              f"{b['duplicate_entries_trainer (at-least-once)']}, other DLQ entries {b['other_dlq_entries']}.",
              "", "| check | result |", "|---|---|"]
    lines += [f"| {k} | {'pass' if v else 'FAIL'} |" for k, v in res.checks.items()]
    if res.crash_loops:
        lines += ["", "Crash loops / unhealthy at the end: " + "; ".join(res.crash_loops)]
    return "\n".join(lines) + "\n"


def render(res: Result, out: Callable[[str], None]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=180) if not sys.stdout.isatty() else Console()
    t = Table(title=f"fault campaign ({res.size}, run {res.run_id})")
    for col in COLUMNS:
        t.add_column(col, justify="left" if col == "fault" else "right")
    for r in res.rows:
        t.add_row(*_cells(r))
    t.add_row(*_cells(res.totals), style="bold")
    console.print(t)
    u = Table(title="upstream integrity (from the topics)")
    for col in ("stage", "expected", "seen", "missing", "duplicated", "extra"):
        u.add_column(col)
    for name, v in res.upstream.items():
        u.add_row(name, *(str(v[k]) for k in ("expected", "seen", "missing", "duplicated", "extra")))
    console.print(u)
    b = res.bad_inputs
    out(f"bad inputs: {b['injected']} injected, {b['accounted']}/{b['expected_dlq_entries']} DLQ entries found, "
        f"{b['missing']} missing, {b['duplicate_entries_stream']} duplicated (stream), "
        f"{b['duplicate_entries_trainer (at-least-once)']} duplicated (trainer), {b['other_dlq_entries']} other")
    for d in b["detail"]:
        out(f"  {d}")
    for name, passed in res.checks.items():
        out(f"  [{'pass' if passed else 'FAIL'}] {name}")
    for p in res.crash_loops:
        out(f"  crash loop / unhealthy: {p}")
    out(f"result: {'PASS' if res.ok else 'FAIL'}  ({res.out_dir})")

