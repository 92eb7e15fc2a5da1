"""PNG plots of a report: price with pivots, loss over training, accuracy over model versions.

matplotlib with the Agg backend (no display needed, CI-safe). Each function returns the path it
wrote, or None when there is nothing to draw (a stage did not run), so the report can say so.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from ops.analysis import Analysis, _series_sort

_LEVEL_SIZE = {1: 10.0, 2: 30.0, 3: 70.0, 4: 120.0, 5: 180.0}
_HIGH = {1: "#e6a0a0", 2: "#d04040", 3: "#a00000", 4: "#ff8c00", 5: "#8b008b"}
_LOW = {1: "#a0d0a0", 2: "#30a030", 3: "#006000", 4: "#1e90ff", 5: "#00008b"}


def _fmt_ms(value: float, _pos: int | None = None) -> str:
    return datetime.fromtimestamp(value / 1000, tz=UTC).strftime("%m-%d %H:%M")


def price_with_pivots(a: Analysis, out: Path, max_series: int = 4) -> Path | None:
    """Close price of the base series (finest timeframe per symbol) with their pivots by level."""
    closes: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for (s, t), m in a.candles.items():
        closes[s].append((t, float((m.value or {})["close"])))
    if not closes:
        return None
    finest: dict[str, str] = {}
    for s in sorted(closes, key=_series_sort):
        sym = s.split(":")[0]
        finest.setdefault(sym, s)
    shown = list(finest.values())[:max_series]
    fig, axes = plt.subplots(len(shown), 1, figsize=(14, 3.6 * len(shown)), dpi=100, squeeze=False)
    for ax, s in zip(axes[:, 0], shown, strict=True):
        pts = sorted(closes[s])
        ax.plot([t for t, _ in pts], [c for _, c in pts], color="#303030", linewidth=0.7, label="close")
        piv = [m.value or {} for (ps, _), m in a.pivots.items() if ps == s]
        for level in sorted({p["level"] for p in piv}):
            for kind, marker, colours in (("HIGH", "v", _HIGH), ("LOW", "^", _LOW)):
                sel = [p for p in piv if p["level"] == level and p["kind"] == kind]
                if sel:
                    ax.scatter([p["pivot_time"] for p in sel], [p["price"] for p in sel], marker=marker,
                               s=_LEVEL_SIZE.get(level, 200.0), color=colours.get(level, "#000000"),
                               edgecolors="black" if level > 1 else "none", linewidths=0.4, zorder=2 + level,
                               label=f"L{level} {kind} ({len(sel)})")
        refs = [m.value or {} for (rs, _), m in a.refs.items() if rs == s]
        if refs:
            first = min(r["data_range_end"] for r in refs)
            ax.axvline(first, color="#4060c0", linewidth=0.8, linestyle="--", label="first prediction")
        ax.set_title(f"{s}: close with confirmed pivots")
        ax.xaxis.set_major_formatter(FuncFormatter(_fmt_ms))
        ax.grid(alpha=0.25)
        ax.legend(loc="best", fontsize=7, ncols=3)
    axes[-1, 0].set_xlabel("open time (UTC)")
    return _save(fig, out)


def loss_curve(training: dict[str, Any], out: Path) -> Path | None:
    """Every ``*loss*`` metric of the model versions against the jobs trained so far."""
    series = training.get("loss", {})
    keys = sorted({k for pts in series.values() for p in pts for k in p if "loss" in k})
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    for model_key, pts in sorted(series.items()):
        for k in keys:
            xs = [p["trained_jobs"] for p in pts if k in p]
            ys = [p[k] for p in pts if k in p]
            if xs:
                ax.plot(xs, ys, marker=".", linewidth=1.0, label=f"{model_key} {k}")
    ax.set_xlabel("trained jobs (model version's trained_jobs)")
    ax.set_ylabel("loss")
    ax.set_title("training loss over model versions")
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8)
    return _save(fig, out)


def accuracy_by_version(training: dict[str, Any], out: Path) -> Path | None:
    """Out-of-sample action accuracy per model version, with both baselines on the same refs."""
    acc = training.get("accuracy", {})
    by_version = acc.get("by_version", {})
    if not by_version:
        return None
    versions = sorted(by_version, key=int)
    xs = list(range(len(versions)))
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    for name, colour, marker in (("model", "#2050c0", "o"), ("always_hold", "#909090", "s"),
                                 ("previous_move", "#d08020", "^")):
        ys = [by_version[v][name] for v in versions]
        ax.plot(xs, [y if y is not None else float("nan") for y in ys], marker=marker, color=colour,
                linewidth=1.0, label=name.replace("_", "-"))
    ax.set_xticks(xs, [f"v{v}\n(n={by_version[v]['n']})" for v in versions], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_xlabel("model version that made the prediction")
    ax.set_ylabel("accuracy (BUY/SELL/HOLD vs realised move)")
    ax.set_title("out-of-sample accuracy by model version vs baselines")
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8)
    return _save(fig, out)


def reliability(rel: dict[str, Any] | None, out: Path, title: str = "reliability of confidence") -> Path | None:
    """Reliability diagram of ``ops.scoring.reliability``: accuracy against mean confidence per bin
    (the diagonal is perfect calibration), bar width by bin count."""
    rows = (rel or {}).get("table") or []
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=100)
    n_max = max(r["n"] for r in rows)
    ax.plot([0, 1], [0, 1], color="#909090", linewidth=1.0, linestyle="--", label="perfectly calibrated")
    ax.scatter([r["mean_confidence"] for r in rows], [r["accuracy"] for r in rows],
               s=[20 + 200 * r["n"] / n_max for r in rows], color="#2050c0", label="bins (area ~ n)")
    ax.plot([r["mean_confidence"] for r in rows], [r["accuracy"] for r in rows], color="#2050c0", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean confidence of the bin")
    ax.set_ylabel("accuracy of the bin")
    ece = rel.get("ece") if rel else None
    ax.set_title(f"{title}\nECE {ece:.3f}, n={rel.get('n') if rel else 0}" if ece is not None else title, fontsize=9)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, out)


def _save(fig: Figure, out: Path) -> Path:
    """Lay out, write and close a figure (closed: a long report makes many)."""
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
