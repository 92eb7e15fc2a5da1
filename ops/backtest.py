"""``make backtest``: an offline walk-forward of a training adapter over candle files, no stack.

Per symbol, the earlier file trains and the later file is scored (``--pair TRAIN:TEST``; default:
the bundled BTCUSDT and ETHUSDT 1m files of 2025-09-22 and 2025-10-29). The same adapter as the
services (``--adapter`` / MODEL_ADAPTER), the same job semantics as the coordinator (its oracle,
``services.coordinator.oracle.batch_join``, over refs at every bar and the pivots of
``detect_pivots``), and the same label rule (``reftrain.labels``).

Time order, strictly: bars are visited in blocks of ``--block``. Before predicting the refs of a
block starting at bar t0, the adapter trains on every job RESOLVED at or before t0 (a CANDLE job
when its target candle has closed, a PIVOT job when its pivot is confirmed), in resolution order,
in steps of ``--batch`` of one trigger. The class-prior and pivot base-rate baselines are the label
frequencies of those same jobs. So no target, calibration or baseline step sees data at or after
the prediction it scores (tests/unit/ops/test_backtest.py perturbs the future and checks it).

Writes ``<out>/backtest.json`` and ``<out>/backtest.md``: label mix per trigger, predicted mix,
accuracy / log loss / Brier vs the class prior, always-HOLD and previous-move, reliability + ECE,
directional hit rate (95% Wilson interval), predicted close MAE vs no-change, PnL after fees vs
buy-and-hold and flat, the pivot head vs its base rate; overall, per series and per volatility tercile.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ops import scoring
from reftrain import labels
from reftrain.adapters import CandleExample, PivotExample, TrainingAdapter, load_adapter
from reftrain.records import Candle, InferenceRef, inference_id, series_key, timeframe_ms
from reftrain.window import Window
from services.coordinator.join_config import JoinConfig
from services.coordinator.oracle import batch_join
from services.pivots.detector import detect_pivots

DATA = Path(__file__).resolve().parents[1] / "data"
DEFAULT_PAIRS = (
    "BTCUSDT-1m-2025-09-22_2025-09-25.csv:BTCUSDT-1m-2025-10-29_2025-11-01.csv",
    "ETHUSDT-1m-2025-09-22_2025-09-25.csv:ETHUSDT-1m-2025-10-29_2025-11-01.csv",
)
PIVOT_HEADS = ("pivot_future_low", "pivot_future_high", "pivot_past")


def load_csv(path: str | Path) -> list[Candle]:
    """Candles of a data/ file (``SYMBOL-TF-...csv`` with open_time_ms, open, high, low, close, volume)."""
    p = Path(path)
    if not p.exists():
        p = DATA / p.name
    symbol, tf = p.name.split("-")[0], p.name.split("-")[1]
    bar = timeframe_ms(tf)
    out: list[Candle] = []
    with open(p) as fh:
        for row in csv.DictReader(fh):
            t = int(row["open_time_ms"])
            out.append({"symbol": symbol, "timeframe": tf, "open_time": t, "close_time": t + bar - 1,
                        "open": float(row["open"]), "high": float(row["high"]), "low": float(row["low"]),
                        "close": float(row["close"]), "volume": float(row["volume"]),
                        "trades": int(row["trades"]) if row.get("trades") else None, "source": p.name})
    return out


@dataclass
class Job:
    """A job of the oracle, reduced to what the walk-forward needs."""

    avail: int  # bar index at whose close the outcome is known
    t: int  # bar index of the ref's window end
    trigger: str
    label: int
    job_id: str
    payload: dict[str, Any]  # the actual candle or the pivot


@dataclass
class Scored:
    """Everything scored about one series' test segment (rows in time order)."""

    series: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    pivots: list[dict[str, Any]] = field(default_factory=list)
    jobs: dict[str, dict[str, int]] = field(default_factory=dict)


def segment_jobs(candles: Sequence[Candle], window: int, norm: Callable[[Window], Any],
                 config: JoinConfig) -> tuple[list[Job], list[int], Window]:
    """The oracle's jobs for refs at every bar from ``window - 1`` on, with their labels."""
    w_all = _window(candles, 0, len(candles))
    key = series_key(candles[0]["symbol"], candles[0]["timeframe"])
    index = {c["open_time"]: i for i, c in enumerate(candles)}
    bar = timeframe_ms(candles[0]["timeframe"])
    ts = list(range(window - 1, len(candles)))
    refs: list[InferenceRef] = []
    for t in ts:
        end = candles[t]["open_time"]
        refs.append({"inference_id": inference_id(key, end, key, 0), "model_key": key, "model_version": 0,
                     "symbol": candles[0]["symbol"], "timeframe": candles[0]["timeframe"],
                     "data_range_start": candles[t - window + 1]["open_time"], "data_range_end": end,
                     "window_size": window, "window_checksum": "", "norm_params": {"scheme": "", "params": {}},
                     "predicted_action": "HOLD", "action_probs": {"buy": 0.0, "sell": 0.0, "hold": 1.0},
                     "predicted_candle": None, "confidence": 1.0, "target_timestamp": end + bar, "created_at": 0})
    closes = w_all.values[:, 3]
    jobs: list[Job] = []
    for j in batch_join(refs, candles, detect_pivots(list(candles)), config):
        t = index[j["ref"]["data_range_end"]]
        if j["trigger"] == "CANDLE":
            c = j["actual_candle"]
            assert c is not None
            vol = labels.window_vol(closes[t - window + 1:t + 1])
            lab = labels.ACTION_INDEX[labels.action_label(float(closes[t]), float(c["close"]), vol)]
            jobs.append(Job(index[c["open_time"]], t, "CANDLE", lab, j["job_id"], dict(c)))
        else:
            p = j["pivot"]
            assert p is not None
            plab = labels.pivot_label(j["ref"]["data_range_end"], p)
            if plab is None or p["confirmed_at"] not in index:
                continue
            jobs.append(Job(index[p["confirmed_at"]], t, "PIVOT", labels.PIVOT_INDEX[plab], j["job_id"], dict(p)))
    jobs.sort(key=lambda j: (j.avail, j.trigger, j.t, j.job_id))
    return jobs, ts, w_all


def _window(candles: Sequence[Candle], a: int, b: int) -> Window:
    c0 = candles[0]
    return Window(c0["symbol"], c0["timeframe"], np.array([c["open_time"] for c in candles[a:b]], dtype=np.int64),
                  np.array([[c["open"], c["high"], c["low"], c["close"], c["volume"]] for c in candles[a:b]],
                           dtype=np.float64))


class WalkForward:
    """One adapter lineage walking through segments (files) of one series in time order."""

    def __init__(self, adapter_cls: type[TrainingAdapter], window: int = 600, batch: int = 32, block: int = 32,
                 config: JoinConfig | None = None, seed: int = 0) -> None:
        self.adapter = adapter_cls.create(seed, "cpu")
        self.window, self.batch, self.block = window, batch, block
        self.config = config or JoinConfig()
        self.action_counts = np.ones(3)  # Laplace: the prior of an empty history is uniform
        self.pivot_counts = np.ones(3)
        self.trained = {"CANDLE": 0, "PIVOT": 0}

    def run(self, candles: Sequence[Candle], score: bool, tick: Callable[[int], None] = lambda n: None) -> Scored:
        series = series_key(candles[0]["symbol"], candles[0]["timeframe"])
        jobs, ts, w_all = segment_jobs(candles, self.window, self.adapter.norm_params, self.config)
        out = Scored(series)
        out.jobs = {"CANDLE": {}, "PIVOT": {}}
        for j in jobs:
            names = labels.ACTIONS if j.trigger == "CANDLE" else labels.PIVOT_CLASSES
            mix = out.jobs[j.trigger]
            mix[names[j.label]] = mix.get(names[j.label], 0) + 1
        feats: dict[int, tuple[Any, npt.NDArray[np.float32]]] = {}

        def features(t: int) -> tuple[Any, npt.NDArray[np.float32]]:
            if t not in feats:
                a = t - self.window + 1
                win = Window(w_all.symbol, w_all.timeframe, w_all.open_time[a:t + 1], w_all.values[a:t + 1])
                params = self.adapter.norm_params(win)
                feats[t] = (params, self.adapter.features(win, params))
            return feats[t]

        by_t: dict[int, list[Job]] = {}
        for j in jobs:
            if j.trigger == "PIVOT":
                by_t.setdefault(j.t, []).append(j)
        candle_job = {j.t: j for j in jobs if j.trigger == "CANDLE"}
        suffix_min = np.minimum.accumulate(np.array([j.t for j in jobs] or [0])[::-1])[::-1]
        closes = w_all.values[:, 3]
        k = 0
        for b in range(0, len(ts), self.block):
            block = ts[b:b + self.block]
            t0 = block[0]
            todo: list[Job] = []
            while k < len(jobs) and jobs[k].avail <= t0:
                todo.append(jobs[k])
                k += 1
            self._train(todo, features)
            if score:
                prior = self.action_counts / self.action_counts.sum()
                base = self.pivot_counts / self.pivot_counts.sum()
                xs = [features(t) for t in block]
                preds = self.adapter.predict(np.stack([x for _, x in xs]), [p for p, _ in xs])
                for t, pred in zip(block, preds, strict=True):
                    probs = np.array([pred.probs["buy"], pred.probs["sell"], pred.probs["hold"]])
                    cj = candle_job.get(t)
                    if cj is not None:
                        vol = labels.window_vol(closes[t - self.window + 1:t + 1])
                        prev = labels.ACTION_INDEX[labels.previous_move(float(closes[t - 1]), float(closes[t]), vol)]
                        log_ret = math.log(float(cj.payload["close"]) / float(closes[t]))
                        pc = None if pred.candle is None else math.log(pred.candle["close"] / float(closes[t])) * 1e4
                        out.rows.append({"t": t, "time": int(w_all.open_time[t]), "probs": probs.tolist(),
                                         "prior": prior.tolist(), "y": cj.label, "prev": prev, "log_ret": log_ret,
                                         "pred_close_bp": pc, "vol": vol})
                    if all(h in pred.heads for h in PIVOT_HEADS):
                        hp = [float(pred.heads[h]) for h in PIVOT_HEADS]
                        for pj in by_t.get(t, []):
                            out.pivots.append({"t": t, "probs": hp, "base": base.tolist(), "y": pj.label})
            keep = min(t0, int(suffix_min[k])) if k < len(jobs) else t0
            for t in [t for t in feats if t < keep]:  # no pending job needs these windows any more
                del feats[t]
            tick(len(block))
        self._train(jobs[k:], features)  # the rest: the lineage continues into the next segment
        return out

    def _train(self, todo: list[Job], features: Callable[[int], tuple[Any, npt.NDArray[np.float32]]]) -> None:
        i = 0
        while i < len(todo):
            trig = todo[i].trigger
            chunk = [todo[i]]
            i += 1
            while i < len(todo) and todo[i].trigger == trig and len(chunk) < self.batch:
                chunk.append(todo[i])
                i += 1
            if trig == "CANDLE":
                ex_c = [CandleExample(j.job_id, features(j.t)[1], features(j.t)[0], j.payload, j.label) for j in chunk]
                self.adapter.train_candle(ex_c)
                for j in chunk:
                    self.action_counts[j.label] += 1
            else:
                ex_p = [PivotExample(j.job_id, features(j.t)[1], features(j.t)[0], j.payload, j.label) for j in chunk]
                self.adapter.train_pivot(ex_p)
                for j in chunk:
                    self.pivot_counts[j.label] += 1
            self.trained[trig] += len(chunk)


def summarise(scored: Sequence[Scored], fee_bp: float) -> dict[str, Any]:
    """The report sections: overall, per series, per volatility tercile (cut on all scored rows)."""
    rows = [dict(r, series=s.series) for s in scored for r in s.rows]
    pivots = [p for s in scored for p in s.pivots]
    cuts = scoring.terciles([r["vol"] for r in rows]) if rows else (0.0, 0.0)

    def block(sel: list[dict[str, Any]]) -> dict[str, Any]:
        sel = sorted(sel, key=lambda r: (r["series"], r["t"]))
        pc = [r["pred_close_bp"] for r in sel]
        return scoring.action_block(
            np.array([r["probs"] for r in sel]).reshape(-1, 3), np.array([r["y"] for r in sel], dtype=np.int64),
            np.array([r["prior"] for r in sel]).reshape(-1, 3), np.array([r["prev"] for r in sel], dtype=np.int64),
            np.array([r["log_ret"] for r in sel]),
            None if any(v is None for v in pc) else np.array(pc, dtype=np.float64), fee_bp)

    def pblock(sel: list[dict[str, Any]]) -> dict[str, Any]:
        return scoring.pivot_block(np.array([p["probs"] for p in sel]).reshape(-1, 3),
                                   np.array([p["y"] for p in sel], dtype=np.int64),
                                   np.array([p["base"] for p in sel]).reshape(-1, 3))

    names = ("low", "mid", "high")
    tercile = [names[0 if r["vol"] <= cuts[0] else 1 if r["vol"] <= cuts[1] else 2] for r in rows]
    return {
        "overall": block(rows), "pivot_head": pblock(pivots) if pivots else None,
        "per_series": {s.series: {"action": block([r for r in rows if r["series"] == s.series]),
                                  "pivot_head": pblock(s.pivots) if s.pivots else None,
                                  "job_label_mix": s.jobs} for s in scored},
        "per_vol_tercile": {n: block([r for r, tt in zip(rows, tercile, strict=True) if tt == n]) for n in names},
        "vol_tercile_cuts": list(cuts),
    }


def _f(v: Any, nd: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def markdown_sections(summary: dict[str, Any], title: str) -> str:
    """The markdown tables of a summary (also used by the make-run report's model section)."""
    lines = [f"## {title}", ""]

    def action_table(groups: dict[str, dict[str, Any]]) -> None:
        lines.append("| group | n | acc model | acc prior | acc always-HOLD | acc prev-move | log loss model | "
                     "log loss prior | Brier model | Brier prior | ECE | hit rate (n, 95% CI) | close MAE bp "
                     "model / no-change | PnL net bp (turnover) | buy&hold bp | predicted B/S/H |")
        lines.append("|" + "---|" * 16)
        for name, b in groups.items():
            a, ll, br, d, p = b["accuracy"], b["log_loss"], b["brier"], b["directional"], b["pnl"]
            mae = b.get("candle_close_mae_bp") or {}
            pm = b["predicted_mix"]
            lines.append(
                f"| {name} | {b['n']} | {_f(a['model'])} | {_f(a['class_prior'])} | {_f(a['always_hold'])} | "
                f"{_f(a['previous_move'])} | {_f(ll['model'], 4)} | {_f(ll['class_prior'], 4)} | "
                f"{_f(br['model'], 4)} | {_f(br['class_prior'], 4)} | {_f(b['reliability']['ece'])} | "
                f"{_f(d['hit_rate'])} ({d['n']}, {_f(d['ci95'][0])}-{_f(d['ci95'][1])}) | "
                f"{_f(mae.get('model'), 2)} / {_f(mae.get('no_change'), 2)} | "
                f"{_f(p['model']['net_bp'], 0)} ({_f(p['model']['turnover'], 0)}) | "
                f"{_f(p['buy_and_hold']['net_bp'], 0)} | "
                f"{_f(pm['BUY'], 2)}/{_f(pm['SELL'], 2)}/{_f(pm['HOLD'], 2)} |")
        lines.append("")

    groups = {"all": summary["overall"]}
    groups.update({s: v["action"] for s, v in summary["per_series"].items()})
    groups.update({f"vol {k}": v for k, v in summary["per_vol_tercile"].items()})
    action_table(groups)
    lines += ["Pivot head (FUTURE_LOW / FUTURE_HIGH / PAST on PIVOT jobs) vs its base rate:", "",
              "| group | n | log loss model | log loss base rate | acc model | acc base rate | label mix L/H/P |",
              "|---|---|---|---|---|---|---|"]
    pgroups = {"all": summary["pivot_head"]}
    pgroups.update({s: v["pivot_head"] for s, v in summary["per_series"].items()})
    for name, p in pgroups.items():
        if p is None:
            lines.append(f"| {name} | 0 | - | - | - | - | - |")
            continue
        mix = p["label_mix"]
        lines.append(f"| {name} | {p['n']} | {_f(p['log_loss']['model'], 4)} | {_f(p['log_loss']['base_rate'], 4)} | "
                     f"{_f(p['accuracy']['model'])} | {_f(p['accuracy']['base_rate'])} | "
                     f"{_f(mix['FUTURE_LOW'], 2)}/{_f(mix['FUTURE_HIGH'], 2)}/{_f(mix['PAST'], 2)} |")
    lines += ["", "Job label mix per trigger (scored files):", ""]
    for s, v in summary["per_series"].items():
        lines.append(f"- {s}: CANDLE {v['job_label_mix']['CANDLE']}, PIVOT {v['job_label_mix']['PIVOT']}")
    rel = summary["overall"]["reliability"]
    lines += ["", f"Reliability of `confidence` (all, ECE {_f(rel['ece'])}):", "",
              "| bin | n | mean confidence | accuracy |", "|---|---|---|---|"]
    for r in rel["table"]:
        lines.append(f"| {r['bin']} | {r['n']} | {_f(r['mean_confidence'])} | {_f(r['accuracy'])} |")
    return "\n".join(lines) + "\n"


def backtest(adapter_spec: str | None, pairs: Sequence[str], *, window: int = 600, batch: int = 32, block: int = 32,
             fee_bp: float = 7.5, limit: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the walk-forward of every ``TRAIN:TEST`` pair; returns the JSON-ready result."""
    adapter_cls = load_adapter(adapter_spec)
    loaded = []
    for pair in pairs:
        train_f, _, test_f = pair.partition(":")
        train, test = load_csv(train_f), load_csv(test_f)
        if limit:
            train, test = train[:limit], test[:limit]
        loaded.append((train_f, test_f, train, test))
    total = sum(max(0, len(tr) - window + 1) + max(0, len(te) - window + 1) for _, _, tr, te in loaded)
    started = time.time()
    scored = []
    trained: dict[str, dict[str, int]] = {}
    bar = _progress(total, progress, adapter_cls.kind())
    try:
        for _train_f, _test_f, train, test in loaded:
            wf = WalkForward(adapter_cls, window, batch, block)
            wf.run(train, score=False, tick=bar)
            scored.append(wf.run(test, score=True, tick=bar))
            trained[scored[-1].series] = dict(wf.trained)
    finally:
        bar(-1)
    summary = summarise(scored, fee_bp)
    return {"adapter": adapter_cls.kind(), "pairs": list(pairs), "window": window, "batch": batch, "block": block,
            "fee_bp_per_side": fee_bp, "trained_jobs": trained, "seconds": round(time.time() - started, 1),
            "summary": summary}


def _progress(total: int, enabled: bool, desc: str) -> Callable[[int], None]:
    if not enabled:
        return lambda n: None
    from tqdm import tqdm

    bar = tqdm(total=total, desc=f"backtest {desc}", unit="bar", mininterval=2.0)

    def tick(n: int) -> None:
        if n < 0:
            bar.close()
        else:
            bar.update(n)
    return tick


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--adapter", default=None, help="package.module:Class (default: $MODEL_ADAPTER or built-in)")
    ap.add_argument("--pair", action="append", default=None, metavar="TRAIN.csv:TEST.csv",
                    help="files of one symbol, the earlier one to train, the later to score (repeatable; "
                         "default: the bundled BTCUSDT and ETHUSDT 1m files)")
    ap.add_argument("--window", type=int, default=600)
    ap.add_argument("--batch", type=int, default=32, help="jobs per training step (one trigger per step)")
    ap.add_argument("--block", type=int, default=32, help="bars predicted between two training rounds")
    ap.add_argument("--fee-bp", type=float, default=7.5, help="fee in bp per side for the PnL")
    ap.add_argument("--limit", type=int, default=None, help="first N candles of each file (quick runs)")
    ap.add_argument("--out", default="reports/backtest", help="output folder (backtest.json, backtest.md)")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    pairs = a.pair or list(DEFAULT_PAIRS)
    result = backtest(a.adapter, pairs, window=a.window, batch=a.batch, block=a.block, fee_bp=a.fee_bp,
                      limit=a.limit, progress=not a.no_progress)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "backtest.json").write_text(json.dumps(result, indent=1, sort_keys=True))
    md = (f"# Backtest: {result['adapter']}\n\nPairs (train:test): {', '.join(pairs)}; window {a.window}, "
          f"batch {a.batch}, block {a.block}, fee {a.fee_bp} bp/side; trained jobs {result['trained_jobs']}; "
          f"{result['seconds']} s.\n\n" + markdown_sections(result["summary"], "Walk-forward on the test files"))
    from ops import plots  # matplotlib only when a report is written

    drawn = plots.reliability(result["summary"]["overall"]["reliability"], out / "reliability.png",
                              title=f"{result['adapter']}: reliability of confidence")
    if drawn is not None:
        md += f"\n![reliability of confidence]({drawn.name})\n"
    (out / "backtest.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
