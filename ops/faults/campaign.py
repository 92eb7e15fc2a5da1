"""One campaign: set-up on the private stack, the paced replay of real candles in ingest chunks, the
shuffled fault schedule, the drain, the final health check, and ``run_campaign`` which always stops
what it started."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deploy.init import init_cluster
from ops import catalog
from ops.faults.config import CONSUMERS, DATA, INPUTS, SIZES, Size, scaling_only
from ops.faults.injectors import FaultInjector
from ops.faults.results import Result
from ops.faults.stack import CampaignError, PrivateStack, set_immutable
from ops.faults.supervisor import healthz, snapshot_code
from ops.faults.tables import markdown
from ops.faults.verdict import analyse
from ops.kafkaview import KafkaView
from ops.procs import signals_raise
from ops.stages import REPO
from reftrain import settings as settings_mod
from reftrain.records import series_key
from reftrain.settings import PlatformSettings
from reftrain.topics import TopicCatalogue


def git_state() -> dict[str, str]:
    """Which code the campaign ran (read-only git queries)."""
    out = {}
    for key, args in (("commit", ["rev-parse", "HEAD"]), ("changed files", ["status", "--porcelain"])):
        with contextlib.suppress(Exception):
            res = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
            out[key] = res.stdout.strip() if key == "commit" else str(len(res.stdout.splitlines()))
    return out


class Campaign(FaultInjector):
    """One campaign run on one private stack; see the package docstring."""

    def __init__(self, size: Size, stack: PrivateStack, out_dir: Path, seed: int, log: Callable[[str], None]) -> None:
        super().__init__(size, stack, out_dir, seed, log)
        self.run_id = out_dir.name
        self.chunks: list[dict[str, Any]] = []
        self.next_chunk = 0
        self.feeding = True
        self.git: dict[str, str] = {}
        self.t0 = time.time()

    # -- set-up --------------------------------------------------------------------------------
    def setup(self) -> None:
        env = self.stack.platform_env()
        self.catalog_env = {**os.environ, **env}  # the private stack's admin login (ops.catalog)
        base = settings_mod.platform(env)
        db = "faults_" + uuid.uuid4().hex[:12]
        self.platform = PlatformSettings(**{
            **base.as_dict(), "topic_prefix": f"{self.run_id}-",
            "store_catalog": catalog.fresh_catalog(base.store_catalog, db, environ=self.catalog_env),
            # --lake s3: the run's lake, checkpoints and manifests under its own prefix of the bucket
            "store_data_path": (f"s3://{base.store_data_path.removeprefix('s3://').split('/')[0]}/{self.run_id}"
                                if self.stack.lake == "s3" else str(self.out / "lake")), "http_port": 0})
        self.base_env = dict(os.environ)
        for k in ("KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL", "STORE_CATALOG", "STORE_CATALOG_PASSWORD_FILE",
                  "STORE_DATA_PATH", "REFTRAIN_CATALOG_ADMIN_USER", "REFTRAIN_CATALOG_ADMIN_PASSWORD_FILE"):
            self.base_env.pop(k, None)
        self.probe = KafkaView(self.platform, timeout=5.0)
        init_cluster.prepare(self.platform, self.probe.admin)  # topics + schemas (services never register)
        self.code_dir = snapshot_code(self.out / "code")
        self.git = git_state()
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


    def on_tick(self) -> None:
        """Keep the replay going: the next ingest chunk starts when the previous one exited 0."""
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
            live = healthz(i.proc.port, 3)
            if not live or not i.proc.ready():
                problems.append(f"{i.name}: /healthz {'ok' if live else 'FAIL'}, /readyz "
                                f"{'ok' if i.proc.ready() else 'FAIL'}")
        quiet_after = max((j.recovered or j.end) for j in self.injections) + 60 if self.injections else 0
        late = Counter(e.instance for e in self.exits if not e.planned and e.at > quiet_after)
        problems.extend(f"{name}: {n} unplanned exits after the faults were over" for name, n in late.items())
        return problems

    def stop_all(self) -> None:
        super().stop_all()
        if self.probe is not None:
            self.probe.close()
            self.probe = None


# -- entry point ------------------------------------------------------------------------------------
@dataclass
class Options:
    size: str = "reduced"
    out_root: Path = REPO / "reports"
    seed: int | None = None
    stack_dir: Path | None = None
    keep_stack: bool = False
    keep_data: bool = False
    brokers: int = 1  # 3: the private stack runs the 3-node KRaft cluster (issue #19)
    lake: str = "folder"  # "s3": the lake, checkpoints and manifests on S3Proxy (issue #19)
    port_base: int | None = None  # the private stack's ports at fixed offsets from it (else free ports)
    only_scaling: bool = False  # only the #19 faults (config.scaling_only)


def say(text: str) -> None:
    print(text, flush=True)


def run_campaign(opts: Options, log: Callable[[str], None] = say) -> Result:
    """Run one campaign; always stops what it started (services, and the private stack unless kept)."""
    size = scaling_only(SIZES[opts.size]) if opts.only_scaling else SIZES[opts.size]
    seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(1 << 30)
    run_id = f"faults-{size.name}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    out = opts.out_root / run_id
    (out / "logs").mkdir(parents=True, exist_ok=True)
    stack = PrivateStack(opts.stack_dir, brokers=opts.brokers, lake=opts.lake, port_base=opts.port_base)
    log(f"fault campaign {run_id} (size {size.name}, seed {seed}, brokers {opts.brokers}, lake {opts.lake}); "
        f"private stack in {stack.root} (ports {stack.ports})")
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
                    if not campaign.platform.store_data_path.startswith("s3://"):
                        set_immutable(Path(campaign.platform.store_data_path), False)
            if not opts.keep_data and campaign.platform is not None:
                with contextlib.suppress(Exception):
                    catalog.drop_catalog(campaign.platform.store_catalog, environ=campaign.catalog_env)
                shutil.rmtree(out / "lake", ignore_errors=True)
        if not opts.keep_stack:
            log("stopping the private stack")
            stack.down(remove=True)

