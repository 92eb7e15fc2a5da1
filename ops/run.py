"""``make run``: the whole loop on the bundled real data, on one machine, without Docker.

    python -m ops.run                          # last 1500 candles of BTCUSDT and ETHUSDT 1m (2025-10-29 files)
    python -m ops.run --candles 0 --trainers 2 # the whole files, two trainer replicas
    python -m ops.run --files BTCUSDT-1m-2025-09-22_2025-09-25.csv ETHUSDT-1m-2025-09-22_2025-09-25.csv
    python -m ops.run --kill coordinator,inference,trainer   # kill -9 each once mid-run (make run-kill)

What it does, in order:

1. starts the local stack (deploy/local/stack.sh up) unless it is running or KAFKA_BOOTSTRAP_SERVERS
   points elsewhere; remembers whether it started it, and stops it at the end only then;
2. isolates the run: topic prefix ``<run-id>-`` and a fresh DuckLake catalog database, so runs
   never see each other's data (the same isolation tests/conftest.py gives each test);
3. starts every service present under services/ as its own process (``python -m services.<name>``),
   trainers ``--trainers`` times, each with its own INSTANCE_ID and HTTP_PORT, logs in
   ``reports/<run>/logs/``; consumers first, ingest last, once the others are ready;
4. replays the bundled real candles through ingest and shows live progress (per-stage counts and
   lag, from /metrics and topic offsets);
5. waits until the pipeline has drained: ingest finished, every consumer group has no committed
   record left to read, and no topic has grown for ``--idle`` seconds (or ``--timeout``);
6. saves each service's final /metrics, stops every process (SIGTERM, wait, SIGKILL), also on
   Ctrl-C or SIGTERM, and writes the report (ops.report) and plots to ``reports/<run>/``.

Exit status: 0 all checks pass; 1 a check failed; 2 the run failed (a service crashed, no drain
before the timeout, a required stage is missing); 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from confluent_kafka import KafkaException
from rich.console import Console

from deploy.init import init_cluster
from ops import report as report_mod
from ops.catalog import CatalogError, drop_catalog, fresh_catalog
from ops.kafkaview import KafkaView
from ops.procs import Interrupted, ServiceProcess, free_port, pid_alive, signals_handled, signals_raise, stop_all
from ops.progress import Monitor, ProgressView
from ops.promtext import Scrape, merge, scrape
from ops.stages import BY_NAME, REPO, STACK, STAGES, Stage
from reftrain import settings as settings_mod
from reftrain.adapters import ADAPTER_ENV, DEFAULT_ADAPTER
from reftrain.redact import redact_value
from reftrain.settings import PlatformSettings
from reftrain.topics import TopicCatalogue

DATA = REPO / "data"

#: Two real Binance series (same timestamps), the most recent bundled 1m window.
DEFAULT_FILES: tuple[str, ...] = ("BTCUSDT-1m-2025-10-29_2025-11-01.csv", "ETHUSDT-1m-2025-10-29_2025-11-01.csv")
DEFAULT_CANDLES = 1500
#: INGEST_SPEED of the default run (times real time). Paced so the loop closes while the replay
#: runs: inference must predict before the next candles arrive and trainers must publish versions
#: that later predictions use; an unpaced replay would be predicted entirely by version 0.
DEFAULT_SPEED = 600.0
#: Service settings of the demo run that differ from the services' defaults, and why.
DEMO_ENV: dict[str, str] = {
    # a short run has a few thousand jobs per model: checkpoint (= publish a version) more often
    # than the production default so several versions appear and inference hot-reloads them.
    "TRAINER_CHECKPOINT_JOBS": "256",
    "TRAINER_CHECKPOINT_SECONDS": "10",
    "INGEST_PROGRESS": "off",
    "INGEST_EXIT_WHEN_DONE": "true",
}
#: Platform and service variables a run sets itself; --env may override service ones.
SERVICE_PREFIXES = ("INGEST_", "PIVOTS_", "INFERENCE_", "COORDINATOR_", "TRAINER_")


class RunError(Exception):
    """The run cannot go on (stack, database, a required stage missing): exit 2 with this message."""


@dataclass
class RunConfig:
    """Everything a run can vary; ``main`` maps the CLI flags onto it, tests build it directly."""

    files: tuple[str, ...] = DEFAULT_FILES
    #: Last N candles of each file (0 = whole file).
    candles: int = DEFAULT_CANDLES
    #: The first W candles of each series are replayed unpaced by a first ingest process (no
    #: prediction can happen before a full window exists, so pacing them only costs time); the rest
    #: is paced by a second one, which resumes from the store (ingest's restart path). None = the
    #: inference window minus one (INFERENCE_WINDOW, 600 by default); 0 = pace everything.
    warmup: int | None = None
    trainers: int = 1
    speed: float = DEFAULT_SPEED
    #: Drained = no topic grew for this long (with zero effective lag everywhere). Longer than the
    #: trainer's time-based checkpoint so the last version is not cut off.
    idle_s: float = 15.0
    timeout_s: float = 1500.0
    ready_timeout_s: float = 240.0
    grace_s: float = 30.0
    #: How long the broker may be unreachable during a run before the run gives up.
    broker_grace_s: float = 120.0
    #: A service that exits with an error is restarted (as an orchestrator would) this many times;
    #: the services are built to resume exactly (ingest from the store, the others from Kafka), so
    #: the report's invariants still hold, and the restarts are reported.
    max_restarts: int = 3
    out_root: Path = REPO / "reports"
    run_id: str | None = None
    keep_stack: bool = False
    #: Delete the run's topics, catalog database and store folder afterwards (tests).
    cleanup: bool = False
    env: dict[str, str] = field(default_factory=dict)
    skip: tuple[str, ...] = ()
    require: tuple[str, ...] = ()
    progress: bool = True
    plots: bool = True
    #: Fixed ports base+0.. instead of free ones (e.g. 8001 for Prometheus scraping a demo).
    base_port: int | None = None
    #: Services to kill -9 once each mid-run (``--kill``), in this order, while they have work in
    #: flight (see ``Killer``); each is restarted at once, as an orchestrator would.
    kills: tuple[str, ...] = ()


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    exit_code: int
    report: report_mod.Report | None
    drained: bool
    failure: str | None
    interrupted: bool
    stages_run: dict[str, bool]
    pids: list[int]
    stack_started: bool
    duration_s: float


# -- stack and isolation --------------------------------------------------------------------------
def _stack(cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.setdefault("PYTHON", sys.executable)
    return subprocess.run([str(STACK), cmd], env=env, check=check, text=True,
                          stdout=subprocess.PIPE if cmd in ("env", "status") else None)


def external_stack() -> dict[str, str] | None:
    """The platform env when KAFKA_BOOTSTRAP_SERVERS/SCHEMA_REGISTRY_URL point at a stack (used as is)."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("SCHEMA_REGISTRY_URL"):
        keys = ("KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL", "STORE_CATALOG", "STORE_DATA_PATH")
        # + the client security settings (KAFKA_CONFIG_FILE, KAFKA_SASL_*, SCHEMA_REGISTRY_*: docs/security.md)
        # + the lake's object store (STORE_S3_*: docs/scaling.md)
        return {k: v for k, v in os.environ.items()
                if k in keys or k.startswith(("KAFKA_", "SCHEMA_REGISTRY_", "STORE_CATALOG_", "STORE_S3_"))}
    return None


def local_stack_up() -> bool:
    return _stack("status", check=False).returncode == 0


def start_local_stack(console: Console) -> None:
    console.print("[bold]starting the local stack[/bold] (deploy/local/stack.sh up)")
    try:
        _stack("up")
    except subprocess.CalledProcessError as exc:
        raise RunError(f"deploy/local/stack.sh up failed ({exc.returncode}); see its output above") from exc


# -- data -------------------------------------------------------------------------------------------
def prepare_files(files: Sequence[str], candles: int, dest: Path, warmup: int = 0) -> list[dict[str, Any]]:
    """Copy the last ``candles`` rows of each bundled file into ``dest`` (renamed to its new date range,
    which ingest reads symbol and timeframe from), the first ``warmup`` of them into ``dest/warmup``;
    returns what was copied, for the report."""
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        src = Path(f) if Path(f).is_file() else DATA / f
        if not src.is_file():
            raise RunError(f"no data file {f!r} (looked in {DATA})")
        with open(src, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            rows = list(reader)
        if candles > 0:
            rows = rows[-candles:]
        if not rows:
            raise RunError(f"{src.name}: no rows")
        symbol, tf = src.name.split("-")[:2]

        def day(ms: str) -> str:
            return datetime.fromtimestamp(int(ms) / 1000, tz=UTC).strftime("%Y-%m-%d")

        head, tail = rows[:warmup], rows[warmup:]
        entry: dict[str, Any] = {"source": src.name, "series": f"{symbol}:{tf}", "candles": len(rows),
                                 "first": int(rows[0][0]), "last": int(rows[-1][0]), "warmup_file": None,
                                 "file": None}
        for part, folder, name in ((head, dest / "warmup", "warmup_file"), (tail, dest, "file")):
            if not part:
                continue
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"{symbol}-{tf}-{day(part[0][0])}_{day(part[-1][0])}.csv"
            with open(target, "w", newline="") as fh:
                w = csv.writer(fh, lineterminator="\n")
                w.writerow(header)
                w.writerows(part)
            entry[name] = str(target)
        out.append(entry)
    return out


# -- the run ------------------------------------------------------------------------------------------
def _signals_ignored(console: Console) -> contextlib.AbstractContextManager[None]:
    """While stopping: a second Ctrl-C must not abandon half-stopped services."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        console.print("[yellow]stopping services, please wait[/yellow]")

    return signals_handled(handler)


def service_env(base: dict[str, str], platform: PlatformSettings, instance: str, port: int,
                extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith(SERVICE_PREFIXES)}
    env.update(extra)
    env.update(platform.connection_env())
    env.update({
        "INSTANCE_ID": instance,
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": str(port),
        "LOG_FORMAT": "json",
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
    })
    env.update(s3_env(platform))
    return env


def s3_env(platform: PlatformSettings) -> dict[str, str]:
    """The STORE_S3_* variables of a platform whose lake is on S3 (none for a local folder)."""
    if not platform.store_data_path.startswith("s3://"):
        return {}
    return {"STORE_S3_ENDPOINT": platform.store_s3_endpoint, "STORE_S3_ACCESS_KEY_ID": platform.store_s3_access_key_id,
            "STORE_S3_SECRET_ACCESS_KEY": platform.store_s3_secret_access_key,
            "STORE_S3_SECRET_ACCESS_KEY_FILE": platform.store_s3_secret_access_key_file,
            "STORE_S3_REGION": platform.store_s3_region, "STORE_S3_URL_STYLE": platform.store_s3_url_style,
            "STORE_S3_USE_SSL": "true" if platform.store_s3_use_ssl else "false"}


def run_data_path(base: str, run_id: str, local: Path) -> str:
    """A run's own lake: ``s3://<bucket>/runs/<run id>`` on the stack's bucket when its lake is on S3
    (``make run LAKE=s3``), else ``local``."""
    if base.startswith("s3://"):
        bucket = base.removeprefix("s3://").split("/", 1)[0]
        return f"s3://{bucket}/runs/{run_id}"
    return str(local)


def run(config: RunConfig, console: Console | None = None) -> RunResult:
    """Run the loop once (see the module docstring); never leaves a process it started behind."""
    console = console or Console()
    t0 = time.time()
    run_id = config.run_id or f"run-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    run_dir = config.out_root / run_id
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    procs: list[ServiceProcess] = []
    stages_run = {s.name: s.present() and s.name not in config.skip for s in STAGES}
    missing = [s for s in config.require if not BY_NAME[s].present()]
    stack_started = False
    platform: PlatformSettings | None = None
    drained, failure, interrupted = False, None, False
    report: report_mod.Report | None = None
    monitor: Monitor | None = None
    view: KafkaView | None = None
    summary: dict[str, Any] = {"run id": run_id}
    killer: Killer | None = None
    #: instance -> final scrapes of its earlier processes (killed or crashed), oldest first
    incarnations: dict[str, list[Scrape]] = {}
    service_extra: dict[str, str] = {}
    catalog_env: dict[str, str] = dict(os.environ)
    console.print(f"[bold]reftrain run {run_id}[/bold]: logs and report in {run_dir}")
    try:
        with signals_raise():
            if missing:
                raise RunError(f"required stages have no services/<name>/__main__.py yet: {', '.join(missing)}")
            if not stages_run["ingest"]:
                raise RunError("ingest is not present or skipped: nothing would replay the data")
            for s in STAGES:
                if not stages_run[s.name]:
                    why = "skipped by --skip" if s.name in config.skip else f"no services/{s.name}/__main__.py yet"
                    console.print(f"[yellow]stage {s.name}: not run[/yellow] ({why})")
            external = external_stack()
            if external is None and not local_stack_up():
                stack_started = True  # set first: an interrupted `up` is still ours to take down
                start_local_stack(console)
            base_env = external if external is not None else report_mod.stack_env()
            # the admin login for the run's catalog database (ops.catalog): this shell's, or the stack's
            catalog_env = {**os.environ, **base_env}
            platform = settings_mod.platform(base_env)
            db = "run_" + run_id.replace("-", "_").lower()
            platform = PlatformSettings(**{
                **platform.as_dict(), "topic_prefix": f"{run_id}-",
                "store_catalog": fresh_catalog(platform.store_catalog, db, environ=catalog_env),
                "store_data_path": run_data_path(platform.store_data_path, run_id,
                                                 REPO / ".local" / "runs" / run_id / "lake"), "http_port": 0})
            warmup = config.warmup
            if warmup is None:
                window = config.env.get("INFERENCE_WINDOW", "600")
                warmup = max(0, int(window) - 1) if window.isdigit() else 0
            files = prepare_files(config.files, config.candles, run_dir / "data", warmup if config.speed else 0)
            service_extra = {**DEMO_ENV, "INGEST_SPEED": str(config.speed), **config.env}
            replays: list[tuple[str, dict[str, str]]] = []
            if any(f["warmup_file"] for f in files):
                replays.append(("ingest-warmup", {"INGEST_FILES": ",".join(f["warmup_file"] for f in files
                                                                          if f["warmup_file"]),
                                                  "INGEST_SPEED": "0"}))
            if any(f["file"] for f in files):
                replays.append(("ingest", {"INGEST_FILES": ",".join(f["file"] for f in files if f["file"])}))
            summary.update({
                "series replayed": ", ".join(f"{f['series']} ({f['candles']} candles from {f['source']})"
                                             for f in files),
                "ingest speed": (f"{config.speed:g}x real time" if config.speed else "unpaced")
                + (f" (first {warmup} candles per series unpaced: no prediction before a full window)"
                   if len(replays) > 1 else ""),
                "trainers": config.trainers if stages_run["trainer"] else 0,
                "model adapter": service_extra.get(ADAPTER_ENV, DEFAULT_ADAPTER),
                "topic prefix": platform.topic_prefix, "catalog": platform.store_catalog.split()[0],
                "stack": "started by this run" if stack_started else "already running",
                "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            })
            view = KafkaView(platform)
            init_cluster.prepare(platform, view.admin)  # topics + BACKWARD_TRANSITIVE schemas, as in compose
            port = config.base_port
            for st in STAGES:
                if not stages_run[st.name]:
                    continue
                if st.name == "ingest":
                    instances = replays
                elif st.name == "trainer":
                    instances = [(f"trainer-{i + 1}", {}) for i in range(config.trainers)]
                else:
                    instances = [(st.name, {})]
                for instance, own_env in instances:
                    if port is not None:
                        http, port = port, port + 1
                    else:
                        http = free_port()
                    env = service_env(dict(os.environ), platform, f"{run_id}-{instance}", http,
                                      {**service_extra, **own_env})
                    procs.append(ServiceProcess(st, instance, http, run_dir / "logs" / f"{instance}.log", env))
            plat = platform

            def save_meta() -> None:  # rewritten as processes start, so their pids are on disk early
                _write_run_json(run_dir, run_id, plat, service_extra, stages_run, procs, summary,
                                kills=killer.plan if killer is not None else None)

            monitor = Monitor(view, procs, stages_run)
            mon = monitor

            def retire(p: ServiceProcess) -> None:  # the process ended: its last scrape is an earlier incarnation
                last = mon.last_scrape.pop(p.instance, None)
                incarnations.setdefault(p.instance, []).append(last or Scrape(p.metrics_url, ok=False))

            if config.kills:
                killer = Killer(config.kills, procs, monitor, console, t0, retire)
                summary["kills (--kill)"] = ", ".join(config.kills)
            save_meta()
            with ProgressView(monitor, console, enabled=config.progress) as pv:
                drained, failure = _drive(config, procs, monitor, pv, view, console, save_meta, killer, retire)
    except Interrupted as exc:
        interrupted = True
        failure = f"interrupted ({exc})"
        console.print(f"[yellow]{failure}: stopping services[/yellow]")
    except (RunError, CatalogError) as exc:
        failure = str(exc)
        console.print(f"[bold red]run failed:[/bold red] {exc}")
    except Exception as exc:  # a bug or an outage: still stop everything below, and say what happened
        failure = f"{type(exc).__name__}: {exc}"
        console.print_exception()
    finally:
        with _signals_ignored(console):
            if monitor is not None:
                monitor.scrape_all()
                _save_metrics(run_dir, monitor, incarnations)
            ended = stop_all(procs, config.grace_s) if procs else {}
            for p in procs:
                if p.returncode() not in (0, None) and not interrupted and failure is None and p.stage.name == "ingest":
                    failure = f"{p.instance} exited with {p.returncode()}"
    summary.update({"finished": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
                    "duration s": round(time.time() - t0, 1),
                    "drained": "yes" if drained else f"no ({failure or 'timeout'})"})
    kills = killer.plan if killer is not None else None
    if kills:
        summary["kills (--kill)"] = "; ".join(
            f"{k.instance} (pid {k.pid}) at {k.at_s:.0f} s, {k.phase}, ready again after {k.recovered_s} s: {k.detail}"
            if k.done else f"{k.service}: {k.detail or 'not done (the run ended first)'}" for k in kills)
    stage_status = _stage_status(stages_run, procs, ended if procs else {}, config, kills)
    if platform is not None and monitor is not None and procs:
        _write_run_json(run_dir, run_id, platform, service_extra, stages_run, procs, summary, stage_status, kills)
        try:
            with signals_raise():
                console.print("[bold]building the report[/bold] (reading the run's topics)")
                report = _report(platform, _stage_metrics(monitor, incarnations), stages_run, stage_status,
                                 service_extra, summary, run_dir, config, kills)
                report_mod.render_console(report, console)
                console.print(f"\nreport: {run_dir / 'report.md'}  (html: report.html, logs: logs/)")
        except Interrupted:
            interrupted = True
            console.print("[yellow]report skipped (interrupted)[/yellow]")
        except Exception as exc:  # e.g. the broker went away: say so, keep the cleanup below
            failure = failure or f"report failed: {type(exc).__name__}: {exc}"
            console.print(f"[bold red]report failed:[/bold red] {type(exc).__name__}: {exc} "
                          f"(retry: python -m ops.report --run {run_dir})")
    if view is not None:
        view.close()
    if config.cleanup and platform is not None:
        _cleanup(platform, catalog_env)
    if stack_started and not config.keep_stack:
        console.print("[bold]stopping the local stack this run started[/bold]")
        _stack("down", check=False)
    pids = [pid for p in procs for pid in p.all_pids]
    left = [pid for pid in pids if pid_alive(pid)]
    if left:
        failure = failure or f"processes still running: {left}"
    if interrupted:
        code = 130
    elif failure or not drained or left:
        code = 2
    else:
        code = 0 if report is not None and report.ok else 1
    return RunResult(run_id, run_dir, code, report, drained, failure, interrupted, stages_run, pids, stack_started,
                     round(time.time() - t0, 1))


# -- kill -9 mid-run (--kill) ----------------------------------------------------------------------
#: Stages ``--kill`` may name: the long-running consumers whose restart the report must survive.
KILLABLE = ("pivots", "inference", "coordinator", "trainer")


@dataclass
class Kill:
    """One planned kill -9 and what happened (``at_s``: seconds since the run started)."""

    service: str
    instance: str = ""
    done: bool = False
    at_s: float = 0.0
    phase: str = ""
    pid: int | None = None
    detail: str = ""
    recovered_s: float | None = None


class Killer:
    """kill -9 each named service once, in order, at a moment it has work in flight, and restart it
    at once (a planned restart: not counted as a crash). Kills are at least ``GAP_S`` apart, and the
    next does not wait for the previous victim to be ready again (a restart under load can outlast
    the replay); the drain waits for all of them. Conditions, read from the victim's /metrics:

    * coordinator: refs held in state (``pending_refs`` > 0), during the paced replay;
    * inference, pivots: it has produced in this process and the paced replay is feeding it;
    * trainer: mid-batch: at least one checkpoint committed (so its restart re-announces a
      published version: the repeated-ModelVersion case) and jobs trained since the last committed
      checkpoint (uncommitted work that the restart must redo from the manifest).

    The killed process's last scrape is kept as an earlier incarnation of the instance (see
    ``retire``) so the report can sum its counters (docs/semantics.md)."""

    #: After the replay ended, a kill whose condition never came is given up (and reported) after this.
    GIVE_UP_S = 90.0
    #: Seconds between two kills.
    GAP_S = 10.0
    #: Seconds between the two scrapes that show a trainer mid-batch.
    MID_BATCH_PROBE_S = 1.0

    def __init__(self, names: Sequence[str], procs: list[ServiceProcess], monitor: Monitor, console: Console,
                 t0: float, retire: Callable[[ServiceProcess], None]) -> None:
        self.plan = [Kill(n) for n in names]
        self.procs = procs
        self.monitor = monitor
        self.console = console
        self.t0 = t0
        self.retire = retire
        #: killed and restarted, not ready yet: (process, its Kill, monotonic time of the kill)
        self.recovering: list[tuple[ServiceProcess, Kill, float]] = []
        self.last_kill = -1e9
        self.replay_done_at: float | None = None

    @property
    def pending(self) -> bool:
        return any(not k.done and not k.detail for k in self.plan)

    @property
    def busy(self) -> bool:
        """A kill is still to come or a victim is not serving again: not drained yet."""
        return self.pending or bool(self.recovering)

    def tick(self, paced_replay_running: bool, replay_done: bool) -> None:
        for entry in list(self.recovering):  # restarted victims: when do they serve again
            p, kill, at = entry
            if p.ready(timeout=1.0):
                kill.recovered_s = round(time.monotonic() - at, 1)
                self.console.print(f"[yellow]{p.instance} ready again {kill.recovered_s:.0f} s after its "
                                   "kill -9[/yellow]")
                self.recovering.remove(entry)
        nxt = next((k for k in self.plan if not k.done and not k.detail), None)
        if nxt is None or time.monotonic() - self.last_kill < self.GAP_S:
            return
        if replay_done:
            self.replay_done_at = self.replay_done_at or time.monotonic()
            if time.monotonic() - self.replay_done_at > self.GIVE_UP_S:
                nxt.detail = f"not done: no moment with work in flight within {self.GIVE_UP_S:.0f} s after the replay"
                self.console.print(f"[red]kill -9 {nxt.service}: {nxt.detail}[/red]")
                return
        for p in self.procs:
            if p.stage.name != nxt.service or not p.running():
                continue
            why = self._in_flight(p, paced_replay_running)
            if why is not None:
                self._kill(nxt, p, why, "paced replay" if paced_replay_running else
                           "draining" if replay_done else "warm-up replay")
                return

    def _in_flight(self, p: ServiceProcess, paced: bool) -> str | None:
        """Why ``p`` has work in flight now (from a fresh scrape), or None."""
        s = scrape(p.metrics_url, timeout=2.0)
        if not s.ok:
            return None
        self.monitor.last_scrape[p.instance] = s
        name = p.stage.name
        if name == "trainer":
            # two scrapes a moment apart with the same committed count and more jobs trained: jobs
            # went through the optimiser after its last commit (uncommitted work in flight now)
            committed = s.total("reftrain_trainer_checkpoints_total", outcome="committed")
            trained = s.total("reftrain_trainer_jobs_trained_total")
            if committed < 1:
                return None
            time.sleep(self.MID_BATCH_PROBE_S)
            s2 = scrape(p.metrics_url, timeout=2.0)
            if not s2.ok:
                return None
            self.monitor.last_scrape[p.instance] = s2
            committed2 = s2.total("reftrain_trainer_checkpoints_total", outcome="committed")
            trained2 = s2.total("reftrain_trainer_jobs_trained_total")
            if committed2 == committed and trained2 > trained:
                return (f"mid-batch: {int(trained2 - trained)} jobs trained since its last committed checkpoint "
                        f"({int(committed2)} committed, {int(trained2)} trained in this process)")
            return None
        if not paced:
            return None
        if name == "coordinator":
            pending = s.total("reftrain_coordinator_pending_refs")
            return f"{int(pending)} refs in state, replay feeding it" if pending > 0 else None
        produced = sum(s.total("reftrain_messages_produced_total", topic=t) for t in p.stage.outputs)
        return f"{int(produced)} messages produced, replay feeding it" if produced > 0 else None

    def _kill(self, kill: Kill, p: ServiceProcess, why: str, phase: str) -> None:
        kill.instance, kill.pid, kill.phase = p.instance, p.pid, phase
        kill.at_s = round(time.time() - self.t0, 1)
        p.signal(signal.SIGKILL)
        if p.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.proc.wait(10)
        kill.done = not p.running() and p.returncode() == -signal.SIGKILL
        kill.detail = why if kill.done else f"kill -9 failed (exit {p.returncode()})"
        self.console.print(f"[bold yellow]kill -9 {p.instance} (pid {kill.pid}) at {kill.at_s:.0f} s, {phase}: "
                           f"{why}; restarting it[/bold yellow]", highlight=False)
        self.retire(p)
        p.close_log()
        p.start()  # planned: restarted at once, not a crash
        self.last_kill = time.monotonic()
        self.recovering.append((p, kill, self.last_kill))


def _drive(config: RunConfig, procs: list[ServiceProcess], monitor: Monitor, pv: ProgressView, view: KafkaView,
           console: Console, started: Callable[[], None], killer: Killer | None = None,
           retire: Callable[[ServiceProcess], None] | None = None) -> tuple[bool, str | None]:
    """Start consumers, wait until ready, start ingest, then wait for the drain. (drained, failure)."""
    consumers = [p for p in procs if not p.stage.replay]
    replayers = [p for p in procs if p.stage.replay]
    monitor.phase = "starting services"
    for p in consumers:
        p.start()
    started()
    deadline = time.monotonic() + config.ready_timeout_s
    pending = list(consumers)
    while pending:
        pending = [p for p in pending if not p.ready()]
        for p in consumers:
            if not p.running():
                if not _restart(p, config, console, retire):
                    return False, f"{p.instance} exited with {p.returncode()}; log {p.log_path}:\n{p.log_tail()}"
                started()
        if time.monotonic() > deadline:
            console.print(f"[yellow]not ready after {config.ready_timeout_s:.0f} s: "
                          f"{', '.join(p.instance for p in pending)}; starting the replay anyway[/yellow]")
            break
        with contextlib.suppress(KafkaException):
            pv.show(monitor.snapshot())
        time.sleep(1.0)
    queue = list(replayers)  # run one after the other: warm-up (unpaced), then the paced replay
    current = queue.pop(0)
    current.start()
    started()
    monitor.phase = f"replaying ({current.instance})"
    deadline = time.monotonic() + config.timeout_s
    last_ends: dict[Any, int] = {}
    last_change = time.monotonic()
    broker_down_since: float | None = None
    while True:
        for p in consumers:
            if not p.running():
                if not _restart(p, config, console, retire):
                    return False, f"{p.instance} exited with {p.returncode()}; log {p.log_path}:\n{p.log_tail()}"
                started()
        if not current.running():
            if current.returncode() != 0:
                if not _restart(current, config, console, retire):
                    return False, (f"{current.instance} exited with {current.returncode()}; log {current.log_path}:"
                                   f"\n{current.log_tail()}")
                started()
            elif queue:
                current = queue.pop(0)
                current.start()
                started()
                monitor.phase = f"replaying ({current.instance})"
        replay_done = not queue and not current.running()
        if replay_done:
            monitor.phase = "draining"
        if killer is not None:
            before = sum(k.done for k in killer.plan)
            killer.tick(paced_replay_running=current.running() and current.instance == "ingest",
                        replay_done=replay_done)
            if sum(k.done for k in killer.plan) != before:
                started()
            busy = killer.busy
        else:
            busy = False
        try:
            pv.show(monitor.snapshot())
            ends = _all_ends(view, monitor)
            if ends != last_ends:
                last_ends, last_change = ends, time.monotonic()
            if (replay_done and not busy and time.monotonic() - last_change >= config.idle_s
                    and _no_lag(view, monitor, consumers)):
                monitor.phase = "drained"
                pv.show(monitor.snapshot())
                return True, None
            broker_down_since = None
        except KafkaException as exc:
            # The services ride out a broker restart (their sessions restart with back-off); so does
            # the monitor, for a while.
            now = time.monotonic()
            broker_down_since = broker_down_since or now
            console.print(f"[yellow]broker unavailable ({exc.args[0] if exc.args else exc}); waiting[/yellow]")
            if now - broker_down_since > config.broker_grace_s:
                return False, f"broker unavailable for {config.broker_grace_s:.0f} s: {exc}"
            last_change = now
        if time.monotonic() > deadline:
            return False, f"not drained after {config.timeout_s:.0f} s (--timeout)"
        time.sleep(1.0)


def _restart(p: ServiceProcess, config: RunConfig, console: Console,
             retire: Callable[[ServiceProcess], None] | None = None) -> bool:
    """Restart a crashed instance with back-off (1, 2, 4 ... s); False when its restarts are used up.

    Any exit of a long-running consumer is a crash (only SIGTERM stops them, and only at the end)."""
    if len(p.crashes) >= config.max_restarts:
        return False
    rc = p.returncode()
    console.print(f"[yellow]{p.instance} exited with {rc}; restarting ({len(p.crashes) + 1}/{config.max_restarts})"
                  f"[/yellow] - last log lines:\n{p.log_tail(3)[-600:]}", highlight=False)
    time.sleep(min(2 ** len(p.crashes), 8))
    if retire is not None:
        retire(p)
    p.restart()
    return True


def _all_ends(view: KafkaView, monitor: Monitor) -> dict[Any, int]:
    """End offsets of every topic of the run (outputs, DLQs, changelogs): growth = activity."""
    return view.end_offsets(view.topics_with_prefix(view.platform.topic_prefix))


def _no_lag(view: KafkaView, monitor: Monitor, consumers: list[ServiceProcess]) -> bool:
    cat = TopicCatalogue(view.platform)
    stages: dict[str, Stage] = {p.stage.name: p.stage for p in consumers}
    for st in stages.values():
        lag = view.effective_lag(st.group(view.platform.topic_prefix), [cat.name(t) for t in st.inputs])
        if lag != 0:
            return False
    return True


def _save_metrics(run_dir: Path, monitor: Monitor, incarnations: dict[str, list[Scrape]] | None = None) -> None:
    """metrics/<instance>.prom: the last process's final scrape; metrics/incarnations/<instance>.<n>.prom:
    the earlier processes' (killed or crashed), which the report sums (ops.report.merge_incarnations)."""
    folder = run_dir / "metrics"
    folder.mkdir(parents=True, exist_ok=True)
    for instance, s in monitor.last_scrape.items():
        (folder / f"{instance}.prom").write_text(s.text)
    for instance, scrapes in (incarnations or {}).items():
        (folder / "incarnations").mkdir(exist_ok=True)
        for n, s in enumerate(scrapes, 1):
            (folder / "incarnations" / f"{instance}.{n}.prom").write_text(s.text)


def _stage_metrics(monitor: Monitor, incarnations: dict[str, list[Scrape]]) -> dict[str, Scrape]:
    """Stage -> its instances' final /metrics, each summed over its process incarnations."""
    out = {}
    for st in STAGES:
        per_instance = [report_mod.merge_incarnations([*incarnations.get(p.instance, []),
                                                       monitor.last_scrape[p.instance]])
                        for p in monitor.instances(st.name) if p.instance in monitor.last_scrape]
        if per_instance:
            out[st.name] = merge(per_instance)
    return out


def _stage_status(stages_run: dict[str, bool], procs: list[ServiceProcess], ended: dict[str, str],
                  config: RunConfig, kills: Sequence[Kill] | None = None) -> list[report_mod.StageStatus]:
    out = []
    killed = {k.instance: k for k in kills or () if k.done}
    for st in STAGES:
        inst = [{"instance": p.instance, "pid": p.pid, "port": p.port,
                 "ended": ended.get(p.instance, "?") + (f"; restarted after exit {', '.join(map(str, p.crashes))}"
                                                        if p.crashes else "")
                 + (f"; kill -9 (--kill) of pid {killed[p.instance].pid} at {killed[p.instance].at_s:.0f} s, "
                    "restarted" if p.instance in killed else ""),
                 "restarts": len(p.crashes)}
                for p in procs if p.stage.name == st.name]
        note = "" if stages_run[st.name] else ("skipped (--skip)" if st.name in config.skip else
                                                f"no services/{st.name}/__main__.py")
        out.append(report_mod.StageStatus(st.name, stages_run[st.name], inst, note))
    return out


def _write_run_json(run_dir: Path, run_id: str, platform: PlatformSettings, extra: dict[str, str],
                    stages_run: dict[str, bool], procs: list[ServiceProcess], summary: dict[str, Any],
                    stages: list[report_mod.StageStatus] | None = None, kills: Sequence[Kill] | None = None) -> None:
    """What ``python -m ops.report --run <dir>`` needs to rebuild the report later."""
    stages = stages or [report_mod.StageStatus(s.name, stages_run[s.name]) for s in STAGES]
    (run_dir / "run.json").write_text(json.dumps({
        "run_id": run_id, "platform": platform.public(), "env": extra, "summary": redact_value(summary),
        "stages": [asdict(s) for s in stages],
        "pids": {p.instance: p.pid for p in procs},
        "all_pids": {p.instance: p.all_pids for p in procs},
        **({"kills": [asdict(k) for k in kills]} if kills else {}),
    }, indent=1))


def _report(platform: PlatformSettings, metrics: dict[str, Scrape], stages_run: dict[str, bool],
            stages: list[report_mod.StageStatus], extra: dict[str, str], summary: dict[str, Any], run_dir: Path,
            config: RunConfig, kills: Sequence[Kill] | None = None) -> report_mod.Report:
    from services.coordinator.settings import load as coordinator_settings
    from services.pivots.settings import load as pivot_settings

    inp = report_mod.collect(platform, metrics=metrics, stages_run=stages_run,
                             join_config=coordinator_settings(extra).join_config(),
                             strengths=pivot_settings(extra).strengths)
    report = report_mod.build(inp, title=f"reftrain run {summary['run id']}", meta=summary, stages=stages,
                              out_dir=run_dir, with_plots=config.plots,
                              kills=[asdict(k) for k in kills] if kills else None)
    report_mod.write(report, run_dir)
    return report


def cleanup_run(run_dir: Path) -> None:
    """Delete what a finished run left on the stack (topics, catalog database, store folder), from
    its run.json; the report folder itself is kept."""
    meta = json.loads((run_dir / "run.json").read_text())
    _cleanup(settings_mod.from_public(meta["platform"]))


def _cleanup(platform: PlatformSettings, catalog_env: dict[str, str] | None = None) -> None:
    """Delete the run's topics, catalog database and store folder (tests; demos keep them)."""
    with contextlib.suppress(Exception):
        view = KafkaView(platform)
        try:
            view.delete_topics(view.topics_with_prefix(platform.topic_prefix))
        finally:
            view.close()
    with contextlib.suppress(Exception):
        drop_catalog(platform.store_catalog, environ=catalog_env)
    if not platform.store_data_path.startswith("s3://"):  # objects on S3 stay with the stack's bucket
        shutil.rmtree(Path(platform.store_data_path).parent, ignore_errors=True)


# -- CLI ------------------------------------------------------------------------------------------
def _kv(text: str) -> tuple[str, str]:
    k, sep, v = text.partition("=")
    if not sep or not k:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return k, v


def parse_args(argv: Sequence[str] | None = None) -> RunConfig:
    ap = argparse.ArgumentParser(prog="python -m ops.run", description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--files", nargs="+", default=list(DEFAULT_FILES),
                    help="candle files (names in data/ or paths), one series each (default: %(default)s)")
    ap.add_argument("--candles", type=int, default=DEFAULT_CANDLES,
                    help="last N candles of each file; 0 = the whole file (default %(default)s)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="first W candles of each series replayed unpaced (default: inference window - 1)")
    ap.add_argument("--trainers", type=int, default=1, help="trainer processes (default %(default)s)")
    ap.add_argument("--speed", type=float, default=DEFAULT_SPEED,
                    help="replay speed, times real time (INGEST_SPEED; 0 = unpaced; default %(default)s)")
    ap.add_argument("--idle", type=float, default=15.0, help="drained after this many quiet seconds (default 15)")
    ap.add_argument("--timeout", type=float, default=1500.0, help="give up draining after S seconds (default 1500)")
    ap.add_argument("--out", type=Path, default=REPO / "reports", help="parent of the run folder (default reports/)")
    ap.add_argument("--run-id", help="name of the run (default run-<UTC time>-<random>)")
    ap.add_argument("--env", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                    help="extra service setting, e.g. TRAINER_BATCH=64 (repeatable)")
    ap.add_argument("--adapter", metavar="MODULE:CLASS",
                    help=f"the model of inference and trainer ({ADAPTER_ENV}; default {DEFAULT_ADAPTER}), e.g. "
                         "reftrain.adapters.linear:LinearAdapter")
    ap.add_argument("--skip", nargs="*", default=[], choices=[s.name for s in STAGES], help="stages not to start")
    ap.add_argument("--require-all", action="store_true", help="fail if any of the five services is missing")
    ap.add_argument("--base-port", type=int, help="fixed HTTP ports from this one (default: free ports)")
    ap.add_argument("--keep-stack", action="store_true", help="leave a stack this run started running")
    ap.add_argument("--cleanup", action="store_true", help="delete the run's topics and catalog afterwards")
    ap.add_argument("--kill", default="", metavar="SERVICE,...",
                    help=f"kill -9 each named service once mid-run, while it has work in flight, and restart it "
                         f"(any of {', '.join(KILLABLE)}; e.g. coordinator,inference,trainer)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--no-plots", action="store_true")
    a = ap.parse_args(argv)
    if a.trainers < 1:
        ap.error("--trainers must be >= 1")
    kills = tuple(k.strip() for k in a.kill.split(",") if k.strip())
    if bad := [k for k in kills if k not in KILLABLE]:
        ap.error(f"--kill: {', '.join(bad)} not one of {', '.join(KILLABLE)}")
    if len(set(kills)) != len(kills):
        ap.error("--kill: each service once")
    return RunConfig(files=tuple(a.files), candles=a.candles, warmup=a.warmup, trainers=a.trainers, speed=a.speed,
                     idle_s=a.idle,
                     timeout_s=a.timeout, out_root=a.out, run_id=a.run_id, keep_stack=a.keep_stack,
                     cleanup=a.cleanup, env={**dict(a.env), **({ADAPTER_ENV: a.adapter} if a.adapter else {})},
                     skip=tuple(a.skip),
                     require=tuple(s.name for s in STAGES) if a.require_all else (), progress=not a.no_progress,
                     plots=not a.no_plots, base_port=a.base_port, kills=kills)


def console() -> Console:
    """A terminal gets rich's live view; a log (CI, pipes) gets wide tables instead of 80 columns."""
    return Console() if sys.stdout.isatty() else Console(width=150)


def main(argv: Sequence[str] | None = None) -> int:
    result = run(parse_args(argv), console())
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
