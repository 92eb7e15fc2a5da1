"""Live progress of a run: per-stage process state, output counts and consumer lag.

Counts come from each service's /metrics (messages produced, candles ingested) where the process is
up, and from topic end offsets otherwise (an offset count includes transaction markers, so it is an
upper bound, shown as "~"). Lag is end offset minus the group's committed offset, summed over the
stage's inputs: an upper bound as well (see ops.kafkaview), exact zero is decided at drain time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ops.kafkaview import TP, KafkaView
from ops.procs import ServiceProcess
from ops.promtext import Scrape, merge, scrape
from ops.stages import STAGES, Stage
from reftrain.topics import TopicCatalogue


@dataclass
class StageProgress:
    stage: Stage
    state: str
    produced: int | None = None  # from /metrics
    offsets: int = 0  # end offsets of the stage's output topics
    lag: int | None = None  # raw lag over its inputs (None: stage not running)
    extra: str = ""


@dataclass
class Snapshot:
    at: float
    phase: str
    rows: list[StageProgress]
    ends: dict[TP, int] = field(default_factory=dict)
    scrapes: dict[str, Scrape] = field(default_factory=dict)


class Monitor:
    """Polls offsets, lags and /metrics; keeps the last good scrape of each stage (a finished ingest
    no longer serves /metrics, but its final counts stay on screen and go to the report)."""

    def __init__(self, view: KafkaView, procs: list[ServiceProcess], stages_run: dict[str, bool],
                 phase: str = "starting") -> None:
        self.view = view
        self.cat = TopicCatalogue(view.platform)
        self.procs = procs
        self.stages_run = stages_run
        self.phase = phase
        #: instance -> its last successful scrape (kept after the process exits)
        self.last_scrape: dict[str, Scrape] = {}
        self.started = time.monotonic()

    def instances(self, stage: str) -> list[ServiceProcess]:
        return [p for p in self.procs if p.stage.name == stage]

    def scrape_all(self) -> dict[str, Scrape]:
        """Scrape every running instance; return stage -> merged last scrapes of its instances."""
        for p in self.procs:
            if p.running():
                got = scrape(p.metrics_url, timeout=2.0)
                if got.ok:
                    self.last_scrape[p.instance] = got
        return self.by_stage()

    def by_stage(self) -> dict[str, Scrape]:
        out = {}
        for st in STAGES:
            got = [self.last_scrape[p.instance] for p in self.instances(st.name) if p.instance in self.last_scrape]
            if got:
                out[st.name] = merge(got)
        return out

    def snapshot(self) -> Snapshot:
        topics = [self.cat.name(t) for st in STAGES for t in st.outputs]
        ends = self.view.end_offsets(topics)
        scrapes = self.scrape_all()
        rows = []
        for st in STAGES:
            procs = self.instances(st.name)
            if not self.stages_run.get(st.name):
                rows.append(StageProgress(st, "not run"))
                continue
            if not procs:
                state = "stand-in" if st.name == "ingest" else "-"
            else:
                up = sum(p.running() for p in procs)
                rcs = [p.returncode() for p in procs if not p.running() and p.proc is not None]
                state = f"{up}/{len(procs)} up" + (f", exit {rcs}" if rcs else "")
            out_names = {self.cat.name(t) for t in st.outputs}
            offsets = sum(v for (t, _p), v in ends.items() if t in out_names)
            s = scrapes.get(st.name)
            produced = None
            extra = ""
            if s is not None:
                if st.name == "ingest":
                    produced = int(s.total("reftrain_ingest_candles_ingested_total"))
                else:
                    produced = int(sum(s.total("reftrain_messages_produced_total", topic=t) for t in st.outputs))
                if st.name == "trainer":
                    extra = f"trained {int(s.total('reftrain_trainer_jobs_trained_total'))}"
                    loss = s.samples.get("reftrain_trainer_loss")
                    if loss:
                        extra += " loss " + "/".join(f"{v:.3f}" for _l, v in loss[:3])
                if st.name == "coordinator":
                    extra = f"pending refs {int(s.total('reftrain_coordinator_pending_refs'))}"
                if st.name == "inference":
                    versions = s.samples.get("reftrain_inference_model_version")
                    if versions:
                        extra = "model v" + "/".join(str(int(v)) for _l, v in versions[:3])
            lag = None
            if st.inputs and procs:
                group = st.group(self.view.platform.topic_prefix)
                lag = sum(self.view.raw_lag(group, [self.cat.name(t) for t in st.inputs]).values())
            rows.append(StageProgress(st, state, produced, offsets, lag, extra))
        return Snapshot(time.monotonic(), self.phase, rows, ends, scrapes)

    def render(self, snap: Snapshot) -> Group:
        t = Table(title_justify="left", expand=False)
        for h in ("stage", "process", "out topic", "produced", "lag (in)", "detail"):
            t.add_column(h)
        for r in snap.rows:
            if r.state == "not run":
                t.add_row(r.stage.name, Text("not run", style="yellow"), ", ".join(r.stage.outputs), "-", "-", "")
                continue
            produced = f"{r.produced:,}" if r.produced is not None else f"~{r.offsets:,}"
            t.add_row(r.stage.name, r.state, ", ".join(r.stage.outputs), produced,
                      "-" if r.lag is None else f"{r.lag:,}", r.extra)
        head = Text(f"{snap.phase}  {time.monotonic() - self.started:5.0f} s", style="bold")
        return Group(head, t)

    def line(self, snap: Snapshot) -> str:
        """One log line per snapshot for a non-terminal output (CI logs)."""
        parts = []
        for r in snap.rows:
            if r.state == "not run":
                continue
            produced = r.produced if r.produced is not None else r.offsets
            parts.append(f"{r.stage.name}={produced}" + (f"(lag {r.lag})" if r.lag else ""))
        return f"[{time.monotonic() - self.started:5.0f}s {snap.phase}] " + " ".join(parts)


class ProgressView:
    """A rich Live table on a terminal; a line every ``every_s`` seconds otherwise."""

    def __init__(self, monitor: Monitor, console: Console, enabled: bool = True, every_s: float = 10.0) -> None:
        self.monitor = monitor
        self.console = console
        self.enabled = enabled
        self.every_s = every_s
        self.live: Live | None = None
        self._last_line = 0.0

    def __enter__(self) -> ProgressView:
        if self.enabled and self.console.is_terminal:
            self.live = Live(console=self.console, refresh_per_second=2, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)
            self.live = None

    def show(self, snap: Snapshot) -> None:
        if not self.enabled:
            return
        if self.live is not None:
            self.live.update(self.monitor.render(snap))
        elif time.monotonic() - self._last_line >= self.every_s:
            self._last_line = time.monotonic()
            self.console.print(self.monitor.line(snap), highlight=False)
