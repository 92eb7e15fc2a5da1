"""``make faults``: a bounded fault-injection campaign against the whole loop, on real data, on a
PRIVATE local stack (its own Kafka, registry and PostgreSQL on other ports, in a temporary folder).

    python -m ops.faults --size reduced     # CI size: about 11 faults, a few minutes
    python -m ops.faults --size full        # make faults: about 30 faults
    python -m ops.faults --size reduced --stack-dir /tmp/st --keep-stack   # reuse a private stack

What it does:

1. starts a private stack (deploy/local/stack.sh with REFTRAIN_STACK_DIR and REFTRAIN_*_PORT set):
   the broker and the registry are stopped during the campaign, so it must never be the shared
   stack other people's tests use;
2. starts pivots, inference, coordinator and a trainer as processes (ops.procs), and replays real
   Binance 1m candles (data/) through ingest in consecutive paced chunks, each chunk one ingest
   process, so the loop is under steady load the whole time;
3. acts as the process supervisor an orchestrator would be: a service that exits is restarted
   (at once after an injected kill; with back-off after an unplanned exit, which is counted);
4. injects, one at a time, at random moments: kill -9 of every service (several times at full size),
   kill -9 of the trainer INSIDE a checkpoint (TRAINER_FAILPOINT, each stage of the protocol) and
   during a rebalance, broker stop/restart, schema registry stop/restart (with a service restart
   while it is down), the store's catalog database refusing connections, a trainer replica added
   and removed; plus a few bad messages (candles, training jobs) that must end up dead-lettered;
5. after each fault, measures the recovery time: from the end of the fault (process restarted,
   component back) until every service is ready again and the affected consumer groups committed
   new progress;
6. drains, stops the services gracefully, and checks, from the topics (read_committed) and the
   trainer's checkpoint lineage:
   - training jobs == offline oracle ``batch_join`` of the candles, pivots and refs on the topics:
     lost, duplicated, extra; per fault, a job counts where the join became possible (the later of
     its ref and its resolving candle/pivot) inside the fault's window;
   - trained twice (a job id twice in a surviving lineage) and not trained (a job neither in a
     lineage nor dead-lettered by the trainer);
   - upstream: every replayed candle once on ``candles``, pivots == batch detector, one ref per
     candle with a full window;
   - every injected bad message dead-lettered by each of its consumers; no service in a crash loop.

Exit status: 0 every check passed; 1 a check failed; 2 the campaign could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from deploy.init import init_cluster
from ops.kafkaview import KafkaView, Msg, read_messages, read_topic
from ops.procs import Interrupted, ServiceProcess, free_port, pid_alive, signals_raise
from ops.run import DEFAULT_FILES, drop_catalog, fresh_catalog, service_env
from ops.stages import BY_NAME, REPO, STACK, parse_stack_env
from reftrain import settings as settings_mod
from reftrain.records import series_key
from reftrain.redact import redact_text
from reftrain.settings import PlatformSettings
from reftrain.streams import Serdes, producer_config
from reftrain.topics import CANDLES, INFERENCE_REFS, PIVOTS, TRAINING_JOBS, TopicCatalogue

DATA = REPO / "data"
CONSUMERS = ("pivots", "inference", "coordinator", "trainer")
#: Consumer group inputs (logical topics) of each consumer stage, for progress and lag.
INPUTS: dict[str, tuple[str, ...]] = {s: BY_NAME[s].inputs for s in CONSUMERS}
#: Which consumers dead-letter a bad message of each topic (their DLQ entries are counted).
CONSUMERS_OF: dict[str, tuple[str, ...]] = {CANDLES: ("pivots", "inference", "coordinator"),
                                            TRAINING_JOBS: ("trainer",)}


#: The liveness probe of deploy/k8s (GET /healthz every 15 s, restart after 4 failures), emulated by
#: the campaign's supervisor: a service whose main loop is stuck is restarted as Kubernetes would.
LIVENESS_PERIOD_S = 15.0
LIVENESS_FAILURES = 4
#: Startup: failures count only once /healthz answered, or after this long (k8s startupProbe).
STARTUP_GRACE_S = 300.0


# -- sizes ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Size:
    """How much data and how many faults. ``chunk`` candles per series per ingest process, paced at
    ``speed`` times real time (1m bars: speed 120 = 2 candles per second per series)."""

    name: str
    files: tuple[str, ...]
    window: int
    chunk: int
    speed: float
    max_candles: int
    kills_per_service: int
    failpoints: tuple[str, ...]
    #: (stream service, reftrain.streams failpoint stage): a kill -9 inside a transaction commit
    commit_kills: tuple[tuple[str, str], ...]
    rebalance_kills: int
    broker_stops: tuple[str, ...]  # signal used to stop the broker, one entry per stop
    broker_down_s: float
    registry_stops: int
    registry_down_s: float
    store_outages: int
    store_down_s: float
    data_path_outages: int  # the store's data path made read-only (chattr +i)
    scale_events: int
    bad_every: int  # a bad candle and a bad training job before every n-th fault
    settle_s: tuple[float, float] = (1.0, 4.0)
    recovery_timeout_s: float = 240.0


SIZES: dict[str, Size] = {
    "reduced": Size("reduced", DEFAULT_FILES, window=60, chunk=20, speed=120.0, max_candles=1500,
                    kills_per_service=1, failpoints=("after_fence",),
                    commit_kills=(("coordinator", "before_commit"),), rebalance_kills=1, broker_stops=("TERM",),
                    broker_down_s=8.0, registry_stops=1, registry_down_s=8.0, store_outages=1, store_down_s=10.0,
                    data_path_outages=1, scale_events=1, bad_every=3),
    "full": Size("full", DEFAULT_FILES, window=600, chunk=60, speed=240.0, max_candles=4300,
                 kills_per_service=3,
                 failpoints=("after_model_files", "after_fence", "after_manifest", "after_rows", "after_publish"),
                 commit_kills=(("coordinator", "before_commit"), ("coordinator", "after_commit"),
                               ("pivots", "before_commit"), ("inference", "before_commit")),
                 rebalance_kills=2, broker_stops=("TERM", "KILL"), broker_down_s=15.0, registry_stops=2,
                 registry_down_s=15.0, store_outages=2, store_down_s=20.0, data_path_outages=2, scale_events=2,
                 bad_every=2),
}

#: Service settings of the campaign (besides INFERENCE_WINDOW), and why.
CAMPAIGN_ENV: dict[str, str] = {
    "INGEST_DERIVE": "",  # 1m only: less load on a 2-core box, the same code paths
    "INGEST_PROGRESS": "off",
    "INGEST_EXIT_WHEN_DONE": "true",
    "TRAINER_CHECKPOINT_JOBS": "128",  # checkpoints often, so kills land in and around them
    "TRAINER_CHECKPOINT_SECONDS": "5",
    "TRAINER_TORCH_THREADS": "1",
    "INFERENCE_TORCH_THREADS": "1",
}


# -- the private stack ------------------------------------------------------------------------------
class PrivateStack:
    """deploy/local/stack.sh on its own folder and ports. Ports are kept in ``ports.json`` so a kept
    stack (``--keep-stack``) can be reused by the next campaign (``--stack-dir``)."""

    PORTS = ("KAFKA", "CONTROLLER", "REGISTRY", "REGISTRY_MGMT", "PG")

    def __init__(self, root: Path | None = None) -> None:
        self.owned_dir = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="reftrain-faults-"))
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # PostgreSQL runs as its own OS user and must reach its data dir
        saved = self.root / "ports.json"
        if saved.is_file():
            self.ports: dict[str, int] = json.loads(saved.read_text())
        else:
            self.ports = {p: free_port() for p in self.PORTS}
            saved.write_text(json.dumps(self.ports))
        self.started_here = False

    @property
    def state(self) -> Path:
        return self.root / "stack"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REFTRAIN_")}
        env.update({f"REFTRAIN_{k}_PORT": str(v) for k, v in self.ports.items()})
        env.update({"REFTRAIN_STACK_DIR": str(self.state), "PYTHON": sys.executable})
        for k in ("KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL", "STORE_CATALOG", "STORE_DATA_PATH"):
            env.pop(k, None)  # never let the shared stack's variables leak into this one
        return env

    def command(self, cmd: str) -> subprocess.Popen[str]:
        return subprocess.Popen([str(STACK), cmd], env=self.env(), text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, cwd=REPO)

    def run(self, cmd: str, timeout: float = 600.0) -> tuple[int, str]:
        p = self.command(cmd)
        out, _ = p.communicate(timeout=timeout)
        return p.returncode, out

    def running(self) -> bool:
        return self.run("status", 60)[0] == 0

    def up(self) -> None:
        if self.running():
            return
        rc, out = self.run("up")
        if rc != 0:
            raise CampaignError(f"private stack did not start (stack.sh up exit {rc}):\n{out[-3000:]}")
        self.started_here = True

    def platform_env(self) -> dict[str, str]:
        _rc, out = self.run("env", 60)
        return parse_stack_env(out)

    def pid(self, component: str) -> int | None:
        try:
            pid = int((self.state / f"{component}.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def stop_component(self, component: str, sig: signal.Signals = signal.SIGTERM, timeout: float = 60.0) -> None:
        """Stop the broker or the registry of this stack only (by the pid stack.sh recorded)."""
        pid = self.pid(component)
        if pid is None:
            raise CampaignError(f"{component} of the private stack is not running")
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)

    def psql(self, sql: str) -> None:
        psql = shutil.which("psql") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"), reverse=True)),
                                            None)
        if psql is None:
            raise CampaignError("psql not found")
        res = subprocess.run([psql, "-q", "-h", "127.0.0.1", "-p", str(self.ports["PG"]), "-U", "postgres", "-d",
                              "postgres", "-c", sql], capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise CampaignError(f"psql failed: {res.stderr.strip()}")

    def down(self, remove: bool) -> None:
        with contextlib.suppress(Exception):
            self.run("down", 180)
        if remove and self.owned_dir:
            shutil.rmtree(self.root, ignore_errors=True)


class CampaignError(Exception):
    """The campaign cannot run (stack, data): exit 2."""


def set_immutable(path: Path, on: bool) -> None:
    """``chattr -R +i`` / ``-i``: nobody, root included, may create, change or delete under ``path``."""
    res = subprocess.run(["chattr", "-R", "-f", "+i" if on else "-i", str(path)], capture_output=True, text=True,
                         timeout=120)
    if res.returncode != 0 and on:
        raise CampaignError(f"chattr +i {path} failed: {res.stderr.strip()}")


def immutable_supported(scratch: Path) -> bool:
    """Whether ``chattr +i`` works here (ext4/xfs and CAP_LINUX_IMMUTABLE) and really stops a write."""
    probe = scratch / f".immutable-probe-{uuid.uuid4().hex[:6]}"
    probe.mkdir(parents=True, exist_ok=True)
    try:
        if shutil.which("chattr") is None:
            return False
        set_immutable(probe, True)
        try:
            (probe / "x").write_text("x")
            return False
        except OSError:
            return True
    except CampaignError:
        return False
    finally:
        set_immutable(probe, False)
        shutil.rmtree(probe, ignore_errors=True)


def _git_state() -> dict[str, str]:
    """Which code the campaign ran (read-only git queries)."""
    out = {}
    for key, args in (("commit", ["rev-parse", "HEAD"]), ("changed files", ["status", "--porcelain"])):
        with contextlib.suppress(Exception):
            res = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
            out[key] = res.stdout.strip() if key == "commit" else str(len(res.stdout.splitlines()))
    return out


# -- supervised processes ----------------------------------------------------------------------------
CODE = ("reftrain", "services", "schemas")


def snapshot_code(dest: Path) -> Path:
    """Copy the code the services run (reftrain/, services/, schemas/) into ``dest``: every restart
    during the campaign then runs the same code, even while the working tree changes (a restart
    that picked up an edited changelog topic name once lost the services' state mid-campaign)."""
    for name in CODE:
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                        dirs_exist_ok=True)
    return dest


@dataclass
class SnapshotProcess(ServiceProcess):
    """ops.procs.ServiceProcess, started from the campaign's code snapshot instead of the work tree."""

    code_dir: Path = REPO

    def start(self) -> None:
        from ops.procs import _die_with_parent

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in close_log()
        env = {**self.env, "PYTHONPATH": str(self.code_dir)}
        self.proc = subprocess.Popen([sys.executable, "-m", self.stage.module], cwd=self.code_dir, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        self.started_at = time.time()


@dataclass
class Exit:
    at: float
    instance: str
    code: int | None
    planned: bool
    liveness: bool = False  # killed by the emulated liveness probe (the service was stuck)


@dataclass
class Instance:
    """A supervised service instance. ``planned`` marks an exit the campaign caused (kill -9, a
    failpoint, a removal): restarted at once (or not at all, ``keep`` False) and not a crash."""

    proc: ServiceProcess
    base_env: dict[str, str]
    keep: bool = True
    planned: bool = False
    once_env: dict[str, str] = field(default_factory=dict)
    restart_at: float | None = None
    backoff: float = 1.0
    started: float = 0.0
    done: bool = False  # an ingest chunk that finished (exit 0)
    live_failures: int = 0
    liveness_kill: bool = False
    next_probe: float = 0.0
    answered: bool = False  # /healthz answered once since the start (the startup probe passed)

    @property
    def name(self) -> str:
        return self.proc.instance

    def start(self) -> None:
        self.proc.close_log()
        self.proc.env = {**self.base_env, **self.once_env}
        self.once_env = {}
        self.proc.start()
        self.started = time.monotonic()
        self.restart_at = None
        self.live_failures = 0
        self.answered = False
        self.next_probe = self.started + LIVENESS_PERIOD_S


# -- results ----------------------------------------------------------------------------------------
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


# -- the campaign -----------------------------------------------------------------------------------
class Campaign:
    """One campaign run on one private stack; see the module docstring."""

    def __init__(self, size: Size, stack: PrivateStack, out_dir: Path, seed: int, log: Callable[[str], None]) -> None:
        self.size = size
        self.stack = stack
        self.out = out_dir
        self.rng = random.Random(seed)
        self.seed = seed
        self.say = log
        self.run_id = out_dir.name
        self.instances: dict[str, Instance] = {}
        self.exits: list[Exit] = []
        self.injections: list[Injection] = []
        self.chunks: list[dict[str, Any]] = []
        self.next_chunk = 0
        self.feeding = True
        self.ingest: Instance | None = None
        self.bad: list[dict[str, Any]] = []
        self.fed: dict[str, list[int]] = defaultdict(list)  # series -> open_times handed to ingest
        self.platform: PlatformSettings | None = None
        self.probe: KafkaView | None = None
        self.code = REPO
        self.git: dict[str, str] = {}
        self.base_env: dict[str, str] = {}
        self.t0 = time.time()

    # -- set-up --------------------------------------------------------------------------------
    def setup(self) -> None:
        env = self.stack.platform_env()
        base = settings_mod.platform(env)
        db = "faults_" + uuid.uuid4().hex[:12]
        self.platform = PlatformSettings(**{
            **asdict(base), "topic_prefix": f"{self.run_id}-", "store_catalog": fresh_catalog(base.store_catalog, db),
            "store_data_path": str(self.out / "lake"), "http_port": 0})
        self.base_env = dict(os.environ)
        for k in ("KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL", "STORE_CATALOG", "STORE_DATA_PATH"):
            self.base_env.pop(k, None)
        self.probe = KafkaView(self.platform, timeout=5.0)
        init_cluster.prepare(self.platform, self.probe.admin)  # topics + schemas (services never register)
        self.code = snapshot_code(self.out / "code")
        self.git = _git_state()
        self._prepare_chunks()

    def _prepare_chunks(self) -> None:
        """Chunk 0: the first ``window - 1`` candles of each series, unpaced (no prediction can be
        made before a full window); then ``chunk`` candles per series per paced chunk."""
        series_rows: list[tuple[str, str, list[str], list[list[str]]]] = []
        for f in self.size.files:
            src = DATA / f
            with open(src, newline="") as fh:
                reader = csv.reader(fh)
                header = next(reader)
                rows = list(reader)[: self.size.max_candles]
            symbol, tf = src.name.split("-")[:2]
            series_rows.append((symbol, tf, header, rows))
        warm = self.size.window - 1
        n = min(len(r) for *_, r in series_rows)
        bounds = [(0, warm)] + [(a, min(a + self.size.chunk, n)) for a in range(warm, n, self.size.chunk)]
        for k, (a, b) in enumerate(bounds):
            folder = self.out / "data" / f"chunk{k:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            files = []
            times: dict[str, list[int]] = {}
            for symbol, tf, header, rows in series_rows:
                path = folder / f"{symbol}-{tf}-chunk{k:04d}.csv"
                with open(path, "w", newline="") as fh:
                    w = csv.writer(fh, lineterminator="\n")
                    w.writerow(header)
                    w.writerows(rows[a:b])
                files.append(str(path))
                times[series_key(symbol, tf)] = [int(r[0]) for r in rows[a:b]]
            self.chunks.append({"files": files, "speed": 0.0 if k == 0 else self.size.speed, "times": times})

    def _env(self, instance: str, port: int, extra: dict[str, str]) -> dict[str, str]:
        assert self.platform is not None
        return service_env(self.base_env, self.platform, f"{self.platform.topic_prefix}{instance}", port,
                           {**CAMPAIGN_ENV, "INFERENCE_WINDOW": str(self.size.window), **extra})

    def add(self, stage: str, instance: str, extra: dict[str, str] | None = None, keep: bool = True) -> Instance:
        port = free_port()
        env = self._env(instance, port, extra or {})
        proc = SnapshotProcess(BY_NAME[stage], instance, port, self.out / "logs" / f"{instance}.log", env,
                               code_dir=self.code)
        inst = Instance(proc, env, keep=keep)
        self.instances[instance] = inst
        inst.start()
        return inst

    # -- supervision ---------------------------------------------------------------------------
    def tick(self) -> None:
        """Restart exited services (at once after a planned exit, with back-off otherwise) and keep
        the replay going: the next ingest chunk starts when the previous one exited 0."""
        now = time.monotonic()
        for inst in list(self.instances.values()):
            if inst.done:
                continue
            if inst.proc.running():
                if now - inst.started > 60:
                    inst.backoff = 1.0
                if now >= inst.next_probe:
                    self._liveness(inst, now)
                continue
            if inst.restart_at is None:
                rc = inst.proc.returncode()
                is_chunk = inst.proc.stage.replay
                if is_chunk and rc == 0 and not inst.planned:
                    inst.done = True
                    self.exits.append(Exit(time.time(), inst.name, rc, True))
                    continue
                self.exits.append(Exit(time.time(), inst.name, rc, inst.planned, inst.liveness_kill))
                inst.liveness_kill = False
                if inst.planned:
                    inst.planned = False
                    if not inst.keep:
                        inst.done = True
                        continue
                    inst.restart_at = now
                else:
                    self.say(f"  ! {inst.name} exited unplanned ({rc}); restarting in {inst.backoff:.0f} s")
                    inst.restart_at = now + inst.backoff
                    inst.backoff = min(inst.backoff * 2, 30.0)
            if inst.restart_at is not None and now >= inst.restart_at:
                inst.start()
        self._feed()

    def _liveness(self, inst: Instance, now: float) -> None:
        """One probe of the emulated Kubernetes liveness check (see LIVENESS_*)."""
        import urllib.request

        inst.next_probe = now + LIVENESS_PERIOD_S
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{inst.proc.port}/healthz", timeout=5) as r:
                ok = r.status == 200
            inst.answered = True
        except Exception:
            ok = False
        if ok:
            inst.live_failures = 0
            return
        if not inst.answered and now - inst.started < STARTUP_GRACE_S:
            return
        inst.live_failures += 1
        if inst.live_failures >= LIVENESS_FAILURES:
            self.say(f"  ! {inst.name}: /healthz failed {inst.live_failures} times: liveness restart")
            inst.liveness_kill = True
            inst.proc.signal(signal.SIGKILL)

    def _feed(self) -> None:
        if self.ingest is not None and not self.ingest.done:
            return
        if not self.feeding or self.next_chunk >= len(self.chunks):
            return
        k = self.next_chunk
        self.next_chunk += 1
        chunk = self.chunks[k]
        for s, ts in chunk["times"].items():
            self.fed[s].extend(ts)
        self.ingest = self.add("ingest", f"ingest-{k:04d}", {"INGEST_FILES": ",".join(chunk["files"]),
                                                          "INGEST_SPEED": str(chunk["speed"])})

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            self.tick()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.25, left))

    def wait(self, cond: Callable[[], bool], timeout: float, every: float = 1.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return True
            self.sleep(every)
        return cond()

    def consumers(self) -> list[Instance]:
        return [i for i in self.instances.values() if not i.proc.stage.replay and not i.done]

    def all_ready(self) -> bool:
        return not self._not_ready()

    # -- progress --------------------------------------------------------------------------------
    def progress(self, stages: Sequence[str]) -> dict[str, int]:
        """Committed offsets per consumer group (summed over its inputs); ingest: candles end offsets."""
        assert self.probe is not None and self.platform is not None
        cat = TopicCatalogue(self.platform)
        out: dict[str, int] = {}
        for s in stages:
            try:
                if s == "ingest":
                    out[s] = sum(self.probe.end_offsets([cat.name(CANDLES)]).values())
                else:
                    topics = [cat.name(t) for t in INPUTS[s]]
                    out[s] = sum(self.probe.committed(f"{self.platform.topic_prefix}{s}", topics).values())
            except Exception:
                out[s] = -1
        return out

    def wait_recovered(self, inj: Injection, stages: Sequence[str]) -> None:
        """Recovered = every service ready again and each of ``stages`` committed new progress after
        the end of the fault (a stage's baseline is its first readable value from then on: right
        after a broker restart the group coordinator may not answer yet)."""
        stages = [s for s in stages if s != "ingest" or (self.ingest is not None and not self.ingest.done)]
        base: dict[str, int] = {}
        moved: set[str] = set()
        last_report = time.monotonic()

        def ok() -> bool:
            nonlocal last_report
            now = self.progress([s for s in stages if s not in moved])
            for st, v in now.items():
                if v < 0:
                    continue
                if st not in base:
                    base[st] = v
                elif v > base[st]:
                    moved.add(st)
            ready = self.all_ready()
            if time.monotonic() - last_report > 30:
                last_report = time.monotonic()
                self.say(f"    waiting: no progress yet from {sorted(set(stages) - moved)}; "
                         f"not ready: {[i.name for i in self._not_ready()]}")
            return moved >= set(stages) and ready

        if self.wait(ok, self.size.recovery_timeout_s):
            inj.recovered = time.time()
        else:
            inj.note = (inj.note + f"; not recovered after {self.size.recovery_timeout_s:.0f} s "
                        f"(no progress: {sorted(set(stages) - moved)}, not ready: "
                        f"{[i.name for i in self._not_ready()]})").lstrip("; ")
        self.say(f"  {inj.kind}: {inj.detail} -> "
                 + (f"recovered in {inj.recovery_s} s" if inj.recovery_s is not None else f"NOT RECOVERED: {inj.note}"))

    def _not_ready(self) -> list[Instance]:
        insts = self.consumers()
        if self.ingest is not None and not self.ingest.done:
            insts.append(self.ingest)
        return [i for i in insts if not (i.proc.running() and i.proc.ready())]

    # -- faults ----------------------------------------------------------------------------------
    def kill(self, inst: Instance) -> None:
        inst.planned = True
        inst.proc.signal(signal.SIGKILL)
        if inst.proc.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                inst.proc.proc.wait(10)
        self.tick()  # restarted at once, as an orchestrator would

    def fault_kill(self, stage: str) -> None:
        if stage == "ingest":
            self.wait(lambda: self.ingest is not None and not self.ingest.done and self.ingest.proc.running(), 60, 0.2)
            inst = self.ingest
            if inst is None or inst.done:
                self.say("  (no ingest chunk running: replay finished)")
                return
        else:
            inst = self.instances["trainer-1" if stage == "trainer" else stage]
        self.sleep(self.rng.uniform(0.0, 3.0))  # a random moment under load
        t = time.time()
        self.kill(inst)
        inj = Injection(f"kill -9 {stage}", inst.name, t, time.time())
        self.injections.append(inj)
        self.wait_recovered(inj, [stage])

    def fault_checkpoint(self, stage: str) -> None:
        """kill -9 INSIDE a trainer checkpoint: the trainer is restarted (gracefully) with
        TRAINER_FAILPOINT, which SIGKILLs it the first time a checkpoint reaches ``stage``; the
        supervisor then restarts it without the failpoint."""
        self._failpoint_kill(self.instances["trainer-1"], "trainer", {"TRAINER_FAILPOINT": f"{stage}:1"},
                             "kill -9 trainer inside a checkpoint", stage)

    def fault_commit(self, service: str, stage: str) -> None:
        """kill -9 INSIDE a Kafka transaction commit of a stream service: restarted (gracefully)
        with FAILPOINT (reftrain.streams.FAILPOINT_STAGES), which SIGKILLs it at its first commit
        after the restart, at ``stage``: before_commit (outputs, state and offsets sent, commit not
        requested) or after_commit (commit acknowledged). The restart fences and aborts it."""
        self._failpoint_kill(self.instances[service], service, {"FAILPOINT": f"{stage}:1"},
                             f"kill -9 {service} inside a transaction commit", stage)

    def _failpoint_kill(self, inst: Instance, stage_name: str, env: dict[str, str], kind: str, detail: str) -> None:
        """Restart ``inst`` with a failpoint ``env``; wait for its SIGKILL (then it is restarted
        without it, as any killed instance); record the injection, or why it did not happen."""
        inst.once_env = env
        inst.planned = True
        inst.proc.signal(signal.SIGTERM)
        if inst.proc.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                inst.proc.proc.wait(90)
        self.tick()  # restarted with the failpoint
        inst.planned = True  # its next exit is the failpoint's SIGKILL (or ours, below)
        seen = len(self.exits)

        def exited() -> bool:
            return any(e.instance == inst.name for e in self.exits[seen:])

        if self.wait(exited, 180, 0.2):
            e = next(e for e in self.exits[seen:] if e.instance == inst.name)
            if e.code == -signal.SIGKILL:
                inj = Injection(kind, detail, e.at, time.time())
                self.injections.append(inj)
                self.wait_recovered(inj, [stage_name])
                return
            note = f"exited with {e.code} before reaching the failpoint"
        else:
            note = "the failpoint was not reached in 180 s"
            inst.planned = True
            inst.proc.signal(signal.SIGKILL)  # restart without the failpoint
            self.tick()
        self.say(f"  failpoint {detail} not triggered: {note}")
        self.injections.append(Injection(kind, detail, time.time(), time.time(), triggered=False, note=note))

    def fault_rebalance_kill(self, n: int) -> None:
        """A replica joins (the group rebalances: the owner checkpoints on revoke) and the owner is
        killed -9 in the middle of it; the replica leaves again afterwards."""
        extra = self.add("trainer", f"trainer-rb{n}")
        self.wait(lambda: extra.proc.running() and extra.proc.ready(), 180, 0.5)
        self.sleep(self.rng.uniform(0.0, 2.0))
        t = time.time()
        self.kill(self.instances["trainer-1"])
        inj = Injection("kill -9 trainer during a rebalance", f"trainer-1 while trainer-rb{n} joins", t, time.time())
        self.injections.append(inj)
        self.wait_recovered(inj, ["trainer"])
        self._remove(extra)

    def _remove(self, inst: Instance) -> None:
        inst.planned = True
        inst.keep = False
        inst.proc.signal(signal.SIGTERM)
        self.wait(lambda: not inst.proc.running(), 90, 0.5)
        if inst.proc.running():
            inst.proc.signal(signal.SIGKILL)
        self.tick()

    def fault_scale(self, n: int) -> None:
        t = time.time()
        extra = self.add("trainer", f"trainer-{n + 2}")
        self.wait(lambda: extra.proc.running() and extra.proc.ready(), 180, 0.5)
        self.sleep(self.rng.uniform(5.0, 10.0))
        self._remove(extra)
        inj = Injection("trainer replica added and removed", f"trainer-{n + 2}", t, time.time())
        self.injections.append(inj)
        self.wait_recovered(inj, ["trainer"])

    def _stack_up(self) -> None:
        """stack.sh up (starts only what is down) while the supervisor keeps ticking."""
        p = self.stack.command("up")
        deadline = time.monotonic() + 600
        while p.poll() is None and time.monotonic() < deadline:
            self.sleep(0.5)
        if p.poll() is None:
            p.kill()
        out = p.stdout.read() if p.stdout else ""
        if p.returncode != 0:
            raise CampaignError(f"private stack did not come back: {out[-2000:]}")

    def fault_broker(self, sig_name: str) -> None:
        t = time.time()
        self.stack.stop_component("kafka", signal.Signals[f"SIG{sig_name}"])
        self.sleep(self.size.broker_down_s)
        self._stack_up()
        inj = Injection("broker stop + restart", f"SIG{sig_name}, down {time.time() - t:.0f} s", t, time.time())
        self.injections.append(inj)
        self.wait_recovered(inj, ["ingest", *CONSUMERS])

    def fault_registry(self) -> None:
        t = time.time()
        self.stack.stop_component("registry")
        self.sleep(self.size.registry_down_s / 2)
        self.kill(self.instances["coordinator"])  # a restart must cope: no schema cache, no registry
        self.sleep(self.size.registry_down_s / 2)
        self._stack_up()
        inj = Injection("schema registry stop + restart", f"down {time.time() - t:.0f} s, coordinator restarted "
                        "while it was down", t, time.time())
        self.injections.append(inj)
        self.wait_recovered(inj, ["ingest", *CONSUMERS])

    def fault_store(self) -> None:
        """The store's catalog database refuses connections and its sessions are terminated (the
        DuckLake data files stay): every store read and write fails until it is allowed again."""
        assert self.platform is not None
        db = self.platform.store_catalog.split("dbname=")[1].split()[0]
        t = time.time()
        self.stack.psql(f"ALTER DATABASE {db} ALLOW_CONNECTIONS false")
        self.stack.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'")
        self.sleep(self.size.store_down_s)
        self.stack.psql(f"ALTER DATABASE {db} ALLOW_CONNECTIONS true")
        inj = Injection("store unavailable", f"catalog database refused connections {time.time() - t:.0f} s", t,
                        time.time())
        self.injections.append(inj)
        self.wait_recovered(inj, ["ingest", *CONSUMERS])

    def fault_data_path(self) -> None:
        """The store's data path (DuckLake Parquet files, trainer checkpoints) becomes read-only for
        everyone: ``chattr +i`` (immutable), which binds root too, where ``chmod`` does not. The
        catalog stays up, so small inlined writes go on while file writes fail."""
        assert self.platform is not None
        lake = Path(self.platform.store_data_path)
        t = time.time()
        if not immutable_supported(self.out):
            self.injections.append(Injection("store data path read-only", "chattr +i not supported here", t, t,
                                             triggered=False, note="not injected: no chattr +i on this file system"))
            return
        set_immutable(lake, True)
        try:
            self.sleep(self.size.store_down_s)
        finally:
            set_immutable(lake, False)
        inj = Injection("store data path read-only", f"data path immutable (chattr +i) {time.time() - t:.0f} s", t,
                        time.time())
        self.injections.append(inj)
        self.wait_recovered(inj, ["ingest", *CONSUMERS])

    # -- bad input -------------------------------------------------------------------------------
    def inject_bad(self) -> None:
        """A NaN candle and undecodable bytes on candles, a corrupt training job: each must reach the
        DLQ of every consumer of its topic (exactly once for the transactional stream services)."""
        assert self.platform is not None
        cat = TopicCatalogue(self.platform)
        serde = Serdes(self.platform, cat).for_topic(CANDLES)
        key = series_key("BTCUSDT", "1m")
        t = self.fed[key][-1] if self.fed.get(key) else 1_761_709_440_000
        bad_candle = {"symbol": "BTCUSDT", "timeframe": "1m", "open_time": t, "close_time": t + 59_999,
                      "open": 1.0, "high": 2.0, "low": 0.5, "close": math.nan, "volume": 1.0, "trades": 1,
                      "source": "faults"}
        producer = Producer(producer_config(self.platform, log_level=2))
        landed: list[tuple[str, int, int]] = []

        def report(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                landed.append((msg.topic() or "", msg.partition() or 0, msg.offset() or 0))

        msgs = [(cat.name(CANDLES), serde.encode(bad_candle), "InvalidRecordError/non_finite_price"),
                (cat.name(CANDLES), b"\x00\x00\x00\x00\x01garbage", "DecodeError"),
                (cat.name(TRAINING_JOBS), b"\x00\x00\x00\x00\x02truncated", "DecodeError")]
        for topic, value, why in msgs:
            landed.clear()
            producer.produce(topic, key=key.encode(), value=value, on_delivery=report)
            producer.flush(30)
            if landed:
                logical = cat.logical_of(landed[0][0])
                self.bad.append({"topic": logical, "partition": landed[0][1], "offset": landed[0][2], "what": why})

    # -- schedule -------------------------------------------------------------------------------
    def schedule(self) -> list[tuple[str, Callable[[], None]]]:
        s = self.size
        faults: list[tuple[str, Callable[[], None]]] = []
        for _ in range(s.kills_per_service):
            for stage in ("ingest", *CONSUMERS):
                faults.append((f"kill {stage}", lambda st=stage: self.fault_kill(st)))  # type: ignore[misc]
        for fp in s.failpoints:
            faults.append((f"checkpoint {fp}", lambda f=fp: self.fault_checkpoint(f)))  # type: ignore[misc]
        for svc, stage in s.commit_kills:
            faults.append((f"commit {svc} {stage}",
                           lambda v=svc, g=stage: self.fault_commit(v, g)))  # type: ignore[misc]
        for n in range(s.rebalance_kills):
            faults.append(("rebalance kill", lambda n=n: self.fault_rebalance_kill(n)))  # type: ignore[misc]
        for sig in s.broker_stops:
            faults.append(("broker", lambda g=sig: self.fault_broker(g)))  # type: ignore[misc]
        for _ in range(s.registry_stops):
            faults.append(("registry", self.fault_registry))
        for _ in range(s.store_outages):
            faults.append(("store", self.fault_store))
        for _ in range(s.data_path_outages):
            faults.append(("data path", self.fault_data_path))
        for n in range(s.scale_events):
            faults.append(("scale", lambda n=n: self.fault_scale(n)))  # type: ignore[misc]
        self.rng.shuffle(faults)
        return faults

    # -- the run ---------------------------------------------------------------------------------
    def execute(self) -> None:
        self.setup()
        for stage in ("pivots", "inference", "coordinator"):
            self.add(stage, stage)
        self.add("trainer", "trainer-1")
        self.say(f"starting services (logs: {self.out / 'logs'})")
        if not self.wait(lambda: all(i.proc.ready() for i in self.consumers()), 300):
            raise CampaignError("services not ready after 300 s: " + ", ".join(
                f"{i.name}: {i.proc.log_tail(5)}" for i in self.consumers() if not i.proc.ready()))
        self.tick()  # chunk 0 (the unpaced warm-up) starts
        self.wait(lambda: self.next_chunk >= 2, 600)  # the paced replay is on: the loop is under load
        self.sleep(10)
        faults = self.schedule()
        for n, (name, fn) in enumerate(faults):
            self.sleep(self.rng.uniform(*self.size.settle_s))
            if n % self.size.bad_every == 0:
                self.inject_bad()
            self.say(f"[{n + 1}/{len(faults)}] {name} (replay chunk {self.next_chunk}/{len(self.chunks)})")
            if self.next_chunk >= len(self.chunks) and (self.ingest is None or self.ingest.done):
                self.say("  (the replay is over: this fault runs without load)")
            fn()
        self.inject_bad()
        self.say("faults done; one more chunk of load, then draining")
        last = self.next_chunk
        self.wait(lambda: self.next_chunk > last or self.next_chunk >= len(self.chunks), 120)
        self.feeding = False
        self.wait(lambda: self.ingest is None or self.ingest.done, 600)
        self.drain()

    def drain(self, idle_s: float = 15.0, timeout: float = 900.0) -> None:
        assert self.probe is not None and self.platform is not None
        probe, prefix = self.probe, self.platform.topic_prefix
        cat = TopicCatalogue(self.platform)
        last: dict[Any, int] = {}
        changed = time.monotonic()

        def drained() -> bool:
            nonlocal last, changed
            try:
                ends = probe.end_offsets(probe.topics_with_prefix(prefix))
                if ends != last:
                    last, changed = ends, time.monotonic()
                    return False
                if time.monotonic() - changed < idle_s:
                    return False
                return all(probe.effective_lag(f"{prefix}{s}", [cat.name(t) for t in INPUTS[s]], timeout=20.0) == 0
                           for s in CONSUMERS)
            except Exception:
                return False

        if not self.wait(drained, timeout, 2.0):
            self.say(f"WARNING: not drained after {timeout:.0f} s")

    def final_health(self) -> list[str]:
        """Crash loops: a service not running, not live or not ready at the end, or exiting unplanned
        again after the last fault was over (the end of the campaign's faults + 60 s)."""
        problems = []
        for i in self.consumers():
            if not i.proc.running():
                problems.append(f"{i.name}: not running (exit {i.proc.returncode()})")
                continue
            try:
                import urllib.request

                with urllib.request.urlopen(f"http://127.0.0.1:{i.proc.port}/healthz", timeout=3) as r:
                    live = r.status == 200
            except Exception:
                live = False
            if not live or not i.proc.ready():
                problems.append(f"{i.name}: /healthz {'ok' if live else 'FAIL'}, /readyz "
                                f"{'ok' if i.proc.ready() else 'FAIL'}")
        quiet_after = max((j.recovered or j.end) for j in self.injections) + 60 if self.injections else 0
        late = Counter(e.instance for e in self.exits if not e.planned and e.at > quiet_after)
        problems.extend(f"{name}: {n} unplanned exits after the faults were over" for name, n in late.items())
        return problems

    def stop_all(self) -> None:
        insts = [i for i in self.instances.values() if i.proc.running()]
        for i in insts:
            i.planned = True
            i.proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(i.proc.running() for i in insts):
            time.sleep(0.3)
        for i in insts:
            if i.proc.running():
                i.proc.signal(signal.SIGKILL)
            if i.proc.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    i.proc.proc.wait(10)
            i.proc.close_log()
        if self.probe is not None:
            self.probe.close()
            self.probe = None


# -- analysis -----------------------------------------------------------------------------------------
def _window_of(injs: Sequence[Injection], t: float, pre: float = 2.0, post: float = 5.0) -> Injection | None:
    """The fault active when something became possible at wall time ``t`` (the latest one started)."""
    best = None
    for j in injs:
        end = (j.recovered if j.recovered is not None else j.end + 240.0) + post
        if j.start - pre <= t <= end and (best is None or j.start > best.start):
            best = j
    return best


def analyse(c: Campaign, crash_loops: list[str]) -> Result:
    from ops.analysis import Analysis
    from ops.report import collect
    from services.coordinator.oracle import batch_join
    from services.coordinator.settings import load as coordinator_settings
    from services.trainer.config import group_id as trainer_group
    from services.trainer.lineage import lineage_job_ids, read_manifest

    assert c.platform is not None
    platform = c.platform
    env = {**CAMPAIGN_ENV}
    join = coordinator_settings(env).join_config()
    inp = collect(platform, stages_run=dict.fromkeys(("ingest", *CONSUMERS), True), join_config=join, read_store=False)
    a = Analysis(inp)
    eo = a.exactly_once()
    pivots = a.pivot_check()
    msgs = inp.messages
    def first(ms: list[Msg], key: Callable[[dict[str, Any]], Any]) -> dict[Any, Msg]:
        out: dict[Any, Msg] = {}
        for m in sorted(ms, key=lambda m: (m.partition, m.offset)):
            if m.value is not None:
                out.setdefault(key(m.value), m)
        return out

    refs = first(msgs[INFERENCE_REFS], lambda v: v["inference_id"])
    candles = first(msgs[CANDLES], lambda v: (series_key(v["symbol"], v["timeframe"]), v["open_time"]))
    piv = first(msgs[PIVOTS], lambda v: v["pivot_id"])
    by_series: dict[str, tuple[list[Any], list[Any], list[Any]]] = defaultdict(lambda: ([], [], []))
    for t, idx in ((INFERENCE_REFS, 0), (CANDLES, 1), (PIVOTS, 2)):
        for m in sorted(msgs[t], key=lambda m: (m.partition, m.offset)):
            if m.value is not None:
                by_series[series_key(m.value["symbol"], m.value["timeframe"])][idx].append(m.value)
    oracle: dict[str, dict[str, Any]] = {}
    for rs, cs, ps in by_series.values():
        if rs:
            for job in batch_join(rs, cs, ps, join):
                oracle[job["job_id"]] = dict(job)
    emitted = Counter((m.value or {})["job_id"] for m in msgs[TRAINING_JOBS] if m.value is not None)
    job_val = {(m.value or {})["job_id"]: m.value for m in msgs[TRAINING_JOBS] if m.value is not None}

    def join_time(jid: str) -> float:
        j = oracle.get(jid) or job_val.get(jid) or {}
        ref = refs.get(j.get("ref", {}).get("inference_id"))
        times = [ref.timestamp] if ref is not None else []
        s = series_key(j["ref"]["symbol"], j["ref"]["timeframe"]) if j else ""
        if j.get("trigger") == "CANDLE":
            cm = candles.get((s, j["ref"]["target_timestamp"]))
            times += [cm.timestamp] if cm is not None else []
        elif j.get("pivot"):
            pm = piv.get(j["pivot"]["pivot_id"])
            times += [pm.timestamp] if pm is not None else []
        return max(times) / 1000.0 if times else c.t0

    # trainer: surviving lineages and what it dead-lettered
    topic = TopicCatalogue(platform).name(TRAINING_JOBS)
    lineage: Counter[str] = Counter()
    data = Path(platform.store_data_path)
    folder = data / "checkpoints" / "trainer"
    for path in sorted(folder.glob("*/*/p*.json")):
        man = read_manifest(path)
        if man is None or man.group != trainer_group(platform.topic_prefix) or man.topic != topic:
            continue
        for entry in man.models.values():
            lineage.update(lineage_job_ids(data, entry.checkpoint_path))
    cat = TopicCatalogue(platform)
    serdes = Serdes(platform, cat)
    job_serde = serdes.for_topic(TRAINING_JOBS)
    dlq = {t: read_topic(platform, cat.dlq(t), None).messages for t in (CANDLES, TRAINING_JOBS)}
    rejected: set[str] = set()
    for value in _raw_values(platform, cat.dlq(TRAINING_JOBS)):
        with contextlib.suppress(Exception):
            rejected.add(job_serde.decode(value)["job_id"])

    # rows
    kinds: list[str] = []
    for j in c.injections:
        if j.kind not in kinds:
            kinds.append(j.kind)
    rows = {k: Row(k) for k in [*kinds, "(no fault active)"]}
    for j in c.injections:
        r = rows[j.kind]
        if j.triggered:
            r.injected += 1
            if j.recovered is None:
                r.not_recovered += 1
    for k, r in rows.items():
        recs = [j.recovery_s for j in c.injections if j.kind == k and j.recovery_s is not None]
        if recs:
            r.recovery_max_s = max(recs)
            r.recovery_median_s = round(statistics.median(recs), 1)

    def row_of(t: float) -> Row:
        w = _window_of(c.injections, t)
        return rows[w.kind] if w is not None else rows["(no fault active)"]

    for jid in set(oracle) | set(emitted):
        r = row_of(join_time(jid))
        if jid in oracle:
            r.expected += 1
            if jid in emitted:
                r.seen += 1
            else:
                r.lost += 1
        else:
            r.extra += 1
            r.seen += 1
        r.duplicated += max(0, emitted.get(jid, 0) - 1)
        if lineage.get(jid, 0) > 1:
            r.trained_twice += lineage[jid] - 1
        if jid in emitted and jid not in lineage and jid not in rejected:
            r.not_trained += 1
    for e in c.exits:
        if e.liveness:
            row_of(e.at).hung += 1
        elif not e.planned:
            row_of(e.at).crashes += 1
    totals = Row("TOTAL")
    for r in rows.values():
        for f in ("injected", "expected", "seen", "lost", "duplicated", "extra", "trained_twice", "not_trained",
                  "crashes", "hung", "not_recovered"):
            setattr(totals, f, getattr(totals, f) + getattr(r, f))
    recs_all = [j.recovery_s for j in c.injections if j.recovery_s is not None]
    if recs_all:
        totals.recovery_max_s = max(recs_all)
        totals.recovery_median_s = round(statistics.median(recs_all), 1)

    # upstream integrity
    up: dict[str, dict[str, int]] = {}
    fed = {s: sorted(set(ts)) for s, ts in c.fed.items()}
    cand_msgs = Counter((series_key((m.value or {})["symbol"], (m.value or {})["timeframe"]), (m.value or {})[
        "open_time"]) for m in msgs[CANDLES] if m.value is not None and m.key == series_key(
        (m.value or {})["symbol"], (m.value or {})["timeframe"]))
    want = {(s, t) for s, ts in fed.items() for t in ts}
    up["candles"] = {"expected": len(want), "seen": len(set(cand_msgs) & want),
                     "missing": len(want - set(cand_msgs)), "duplicated": sum(n - 1 for n in cand_msgs.values()),
                     "extra": len(set(cand_msgs) - want)}
    pv = Counter((m.value or {})["pivot_id"] for m in msgs[PIVOTS] if m.value is not None)
    up["pivots"] = {"expected": sum(r["batch"] for r in pivots.values()), "seen": len(pv),
                    "missing": sum(r["missing"] for r in pivots.values()),
                    "duplicated": sum(n - 1 for n in pv.values()), "extra": sum(r["extra"] for r in pivots.values())}
    ref_ends = Counter((series_key((m.value or {})["symbol"], (m.value or {})["timeframe"]),
                        (m.value or {})["data_range_end"]) for m in msgs[INFERENCE_REFS] if m.value is not None)
    want_refs = {(s, t) for s, ts in fed.items() for t in ts[c.size.window - 1:]}
    up["refs (one per candle with a full window)"] = {
        "expected": len(want_refs), "seen": len(set(ref_ends) & want_refs), "missing": len(want_refs - set(ref_ends)),
        "duplicated": sum(n - 1 for n in ref_ends.values()), "extra": len(set(ref_ends) - want_refs)}
    up["training jobs (vs oracle)"] = {"expected": eo.get("oracle", 0), "seen": eo.get("emitted_distinct", 0),
                                       "missing": eo.get("missing", 0), "duplicated": eo.get("duplicates", 0),
                                       "extra": eo.get("extra", 0)}

    # bad inputs
    by_src: Counter[tuple[str, int, int, str]] = Counter()
    for ms in dlq.values():
        for m in ms:
            h = m.headers
            with contextlib.suppress(KeyError, ValueError):
                by_src[(h["source.topic"], int(h["source.partition"]), int(h["source.offset"]),
                        h.get("service", ""))] += 1
    accounted = missing = dup_entries = 0
    detail = []
    for b in c.bad:
        phys = cat.name(b["topic"])
        for svc in CONSUMERS_OF[b["topic"]]:
            n = by_src[(phys, b["partition"], b["offset"], svc)]
            if n == 0:
                missing += 1
                detail.append(f"{b['what']} on {b['topic']}@{b['partition']}:{b['offset']}: no DLQ entry from {svc}")
            else:
                accounted += 1
                if n > 1 and svc != "trainer":
                    dup_entries += n - 1
                    detail.append(f"{b['what']} on {b['topic']}: {n} DLQ entries from {svc}")
    trainer_dup = sum(n - 1 for (tp, _p, _o, svc), n in by_src.items() if svc == "trainer" and n > 1)
    bad = {"injected": len(c.bad), "expected_dlq_entries": accounted + missing, "accounted": accounted,
           "missing": missing, "duplicate_entries_stream": dup_entries,
           "duplicate_entries_trainer (at-least-once)": trainer_dup,
           "other_dlq_entries": sum(len(ms) for ms in dlq.values()) - accounted - dup_entries - trainer_dup,
           "detail": detail[:20]}
    checks = {
        "lost = 0": totals.lost == 0,
        "duplicated = 0": totals.duplicated == 0,
        "no extra jobs": totals.extra == 0,
        "trained twice = 0": totals.trained_twice == 0,
        "every job trained or dead-lettered": totals.not_trained == 0,
        "upstream: nothing missing or duplicated": all(
            v["missing"] == 0 and v["duplicated"] == 0 and v["extra"] == 0 for v in up.values()),
        "every bad input accounted for": missing == 0 and dup_entries == 0,
        "no valid input dead-lettered": bad["other_dlq_entries"] == 0,
        "no service in a crash loop": not crash_loops,
        "every fault recovered": totals.not_recovered == 0,
        "jobs were produced": totals.expected > 0,
    }
    inj = [{**asdict(j), "recovery_s": j.recovery_s} for j in c.injections]
    meta = {"size": asdict(c.size), "seed": c.seed, "topic_prefix": platform.topic_prefix, "git": c.git,
            "catalog": redact_text(platform.store_catalog), "chunks_fed": c.next_chunk,
            "candles_fed": {s: len(v) for s, v in fed.items()},
            "started": datetime.fromtimestamp(c.t0, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "duration_s": round(time.time() - c.t0, 1), "exits": [asdict(e) for e in c.exits],
            "analysis_exactly_once": {k: v for k, v in eo.items() if not k.endswith("_sample")},
            "missing_sample": eo.get("missing_sample", []), "extra_sample": eo.get("extra_sample", [])}
    observations = {
        "liveness restarts (service stuck, /healthz stale)": [
            {"instance": e.instance, "at": datetime.fromtimestamp(e.at, tz=UTC).strftime("%H:%M:%S"),
             "during": (w.kind if (w := _window_of(c.injections, e.at)) else "no fault")}
            for e in c.exits if e.liveness],
        "unplanned exits": [
            {"instance": e.instance, "code": e.code,
             "during": (w.kind if (w := _window_of(c.injections, e.at)) else "no fault")}
            for e in c.exits if not e.planned and not e.liveness],
        "faults not triggered": [asdict(j) for j in c.injections if not j.triggered],
    }
    return Result(c.size.name, c.run_id, [r for r in rows.values() if r.injected or r.expected or r.crashes or r.hung],
                  totals, up, bad, crash_loops, inj, checks, observations, meta, str(c.out))


def _raw_values(platform: PlatformSettings, topic: str, timeout: float = 120.0) -> list[bytes]:
    """The value bytes of every committed message of ``topic`` (a DLQ keeps the original bytes)."""
    return [m.value() or b"" for m in read_messages(platform, topic, timeout=timeout)[0]]


# -- rendering ----------------------------------------------------------------------------------------
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


# -- entry points ------------------------------------------------------------------------------------
@dataclass
class Options:
    size: str = "reduced"
    out_root: Path = REPO / "reports"
    seed: int | None = None
    stack_dir: Path | None = None
    keep_stack: bool = False
    keep_data: bool = False


def _say(text: str) -> None:
    print(text, flush=True)


def run_campaign(opts: Options, log: Callable[[str], None] = _say) -> Result:
    """Run one campaign; always stops what it started (services, and the private stack unless kept)."""
    size = SIZES[opts.size]
    seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(1 << 30)
    run_id = f"faults-{size.name}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    out = opts.out_root / run_id
    (out / "logs").mkdir(parents=True, exist_ok=True)
    stack = PrivateStack(opts.stack_dir)
    log(f"fault campaign {run_id} (size {size.name}, seed {seed}); private stack in {stack.root} "
        f"(ports {stack.ports})")
    campaign: Campaign | None = None
    try:
        with signals_raise():
            stack.up()
            campaign = Campaign(size, stack, out, seed, log)
            try:
                campaign.execute()
                unhealthy = campaign.final_health()
            finally:
                campaign.stop_all()  # SIGTERM: the trainers' last checkpoints are part of the result
            log("reading the topics and the trainer lineages")
            result = analyse(campaign, unhealthy)
        (out / "result.json").write_text(json.dumps(result.to_json(), indent=1, default=str))
        (out / "table.md").write_text(markdown(result))
        return result
    finally:
        if campaign is not None:
            campaign.stop_all()
            if campaign.platform is not None:  # a fault may have been cut short: never leave it read-only
                with contextlib.suppress(Exception):
                    set_immutable(Path(campaign.platform.store_data_path), False)
            if not opts.keep_data and campaign.platform is not None:
                with contextlib.suppress(Exception):
                    drop_catalog(campaign.platform.store_catalog)
                shutil.rmtree(out / "lake", ignore_errors=True)
        if not opts.keep_stack:
            log("stopping the private stack")
            stack.down(remove=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ops.faults", description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--seed", type=int, help="random seed of the schedule and moments (default: random, printed)")
    ap.add_argument("--out", type=Path, default=REPO / "reports", help="parent of the run folder (default reports/)")
    ap.add_argument("--stack-dir", type=Path, help="folder of a private stack to use (created if needed)")
    ap.add_argument("--keep-stack", action="store_true", help="leave the private stack running afterwards")
    ap.add_argument("--keep-data", action="store_true", help="keep the run's catalog database and store files")
    a = ap.parse_args(argv)
    opts = Options(a.size, a.out, a.seed, a.stack_dir, a.keep_stack, a.keep_data)
    try:
        result = run_campaign(opts)
    except CampaignError as exc:
        print(f"campaign failed: {exc}", file=sys.stderr)
        return 2
    except Interrupted:
        print("interrupted", file=sys.stderr)
        return 130
    render(result, _say)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
