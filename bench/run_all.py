"""``make bench``: every bench/bench_*.py in turn (their own output as before), then ONE table of the
figures of issue #16's "done when", each as a ratio to its anchor measured in the same run, and
bench/results.json with every figure, its anchor, its target and the machine's load.

Why subprocesses and parsed lines: each bench is also a standalone script with its own argparse
and its own scratch catalog/topics; running them as they are keeps one definition of each figure
(the line a person reads is the line the table is built from). A figure whose line is missing
(a bench failed, or its output changed) is reported as missing, never invented; figures with no
bench yet (they need the tuned plain loop of the one-runtime work, ``make run`` or ``make
backfill``) are listed as "not measured here".

Run: make bench   (or .venv/bin/python bench/run_all.py [--quick] [--only NAME ...])
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

#: (script, arguments for a normal run, arguments for --quick)
SCRIPTS: dict[str, tuple[list[str], list[str]]] = {
    "bench_platform.py": ([], []),
    "bench_inference.py": ([], []),
    "bench_trainer.py": ([], ["--candles", "1400", "--train-jobs", "160"]),
    "bench_ingest.py": ([], ["--rows", "1500"]),
    "bench_pivots.py": ([], ["--per-file", "1500"]),
    "bench_coordinator.py": ([], []),  # fewer candles than ~2 windows make no jobs: no quick variant
}

NUM = r"([0-9][0-9,]*\.?[0-9]*)"


@dataclass
class Figure:
    name: str
    value: float | None  # the figure (a ratio, or a latency in ms)
    anchor: str  # what it is compared with, measured in the same run
    target: str  # the done-when of #16
    ok: bool | None
    source: str
    detail: str = ""


def num(text: str) -> float:
    return float(text.replace(",", ""))


def find(pattern: str, text: str) -> re.Match[str] | None:
    return re.search(pattern, text, re.S)


def ratio_figure(name: str, out: str, pattern: str, anchor: str, target: str, minimum: float, source: str,
                 compute: Callable[[re.Match[str]], float], detail: Callable[[re.Match[str]], str]) -> Figure:
    m = find(pattern, out)
    if m is None:
        return Figure(name, None, anchor, target, None, source, "line not found (bench failed or output changed)")
    value = compute(m)
    return Figure(name, value, anchor, target, value >= minimum, source, detail(m))


def figures(outputs: dict[str, str]) -> list[Figure]:
    out = {k: outputs.get(k, "") for k in SCRIPTS}
    f: list[Figure] = []
    coordinator = out["bench_coordinator.py"]
    if re.search(r"; 0 jobs\)", coordinator):  # a backlog that joined nothing measures no join
        coordinator = ""
    f.append(ratio_figure(
        "coordinator / tuned plain loop", coordinator,
        rf"coordinator {NUM} input events/s.*?consume-produce loop, same serde \+ transactions, {NUM} events/s",
        "plain consume-produce loop, same serde + transactions (today's loop)", ">= 0.8", 0.8,
        "bench_coordinator.py", lambda m: num(m[1]) / num(m[2]), lambda m: f"{m[1]} vs {m[2]} events/s"))
    f.append(ratio_figure(
        "pivots / tuned plain EOS loop", out["bench_pivots.py"],
        rf"pivots service:\s+{NUM} candles/s.*?anchor plain EOS loop:\s+{NUM} candles/s",
        "plain EOS loop (today's loop)", ">= 0.7", 0.7, "bench_pivots.py",
        lambda m: num(m[1]) / num(m[2]), lambda m: f"{m[1]} vs {m[2]} candles/s"))
    f.append(Figure("inference / tuned plain EOS loop", None, "plain EOS loop", ">= 0.7", None, "-",
                    "not measured here: needs the tuned plain loop bench of the one-runtime work"))
    f.append(Figure("tuned plain loop / raw confluent-kafka consume", None, "raw consume of the same messages",
                    ">= 0.1", None, "-", "not measured here: needs the tuned plain loop (one-runtime work)"))
    f.append(ratio_figure(
        "wire serde / plain fastavro", out["bench_platform.py"],
        rf"encode\+decode {NUM} candles/s; anchor plain fastavro schemaless {NUM} candles/s",
        "plain fastavro schemaless encode+decode", ">= 0.8", 0.8, "bench_platform.py",
        lambda m: num(m[1]) / num(m[2]), lambda m: f"{m[1]} vs {m[2]} candles/s"))
    f.append(ratio_figure(
        "ingest replay / raw producer", out["bench_ingest.py"],
        rf"ingest \(store \+ Kafka\):\s+{NUM} s\s+{NUM} candles/s.*?"
        rf"raw producer, same bytes:\s+{NUM} s\s+{NUM} candles/s",
        "raw producer of the same Avro bytes", ">= 0.5", 0.5, "bench_ingest.py",
        lambda m: num(m[2]) / num(m[4]), lambda m: f"{m[2]} vs {m[4]} candles/s"))
    m = find(rf"join latency .*?p50 {NUM} ms, p99 {NUM} ms.*?anchor plain loop input->commit p50 {NUM} ms, "
             rf"p99 {NUM} ms", out["bench_coordinator.py"])
    if m is None:
        f.append(Figure("join latency p50 / p99 (ms, 100 inputs/s)", None, "plain loop input->commit",
                        "p50 <= 30, p99 <= 100", None, "bench_coordinator.py", "line not found"))
    else:
        p50, p99 = num(m[1]), num(m[2])
        f.append(Figure("join latency p99 (ms, 100 inputs/s)", p99, f"plain loop p99 {m[4]} ms (ratio "
                        f"{p99 / max(num(m[4]), 1e-9):.2f})", "<= 100", p99 <= 100, "bench_coordinator.py",
                        f"p50 {p50:.0f} ms (target <= 30: {'ok' if p50 <= 30 else 'NOT met'}); "
                        f"plain loop p50 {m[3]} ms"))
    f.append(Figure("live pace candle -> ref / CANDLE job", None, "-", "p50 <= 50 ms / p50 <= 100, p99 <= 500 ms",
                    None, "-", "not measured here: `make run` report (latency table)"))
    m = find(rf"ring buffer p50 {NUM} us p99 {NUM} us; anchor the store read it replaces, bounded p50 {NUM} ms "
             rf"p99 {NUM} ms", out["bench_inference.py"])
    if m is None:
        f.append(Figure("inference window from memory p99 (ms)", None, "the store read it replaces", "<= 1 ms",
                        None, "bench_inference.py", "line not found"))
    else:
        ring_p99 = num(m[2]) / 1000
        f.append(Figure("inference window from memory p99 (ms)", ring_p99,
                        f"store read p99 {m[4]} ms (ratio store/ring {num(m[4]) / max(ring_p99, 1e-9):,.0f}x)",
                        "<= 1 ms", ring_p99 <= 1.0, "bench_inference.py", f"ring p50 {m[1]} us; store p50 {m[3]} ms"))
    f.append(Figure("backfill: BTCUSDT 1h file + all 1m files", None, "-", "every stage keeps up", None, "-",
                    "not measured here: `make backfill` (not built in this branch)"))
    f.append(ratio_figure(
        "trainer shared passes / one pass per job", out["bench_trainer.py"],
        rf"real job mix \(.*?\): shared forward passes {NUM} samples/s; anchor one pass per job {NUM} samples/s",
        "one forward pass per job, same jobs and batch", ">= 2", 2.0, "bench_trainer.py",
        lambda m: num(m[1]) / num(m[2]), lambda m: f"{m[1]} vs {m[2]} samples/s"))
    return f


def table(figs: list[Figure]) -> str:
    rows = [("figure", "value", "target", "met", "anchor (same run)", "detail")]
    for g in figs:
        value = "-" if g.value is None else f"{g.value:,.3g}" if g.value < 1000 else f"{g.value:,.0f}"
        met = "-" if g.ok is None else "yes" if g.ok else "NO"
        rows.append((g.name, value, g.target, met, g.anchor, g.detail))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for i, r in enumerate(rows):
        lines.append("  ".join(r[k].ljust(widths[k]) for k in range(4)) + "  " + r[4] + (f"; {r[5]}" if r[5] else ""))
        if i == 0:
            lines.append("-" * (sum(widths) + 8 + 40))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller inputs (noisier figures)")
    ap.add_argument("--only", nargs="*", default=None, help="bench scripts to run (default: all)")
    ap.add_argument("--out", default=str(BENCH / "results.json"))
    args = ap.parse_args()
    load_before = os.getloadavg()
    outputs: dict[str, str] = {}
    codes: dict[str, int] = {}
    started = time.time()
    for script, (normal, quick) in SCRIPTS.items():
        if args.only and script not in args.only and script.removesuffix(".py") not in args.only:
            continue
        print(f"== bench/{script}", flush=True)
        proc = subprocess.Popen([sys.executable, str(BENCH / script), *(quick if args.quick else normal)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line)
        codes[script] = proc.wait()
        outputs[script] = "".join(lines)
        if codes[script]:
            print(f"   (bench/{script} exited {codes[script]}: its figures are reported missing)")
    figs = figures(outputs)
    load_after = os.getloadavg()
    print(f"\n#16 figures (ratios to anchors measured in this run; {os.cpu_count()} cores, load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after; noisy under load: compare ratios, not rates)")
    print(table(figs))
    Path(args.out).write_text(json.dumps({
        "issue": 16, "started": started, "seconds": round(time.time() - started, 1), "quick": args.quick,
        "cores": os.cpu_count(), "load_average_before": load_before, "load_average_after": load_after,
        "exit_codes": codes, "figures": [asdict(g) for g in figs]}, indent=2) + "\n")
    print(f"\nwritten {args.out}")
    if any(codes.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
