"""The faults, one method each, and the measurement of a fault's recovery: kill -9 of a service
(also inside a trainer checkpoint, inside a Kafka transaction commit and during a rebalance), broker
and schema registry stop/restart, the store's catalog database or data path unavailable, a trainer
replica added and removed, and bad messages that must be dead-lettered."""

from __future__ import annotations

import contextlib
import math
import random
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from ops import catalog
from ops.faults.config import CAMPAIGN_ENV, CONSUMERS, INPUTS, Size
from ops.faults.results import Injection
from ops.faults.stack import CampaignError, PrivateStack, immutable_supported, set_immutable
from ops.faults.supervisor import Instance, Supervisor
from ops.kafkaview import KafkaView
from ops.run import service_env
from reftrain.records import series_key
from reftrain.settings import PlatformSettings
from reftrain.streams import Serdes, producer_config
from reftrain.topics import CANDLES, TRAINING_JOBS, TopicCatalogue


class FaultInjector(Supervisor):
    """A supervisor that injects faults into what it supervises and records each as an Injection."""

    def __init__(self, size: Size, stack: PrivateStack, out_dir: Path, seed: int, say: Callable[[str], None]) -> None:
        super().__init__(say, out_dir / "logs")
        self.size = size
        self.stack = stack
        self.out = out_dir
        self.rng = random.Random(seed)
        self.seed = seed
        self.injections: list[Injection] = []
        self.bad: list[dict[str, Any]] = []
        self.fed: dict[str, list[int]] = defaultdict(list)  # series -> open_times handed to ingest
        self.platform: PlatformSettings | None = None
        self.probe: KafkaView | None = None
        self.base_env: dict[str, str] = {}
        self.catalog_env: dict[str, str] | None = None  # the private stack's variables, for ops.catalog

    def add(self, stage: str, instance: str, extra: dict[str, str] | None = None, keep: bool = True) -> Instance:
        """Start an instance with the campaign's platform (topic prefix, catalog) and settings."""
        platform = self.platform
        assert platform is not None
        env_extra = {**CAMPAIGN_ENV, "INFERENCE_WINDOW": str(self.size.window), **(extra or {})}
        return self.start(stage, instance, lambda port: service_env(
            self.base_env, platform, f"{platform.topic_prefix}{instance}", port, env_extra), keep)

    # -- recovery ------------------------------------------------------------------------------
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
                         f"not ready: {[i.name for i in self.not_ready()]}")
            return moved >= set(stages) and ready

        if self.wait(ok, self.size.recovery_timeout_s):
            inj.recovered = time.time()
        else:
            inj.note = (inj.note + f"; not recovered after {self.size.recovery_timeout_s:.0f} s "
                        f"(no progress: {sorted(set(stages) - moved)}, not ready: "
                        f"{[i.name for i in self.not_ready()]})").lstrip("; ")
        self.say(f"  {inj.kind}: {inj.detail} -> "
                 + (f"recovered in {inj.recovery_s} s" if inj.recovery_s is not None else f"NOT RECOVERED: {inj.note}"))

    def _record(self, inj: Injection, stages: Sequence[str]) -> None:
        """Record an injected fault and wait for the recovery of ``stages``."""
        self.injections.append(inj)
        self.wait_recovered(inj, stages)

    # -- faults ----------------------------------------------------------------------------------
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
        self._record(inj, [stage])

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
                self._record(inj, [stage_name])
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
        self._record(inj, ["trainer"])
        self.remove(extra)

    def fault_scale(self, n: int) -> None:
        t = time.time()
        extra = self.add("trainer", f"trainer-{n + 2}")
        self.wait(lambda: extra.proc.running() and extra.proc.ready(), 180, 0.5)
        self.sleep(self.rng.uniform(5.0, 10.0))
        self.remove(extra)
        inj = Injection("trainer replica added and removed", f"trainer-{n + 2}", t, time.time())
        self._record(inj, ["trainer"])

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
        self._record(inj, ["ingest", *CONSUMERS])

    def fault_registry(self) -> None:
        t = time.time()
        self.stack.stop_component("registry")
        self.sleep(self.size.registry_down_s / 2)
        self.kill(self.instances["coordinator"])  # a restart must cope: no schema cache, no registry
        self.sleep(self.size.registry_down_s / 2)
        self._stack_up()
        inj = Injection("schema registry stop + restart", f"down {time.time() - t:.0f} s, coordinator restarted "
                        "while it was down", t, time.time())
        self._record(inj, ["ingest", *CONSUMERS])

    def fault_store(self) -> None:
        """The store's catalog database refuses connections and its sessions are terminated (the
        DuckLake data files stay): every store read and write fails until it is allowed again."""
        assert self.platform is not None
        t = time.time()
        with catalog.unavailable(self.platform.store_catalog, environ=self.catalog_env):
            self.sleep(self.size.store_down_s)
        inj = Injection("store unavailable", f"catalog database refused connections {time.time() - t:.0f} s", t,
                        time.time())
        self._record(inj, ["ingest", *CONSUMERS])

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
        self._record(inj, ["ingest", *CONSUMERS])

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

