"""The loop's report: per-stage counts, join coverage, exactly-once check, training, latency, plots.

    python -m ops.report                         # the long-running stack (`make up`), default prefix
    python -m ops.report --prefix run-20251130-101500-
    python -m ops.report --run reports/run-20251130-101500   # rebuild a finished `make run` report

Reads everything from the outside, as an operator would: the topics (read_committed, decoded with
the registry), the DLQ topics, and each service's /metrics (live URLs, or the final scrape a run
saved). Writes ``report.md``, ``report.html``, ``report.json`` and PNG plots into the output folder
and prints the tables. Exit status 0 when every check passes or did not run, 1 when one failed.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from ops import plots
from ops.analysis import FAIL, NOT_RUN, PASS, Analysis, Check, Inputs
from ops.kafkaview import KafkaView, read_topic
from ops.promtext import Scrape, merge, parse, scrape
from ops.stages import REPO, STACK, STAGES, TOPIC_ORDER, parse_stack_env
from reftrain import settings as settings_mod
from reftrain.redact import redact_text, redact_value
from reftrain.settings import PlatformSettings
from reftrain.streams import Serdes
from reftrain.topics import TopicCatalogue
from services.coordinator.join_config import JoinConfig

#: The check of ``ops.run --kill``: every planned kill -9 happened mid-run.
KILL_CHECK = "kill -9 mid-run (--kill): every planned kill happened, services restarted"


@dataclass
class StageStatus:
    """How a stage took part: ``ran`` False means "not run" (no package yet, or disabled)."""

    name: str
    ran: bool
    instances: list[dict[str, Any]] = field(default_factory=list)  # instance, pid, port, ended
    note: str = ""


@dataclass
class Report:
    """The whole report as data (``report.json``); the renderers below only format it."""

    title: str
    meta: dict[str, Any]
    stages: list[StageStatus]
    sections: dict[str, Any]
    checks: list[Check]
    notes: list[str]
    plots: dict[str, str | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "ok": self.ok, "meta": self.meta, "stages": [asdict(s) for s in self.stages],
                "checks": [asdict(c) for c in self.checks], "notes": self.notes, "plots": self.plots,
                "sections": _jsonable(self.sections)}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


# -- collecting ---------------------------------------------------------------------------------
def collect(platform: PlatformSettings, *, metrics: Mapping[str, Scrape] | None = None,
            stages_run: Mapping[str, bool] | None = None, join_config: JoinConfig | None = None,
            strengths: Sequence[int] | None = None, read_store: bool = True, timeout: float = 180.0) -> Inputs:
    """Read the five topics and their DLQs of ``platform.topic_prefix``; attach metrics and config.

    ``stages_run`` defaults to "a stage ran if its output topic holds messages" (long-running stack).
    """
    cat = TopicCatalogue(platform)
    serdes = Serdes(platform, cat)
    messages, dlq, incomplete = {}, {}, []
    for logical in TOPIC_ORDER:
        read = read_topic(platform, cat.name(logical), logical, serdes=serdes, timeout=timeout)
        messages[logical] = read.messages
        if not read.complete:
            incomplete.append(read.topic)
        d = read_topic(platform, cat.dlq(logical), None, timeout=timeout)
        dlq[logical] = d.messages
    if stages_run is None:
        stages_run = {s.name: any(messages.get(t) for t in s.outputs) for s in STAGES}
    inp = Inputs(messages=messages, dlq=dlq, metrics=dict(metrics or {}), stages_run=dict(stages_run),
                 join_config=join_config or JoinConfig(), strengths=tuple(strengths or (2, 2, 2, 2, 2)),
                 incomplete_reads=incomplete)
    if read_store and stages_run.get("trainer"):
        inp.model_versions_table = _store_model_versions(platform)
    return inp


def _store_model_versions(platform: PlatformSettings) -> list[dict[str, Any]] | None:
    """Rows of the store's model_versions table (None if the store cannot be opened)."""
    try:
        from reftrain.store import LAKE, Store

        store = Store.from_settings(platform, create=False)
        try:
            rows = store.query(f"SELECT model_key, version, trained_jobs, created_at FROM {LAKE}.model_versions "
                               "ORDER BY model_key, version")
        finally:
            store.close()
        return [{"model_key": r[0], "version": int(r[1]), "trained_jobs": int(r[2]), "created_at": int(r[3])}
                for r in rows]
    except Exception:
        return None


# -- metrics over process incarnations ------------------------------------------------------------
def restored_counters() -> frozenset[str]:
    """Counter samples a service restores with its state (so a restarted process already counts
    what its predecessors did): the coordinator's committed counts (services/coordinator/metrics.py)."""
    from services.coordinator.metrics import FAMILIES

    return frozenset(f"{name}_total" for name, _help, _labels in FAMILIES)


def _counter_samples(s: Scrape) -> set[str]:
    """Sample names of ``s`` that belong to counters and histograms (cumulative per process)."""
    out: set[str] = set()
    if not s.text:
        return {n for n in s.samples if n.endswith(("_total", "_bucket", "_count", "_sum"))}
    for family in text_string_to_metric_families(s.text):
        if family.type in ("counter", "histogram", "summary"):
            out.update(x.name for x in family.samples if not x.name.endswith("_created"))
    return out


def merge_incarnations(scrapes: Sequence[Scrape], restored: frozenset[str] | None = None) -> Scrape:
    """One instance's final /metrics over its process incarnations (oldest first; docs/semantics.md,
    "Counters across restarts"): a counter that the service restores with its state is the last
    incarnation's; every other counter (and histogram) is summed over the incarnations (each one's
    final scrape: work done, redone work included); a gauge is the last incarnation's."""
    if not scrapes:
        return Scrape("", ok=False)
    restored = restored_counters() if restored is None else restored
    last = scrapes[-1]
    out = Scrape(",".join(s.url for s in scrapes), {k: list(v) for k, v in last.samples.items()}, last.ok,
                 last.error, last.text)
    for earlier in scrapes[:-1]:
        for name in sorted(_counter_samples(earlier) - restored):
            out.samples.setdefault(name, []).extend(earlier.samples.get(name, []))
    return out


def build(inp: Inputs, *, title: str, meta: Mapping[str, Any], stages: Sequence[StageStatus],
          out_dir: Path | None = None, with_plots: bool = True,
          kills: Sequence[Mapping[str, Any]] | None = None) -> Report:
    """Analyse ``inp`` into a Report; with ``out_dir``, also write the plots there. ``kills``: the
    kill -9s ``ops.run --kill`` planned (each with ``done``), checked and tabled."""
    a = Analysis(inp)
    sections = a.sections()
    checks = list(a.checks)
    if kills:
        sections["kills"] = [dict(k) for k in kills]
        missed = [f"{k['service']}: {k.get('detail') or 'not done'}" for k in kills if not k.get("done")]
        checks.append(Check(KILL_CHECK, PASS if not missed else FAIL,
                            "; ".join(missed) if missed else ", ".join(
                                f"{k['instance']} at {k['at_s']:.0f} s" for k in kills)))
    if inp.model_versions_table is not None:
        topic = {(m.value or {})["model_key"] + f" v{(m.value or {})['version']}"
                 for m in inp.messages.get("model-versions", [])}
        store = {r["model_key"] + f" v{r['version']}" for r in inp.model_versions_table}
        name = "store model_versions == model-versions topic"
        if not store and topic:  # another catalog than the one the trainers wrote (e.g. --prefix)
            checks.append(Check(name, NOT_RUN, "the store's model_versions table is empty: not this run's catalog?"))
        else:
            diff = sorted(store ^ topic)
            checks.append(Check(name, PASS if not diff else FAIL, f"store {len(store)}, topic {len(topic)}"
                                + (f"; differ: {', '.join(diff[:10])}" if diff else "")))
    report = Report(title, dict(meta), list(stages), sections, checks, a.notes)
    for st in stages:
        if not st.ran:
            report.notes.append(f"stage {st.name}: not run ({st.note or 'absent'})")
        for i in st.instances:
            if i.get("restarts"):
                report.notes.append(f"{i['instance']} crashed and was restarted {i['restarts']}x ({i['ended']}); "
                                    "the checks above hold across the restarts")
    if out_dir is not None and with_plots:
        img = out_dir / "img"
        made = {
            "price_pivots": plots.price_with_pivots(a, img / "price_pivots.png"),
            "loss": plots.loss_curve(sections["training"], img / "loss.png"),
            "accuracy": plots.accuracy_by_version(sections["training"], img / "accuracy.png"),
            "reliability": plots.reliability(
                ((sections["training"].get("accuracy") or {}).get("scores") or {}).get("all", {}).get("reliability"),
                img / "reliability.png"),
        }
        report.plots = {k: (str(v.relative_to(out_dir)) if v else None) for k, v in made.items()}
    return report


# -- rendering ----------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def tables(report: Report) -> list[tuple[str, list[str], list[list[str]]]]:
    """The report as (title, header, rows) tables: one source for terminal, Markdown and HTML."""
    s = report.sections
    out: list[tuple[str, list[str], list[list[str]]]] = []
    out.append(("Checks", ["check", "result", "detail"], [[c.name, c.status, c.detail] for c in report.checks]))
    out.append(("Stages", ["stage", "ran", "instances", "how it ended"],
                [[st.name, "yes" if st.ran else "not run",
                  ", ".join(f"{i['instance']} (pid {i.get('pid')}, :{i.get('port')})" for i in st.instances) or "-",
                  "; ".join(f"{i['instance']}: {i.get('ended', '?')}" for i in st.instances) or st.note]
                 for st in report.stages]))
    if s.get("kills"):
        out.append(("Kills (ops.run --kill)", ["service", "instance", "at s", "phase", "pid", "done", "detail"],
                    [[k["service"], k["instance"], f"{k['at_s']:.1f}", k.get("phase", ""), str(k.get("pid") or "-"),
                      "yes" if k.get("done") else "NO", k.get("detail", "")] for k in s["kills"]]))
    c = s.get("counts", {})
    if c:
        out.append(("Per-stage counts", ["topic", "messages", "distinct", "DLQ entries"],
                    [[t, _fmt(c["messages"].get(t)), _fmt(c["distinct"].get(t)), _fmt(c["dlq"].get(t, 0))]
                     for t in c["messages"]]))
        cols = ["candles", "pivots", "refs", "jobs CANDLE", "jobs PIVOT", "model versions"]
        out.append(("Per series", ["series", *cols],
                    [[ser, *[_fmt(row.get(k, 0)) for k in cols]] for ser, row in c["per_series"].items()]))
        out.append(("Pivots by level", ["level/kind", "pivots"], [[k, _fmt(v)] for k, v in
                                                                  c["pivots_by_level"].items()]))
        out.append(("Jobs by trigger", ["trigger", "jobs"], [[k, _fmt(v)] for k, v in c["jobs_by_trigger"].items()]))
        if c.get("dlq_reasons"):
            out.append(("DLQ reasons", ["topic", "reasons"],
                        [[t, ", ".join(f"{r}: {n}" for r, n in rs.items())] for t, rs in c["dlq_reasons"].items()]))
    cov = s.get("coverage", {})
    if cov:
        rows = [[k, _fmt(v)] for k, v in cov["buckets"].items()]
        rows.append(["= sum (refs in topic: " + _fmt(cov["refs"]) + ")", _fmt(cov["sum"])])
        out.append(("Join coverage (every ref accounted for, recomputed from the topics)", ["bucket", "refs"], rows))
        if cov.get("coordinator_metrics"):
            out.append(("Join coverage (coordinator /metrics at stop)", ["counter", "refs"],
                        [[k, _fmt(v)] for k, v in cov["coordinator_metrics"].items()]))
    eo = s.get("exactly_once", {})
    if eo:
        out.append(("Exactly-once: emitted training-jobs vs oracle batch_join", ["quantity", "value"],
                    [[k, _fmt(eo[k])] for k in ("emitted_messages", "emitted_distinct", "oracle", "missing", "extra",
                                                "mismatched", "duplicates", "late_inputs")]))
        diff = [["missing", x] for x in eo.get("missing_sample", [])] + [["extra", x] for x in
                                                                         eo.get("extra_sample", [])]
        if diff:
            out.append(("Exactly-once diff (first 20 each)", ["side", "job"], diff))
    pc = s.get("pivot_check", {})
    if pc:
        out.append(("Pivots: stream vs batch detect_pivots", ["series", "stream", "batch", "missing", "extra"],
                    [[k, *[_fmt(v[x]) for x in ("stream", "batch", "missing", "extra")]] for k, v in pc.items()]))
    tr = s.get("training", {})
    if tr.get("models"):
        out.append(("Model versions", ["model key", "versions", "first", "last", "trained jobs", "last metrics"],
                    [[k, _fmt(m["versions"]), _fmt(m["first"]), _fmt(m["last"]), _fmt(m["trained_jobs_last"]),
                      ", ".join(f"{a}={_fmt(b)}" for a, b in m["metrics_last"].items())]
                     for k, m in tr["models"].items()]))
    if tr.get("refs_by_model_version"):
        out.append(("Refs by the model version that made them", ["version", "refs"],
                    [[f"v{k}", _fmt(v)] for k, v in tr["refs_by_model_version"].items()]))
    acc = tr.get("accuracy", {})
    if acc and acc.get("overall", {}).get("n"):
        hdr = ["refs scored", "model", "always-HOLD", "previous-move"]
        rows = [["all", *[_fmt(acc["overall"][k]) for k in ("n", "model", "always_hold", "previous_move")]]]
        rows += [[f"v{v}", *[_fmt(x[k]) for k in ("n", "model", "always_hold", "previous_move")]]
                 for v, x in acc["by_version"].items()]
        out.append((f"Out-of-sample accuracy (excluded for possible look-ahead: {acc['excluded_leak']})",
                    ["version", *hdr], rows))
        if acc.get("over_time"):
            out.append(("Accuracy over time (equal-count buckets of refs)",
                        ["from (UTC)", "to (UTC)", *hdr],
                        [[_ts(b["from"]), _ts(b["to"]), *[_fmt(b[k]) for k in ("n", "model", "always_hold",
                                                                               "previous_move")]]
                         for b in acc["over_time"]]))
    sc = acc.get("scores") if acc else None
    if sc:
        out.append(("Model vs baselines (ops.scoring, the same metrics as make backtest; class prior fitted on "
                    "outcomes known before each ref)",
                    ["series", "n", "log loss model", "log loss prior", "Brier model", "Brier prior", "ECE",
                     "hit rate (n, 95% CI)", "close MAE bp model / no-change", "PnL net bp (turnover)",
                     "buy&hold net bp", "predicted B/S/H"],
                    [[k, _fmt(b["n"]), _fmt(b["log_loss"]["model"]), _fmt(b["log_loss"]["class_prior"]),
                      _fmt(b["brier"]["model"]), _fmt(b["brier"]["class_prior"]), _fmt(b["reliability"]["ece"]),
                      f"{_fmt(b['directional']['hit_rate'])} ({b['directional']['n']}, "
                      f"{_fmt(b['directional']['ci95'][0])}-{_fmt(b['directional']['ci95'][1])})",
                      f"{_fmt((b.get('candle_close_mae_bp') or {}).get('model'))} / "
                      f"{_fmt((b.get('candle_close_mae_bp') or {}).get('no_change'))}",
                      f"{_fmt(b['pnl']['model']['net_bp'])} ({_fmt(b['pnl']['model']['turnover'])})",
                      _fmt(b["pnl"]["buy_and_hold"]["net_bp"]),
                      "/".join(_fmt(b["predicted_mix"][a]) for a in ("BUY", "SELL", "HOLD"))]
                     for k, b in sc.items()]))
        rel = sc["all"]["reliability"]
        out.append((f"Reliability of confidence (ECE {_fmt(rel['ece'])})", ["bin", "n", "mean confidence", "accuracy"],
                    [[r["bin"], _fmt(r["n"]), _fmt(r["mean_confidence"]), _fmt(r["accuracy"])] for r in rel["table"]]))
    tm = s.get("timing", {})
    if tm.get("throughput"):
        out.append(("Throughput per stage (Kafka timestamps, first to last message)",
                    ["stage", "output", "records", "span s", "per s"],
                    [[v.get("stage", "?"), t, _fmt(v["messages"]), _fmt(v["span_s"]), _fmt(v["per_s"])]
                     for t, v in tm["throughput"].items()]))
    if tm.get("latency_s"):
        out.append(("Latency in seconds (Kafka message timestamps)", ["path", "p50", "p90", "p99", "max", "n"],
                    [[k, *[_fmt(v.get(q)) for q in ("p50", "p90", "p99", "max", "n")]]
                     for k, v in tm["latency_s"].items()]))
    return out


def _ts(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")


def render_console(report: Report, console: Console | None = None) -> None:
    console = console or Console()
    console.rule(f"[bold]{report.title}")
    for k, v in report.meta.items():
        console.print(f"[dim]{k}:[/dim] {v}")
    for title, header, rows in tables(report):
        t = Table(title=title, title_justify="left", show_lines=False)
        for h in header:
            t.add_column(h, overflow="fold")
        for row in rows:
            styled = [f"[green]{x}[/green]" if x == PASS else f"[bold red]{x}[/bold red]" if x == FAIL else
                      f"[yellow]{x}[/yellow]" if x == NOT_RUN else x for x in row]
            t.add_row(*styled)
        console.print(t)
    for n in report.notes:
        console.print(f"- {n}")
    verdict = "[green]all checks pass[/green]" if report.ok else "[bold red]some checks FAILED[/bold red]"
    plots = ", ".join(f"{k}={v or 'nothing to draw'}" for k, v in report.plots.items()) or "not drawn"
    console.print(f"\n{verdict}; plots: {plots}")


def render_markdown(report: Report) -> str:
    lines = [f"# {report.title}", ""]
    lines += [f"- **{k}**: {v}" for k, v in report.meta.items()]
    lines.append("")
    for title, header, rows in tables(report):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(x.replace("|", "\\|") for x in row) + " |" for row in rows]
        lines.append("")
    if report.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in report.notes] + [""]
    if any(report.plots.values()):
        lines += ["## Plots", ""]
        lines += [f"![{k}]({v})" for k, v in report.plots.items() if v]
        lines.append("")
    lines += ["## How the numbers are made", "", METHOD, ""]
    return "\n".join(lines)


def render_html(report: Report) -> str:
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(report.title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
             "margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
             ".pass{color:#080}.FAIL{color:#c00;font-weight:bold}.not{color:#a80}</style>",
             f"<h1>{html.escape(report.title)}</h1><ul>"]
    parts += [f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>" for k, v in report.meta.items()]
    parts.append("</ul>")
    for title, header, rows in tables(report):
        parts.append(f"<h2>{html.escape(title)}</h2><table><tr>" +
                     "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        for row in rows:
            parts.append("<tr>" + "".join(
                f"<td class='{x.split()[0] if x in (PASS, FAIL, NOT_RUN) else ''}'>{html.escape(x)}</td>"
                for x in row) + "</tr>")
        parts.append("</table>")
    if report.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>")
    for k, v in report.plots.items():
        if v:
            parts.append(f"<h2>{html.escape(k)}</h2><img src='{html.escape(v)}' style='max-width:100%'>")
    parts.append(f"<h2>How the numbers are made</h2><pre style='white-space:pre-wrap'>{html.escape(METHOD)}</pre>")
    return "\n".join(parts)


def write(report: Report, out_dir: Path) -> dict[str, Path]:
    """report.md, report.html and report.json in ``out_dir`` (plots are written by ``build``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / "report.md", "html": out_dir / "report.html", "json": out_dir / "report.json"}
    # redact_text: a failure message may quote a connection string (reftrain.redact)
    paths["md"].write_text(redact_text(render_markdown(report)))
    paths["html"].write_text(redact_text(render_html(report)))
    paths["json"].write_text(json.dumps(redact_value(report.to_json()), indent=1, default=str))
    return paths


METHOD = """\
- Counts are distinct records in each topic read with isolation.level=read_committed (what consumers
  see); "messages" minus "distinct" is the number of duplicates. DLQ entries are the messages of
  <topic>.dlq.
- Join coverage puts every distinct ref in exactly one bucket with the coordinator's retention rule
  (services/coordinator/join.py), using each series' last candle in the topic as the watermark; the
  coordinator's own counters at stop (accepted = expired + pending) are shown next to it.
- Exactly-once: the set of job ids in training-jobs must equal services.coordinator.oracle.batch_join
  over the refs, candles and pivots recorded in the topics (per series), with no id twice and the
  same trigger/ref/pivot/candle for each id.
- Accuracy: a ref predicted BUY/SELL/HOLD from a window ending at data_range_end; it is scored against
  the realised move of its target candle (close vs the window's last close, the trainer's threshold
  0.0002*sqrt(bar minutes)). Baselines on the same refs: always HOLD, and previous-move (the realised
  action of the window's last candle). Live, the version that made a prediction was trained only on
  jobs resolved before the prediction was made, so never on the outcome it is scored on. A replay
  runs faster than real time, so this is checked: a ref is scored only if every job published before
  its version's model-versions message was resolved at or before data_range_end (others: excluded).
- Latency: differences of Kafka message timestamps (producer create time). "Resolving candle" is the
  target candle of a CANDLE job and the confirming candle (confirmed_at) of a PIVOT job's pivot.
"""


# -- CLI ------------------------------------------------------------------------------------------
def stack_env() -> dict[str, str]:
    """The local stack's variables (deploy/local/stack.sh env), for a shell without them."""
    out = subprocess.run([str(STACK), "env"], check=True, capture_output=True, text=True).stdout
    return parse_stack_env(out)


def report_for_run(run_dir: Path, *, with_plots: bool = True, console: Console | None = None) -> Report:
    """Rebuild the report of a finished ``ops.run`` from its run.json and saved final /metrics."""
    meta = json.loads((run_dir / "run.json").read_text())
    platform = settings_mod.from_public(meta["platform"])
    metrics = {}
    for stage in STAGES:
        files = sorted((run_dir / "metrics").glob(f"{stage.name}*.prom"))
        if files:
            metrics[stage.name] = merge([merge_incarnations(
                [*(parse(e.read_text(), str(e)) for e in incarnation_files(run_dir, f.stem)),
                 parse(f.read_text(), str(f))]) for f in files])
    stages = [StageStatus(**s) for s in meta["stages"]]
    from services.coordinator.settings import load as coordinator_settings

    inp = collect(platform, metrics=metrics, stages_run={s.name: s.ran for s in stages},
                  join_config=coordinator_settings(meta.get("env", {})).join_config(),
                  strengths=_strengths(meta.get("env", {})))
    report = build(inp, title=f"reftrain run {meta['run_id']}", meta=meta["summary"], stages=stages,
                   out_dir=run_dir, with_plots=with_plots, kills=meta.get("kills"))
    write(report, run_dir)
    return report


def incarnation_files(run_dir: Path, instance: str) -> list[Path]:
    """The final scrapes of an instance's earlier (killed or crashed) processes, oldest first:
    ``metrics/incarnations/<instance>.<n>.prom`` (``metrics/<instance>.prom`` is the last one)."""
    files = (run_dir / "metrics" / "incarnations").glob(f"{instance}.*.prom")
    return sorted(files, key=lambda f: int(f.stem.rsplit(".", 1)[1]))


def _strengths(env: Mapping[str, str]) -> tuple[int, ...]:
    from services.pivots.settings import load as pivot_settings

    return tuple(pivot_settings(env).strengths)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ops.report", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--run", type=Path, help="a finished run folder (reports/<run>) to rebuild")
    ap.add_argument("--prefix", help="topic prefix (default: $TOPIC_PREFIX or none)")
    ap.add_argument("--out", type=Path, help="output folder (default reports/report-<time>)")
    ap.add_argument("--metrics", action="append", default=[], metavar="STAGE=URL",
                    help="a service's /metrics URL (repeatable); default: each stage's default port on "
                         "127.0.0.1, skipped if unreachable")
    ap.add_argument("--no-plots", action="store_true")
    args = ap.parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=150)
    if args.run:
        report = report_for_run(args.run, with_plots=not args.no_plots)
        render_console(report, console)
        console.print(f"written to {args.run}")
        return 0 if report.ok else 1
    env = dict(os.environ)
    if not env.get("KAFKA_BOOTSTRAP_SERVERS"):
        env.update(stack_env())
    platform = settings_mod.platform(env)
    if args.prefix is not None:
        platform = platform.replace(topic_prefix=args.prefix)
    urls: dict[str, list[str]] = {}
    for item in args.metrics:
        stage, _, url = item.partition("=")
        urls.setdefault(stage, []).append(url)
    for st in STAGES:
        urls.setdefault(st.name, [f"http://127.0.0.1:{st.default_port}/metrics"])
    metrics = {name: merge([scrape(u) for u in us]) for name, us in urls.items()}
    metrics = {k: v for k, v in metrics.items() if v.ok}
    view = KafkaView(platform)
    try:
        existing = view.existing_topics()
    finally:
        view.close()
    cat = TopicCatalogue(platform)
    if cat.name("candles") not in existing:
        console.print(f"[red]no topic {cat.name('candles')!r} on {platform.kafka_bootstrap_servers}[/red]")
        return 2
    from services.coordinator.settings import load as coordinator_settings

    started = time.time()
    inp = collect(platform, metrics=metrics, join_config=coordinator_settings(env).join_config(),
                  strengths=_strengths(env))
    out = args.out or REPO / "reports" / f"report-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    stages = [StageStatus(s.name, inp.stages_run.get(s.name, False),
                          note="" if inp.stages_run.get(s.name) else "no messages in its output topic")
              for s in STAGES]
    meta = {"bootstrap": platform.kafka_bootstrap_servers, "topic prefix": platform.topic_prefix or "(none)",
            "metrics from": ", ".join(sorted(metrics)) or "none reachable",
            "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "read time s": round(time.time() - started, 1)}
    report = build(inp, title="reftrain report", meta=meta, stages=stages, out_dir=out, with_plots=not args.no_plots)
    write(report, out)
    render_console(report, console)
    console.print(f"written to {out}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
