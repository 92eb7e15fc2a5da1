"""Draw a candle CSV with its multi-level pivots, to eyeball what the detector calls structure.

    python -m services.pivots.plot --csv data/BTCUSDT-1m-2025-09-22_2025-09-25.csv --levels 3 \
        --out docs/img/pivots_btcusdt_1m.png [--last N] [--strengths 2,2,2,2,2]

Pivots are computed on the WHOLE file (so ``--last`` only crops the view, never the detection) with the
batch reference ``detect_pivots``; the streaming detector is tested to give the same pivots.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt
from matplotlib.ticker import FuncFormatter

from reftrain.candlefiles import load_candles
from reftrain.records import Candle, Pivot
from services.pivots.detector import DEFAULT_STRENGTHS, detect_pivots

# Marker size, colour for HIGH, colour for LOW, per level (1-based; later levels reuse the last style).
_STYLE: list[tuple[float, str, str]] = [
    (14.0, "#e08080", "#80b080"),
    (45.0, "#c01010", "#108010"),
    (110.0, "#700000", "#004000"),
    (170.0, "#ff8c00", "#1e90ff"),
    (230.0, "#8b008b", "#00008b"),
]


_DAY_MS = 86_400_000


def _days(ms: Sequence[int]) -> npt.NDArray[np.float64]:
    """Epoch ms -> matplotlib date numbers (days since 1970-01-01, matplotlib's default epoch)."""
    return np.asarray(ms, dtype=np.float64) / _DAY_MS


def _fmt_day(value: float, _pos: int | None) -> str:
    return datetime.fromtimestamp(value * 86_400, tz=UTC).strftime("%m-%d %H:%M")


def _parse_strengths(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None


def render(
    candles: Sequence[Candle],
    pivots: Sequence[Pivot],
    out: Path,
    levels: int,
    last: int | None = None,
    title: str | None = None,
) -> dict[int, int]:
    """Write the PNG; return how many pivots of each level were drawn (for the caller to report)."""
    shown = list(candles[-last:] if last else candles)
    if not shown:
        raise ValueError("no candles to draw")
    t0, t1 = shown[0]["open_time"], shown[-1]["open_time"]
    x = _days([c["open_time"] for c in shown])
    fig, ax = plt.subplots(figsize=(16, 7), dpi=110)
    ax.vlines(
        x,
        np.array([c["low"] for c in shown]),
        np.array([c["high"] for c in shown]),
        color="#a0a0a0",
        linewidth=0.8 if len(shown) > 1000 else 1.6,
        label="high-low range",
    )
    ax.plot(x, [c["close"] for c in shown], color="#303030", linewidth=0.6, label="close")
    drawn: dict[int, int] = {}
    for level in range(1, levels + 1):
        size, c_high, c_low = _STYLE[min(level, len(_STYLE)) - 1]
        for kind, marker, colour in (("HIGH", "v", c_high), ("LOW", "^", c_low)):
            sel = [
                p for p in pivots if p["level"] == level and p["kind"] == kind and t0 <= p["pivot_time"] <= t1
            ]
            drawn[level] = drawn.get(level, 0) + len(sel)
            if not sel:
                continue
            ax.scatter(
                _days([p["pivot_time"] for p in sel]),
                [p["price"] for p in sel],
                s=size,
                marker=marker,
                color=colour,
                edgecolors="black" if level > 1 else "none",
                linewidths=0.4,
                zorder=2 + level,
                label=f"L{level} {kind} ({len(sel)})",
            )
    lo, hi = min(c["low"] for c in shown), max(c["high"] for c in shown)
    pad = (hi - lo) * 0.04 or 1.0
    ax.set_ylim(lo - pad, hi + pad)  # explicit: the date axis does not re-run autoscale for vlines
    margin = (float(x[-1]) - float(x[0])) * 0.01 or 1e-3
    ax.set_xlim(float(x[0]) - margin, float(x[-1]) + margin)
    ax.xaxis_date(tz=UTC)  # date locator: ticks on round times
    ax.xaxis.set_major_formatter(FuncFormatter(_fmt_day))
    ax.set_xlabel("open time (UTC)")
    ax.set_ylabel("price")
    ax.set_title(title or "pivots")
    ax.grid(alpha=0.25)
    ax.legend(loc="best", fontsize=8, ncols=2)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return drawn


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m services.pivots.plot", description=__doc__.splitlines()[0])
    ap.add_argument("--csv", required=True, type=Path, help="candle CSV named SYMBOL-TF-FIRST_LAST.csv")
    ap.add_argument("--levels", type=int, default=3, help="draw levels 1..N (default 3)")
    ap.add_argument("--out", required=True, type=Path, help="PNG to write")
    ap.add_argument("--last", type=int, default=None, help="show only the last N candles")
    ap.add_argument(
        "--strengths",
        type=_parse_strengths,
        default=DEFAULT_STRENGTHS,
        help="neighbours per side for each level, comma-separated (default 2,2,2,2,2)",
    )
    args = ap.parse_args(argv)
    if args.levels < 1 or args.levels > len(args.strengths):
        ap.error(f"--levels must be 1..{len(args.strengths)}")
    if args.last is not None and args.last < 1:
        ap.error("--last must be >= 1")
    candles = load_candles(args.csv)
    if not candles:
        ap.error(f"{args.csv} has no candles")
    pivots = detect_pivots(candles, args.strengths)
    sym, tf = candles[0]["symbol"], candles[0]["timeframe"]
    strengths = ",".join(str(s) for s in args.strengths[: args.levels])
    title = f"{sym} {tf}: Williams pivots L1..L{args.levels} (strengths {strengths}), {args.csv.name}"
    drawn = render(candles, pivots, args.out, args.levels, args.last, title)
    summary = ", ".join(f"L{lvl}={n}" for lvl, n in sorted(drawn.items()))
    shown = len(candles[-args.last :] if args.last else candles)
    print(f"wrote {args.out}: {shown} candles, pivots {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
