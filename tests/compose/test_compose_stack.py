"""The compose stack for real: images built on this machine, containers started by compose.

`make compose-test` (marker `compose`, deselected by `make test` and CI; it takes minutes). One
scenario, in order, on the offline images (`make images`, deploy/docker/compose.offline.yml):

1. `up -d`: the init job completes, kafka, postgres, registry, prometheus and the five services
   (one CPU trainer) report healthy;
2. ingest replays the first half of `make run`'s data (the last 1500 real candles of BTCUSDT and
   ETHUSDT 1m, ops.run.prepare_files); once drained, ops.report/ops.analysis check it as `make run`
   does: job ids == the coordinator's oracle, model versions advance, DLQ empty;
3. `--scale trainer-cpu=3`: three replicas in the trainer group, each owning partitions, and
   Prometheus scraping all three;
4. the second half is replayed, one trainer is `docker kill`ed while it trains; after the drain
   the same checks pass on everything, and every job was trained once (the last model version of
   each key counts exactly the jobs of that key);
5. `down -v` leaves no container, network or volume of the project.

The outputs the README quotes (`ps` with the health of every container, the trainer group and
Prometheus' trainer targets after the scale-out, the kcat recipes of the README and of
docs/compose.md, image sizes, timings) are written to $REFTRAIN_COMPOSE_EXCERPTS (default
reports/compose-excerpts.txt), also when the test fails.

It talks only to its own containers (published on 127.0.0.1) and, through the image builds,
the package registries. The Docker engine is started (and stopped afterwards) by
deploy/docker/engine.sh when none runs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ops.analysis import FAIL, Analysis
from ops.kafkaview import KafkaView
from ops.report import collect
from ops.run import prepare_files
from ops.stages import STAGES
from reftrain import settings as settings_mod
from reftrain.settings import PlatformSettings
from reftrain.topics import CANDLES, TopicCatalogue

pytestmark = [pytest.mark.compose, pytest.mark.slow, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[2]
ENGINE = REPO / "deploy" / "docker" / "engine.sh"
IMAGES = REPO / "deploy" / "docker" / "offline" / "images.sh"
FILES = ["BTCUSDT-1m-2025-10-29_2025-11-01.csv", "ETHUSDT-1m-2025-10-29_2025-11-01.csv"]
CANDLES_TOTAL = 1500  # `make run`'s default (ops.run): the last 1500 candles of each file
REQUIRED_IMAGES = ["reftrain:base", "reftrain:ml", "reftrain-offline/kafka:4.4.0", "reftrain-offline/postgres:15",
                   "reftrain-offline/apicurio-registry:3.3.3", "reftrain-offline/prometheus:2.42",
                   "reftrain-offline/kcat:1.7.1"]
LONG_RUNNING = ["kafka", "postgres", "registry", "prometheus", "ingest", "pivots", "inference", "coordinator",
                "trainer-cpu"]
HOST_ENV = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
            "SCHEMA_REGISTRY_URL": "http://127.0.0.1:8081/apis/ccompat/v7",
            "TOPIC_PREFIX": "", "TOPIC_PARTITIONS": "6"}


def log(msg: str) -> None:
    print(f"[compose-test {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Stack:
    """One compose project on this machine: its command line and what the test measured."""

    compose: list[str]
    env: dict[str, str]
    figures: dict[str, Any] = field(default_factory=dict)
    excerpts: list[str] = field(default_factory=list)

    def excerpt(self, title: str, text: str, max_lines: int = 40) -> None:
        """Keep an output for the README (the first max_lines lines), and print it."""
        lines = text.rstrip("\n").splitlines()
        cut = lines[:max_lines] + ([f"... ({len(lines) - max_lines} more lines)"] if len(lines) > max_lines else [])
        block = f"### {title}\n" + "\n".join(cut) + "\n"
        self.excerpts.append(block)
        log(block)

    def run(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([*self.compose, *args], cwd=REPO, env=self.env, capture_output=True, text=True,
                             timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"{shlex.join(args)} -> {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        return res

    def containers(self, service: str) -> list[str]:
        return self.run("ps", "-q", service).stdout.split()

    def health(self) -> dict[str, list[str]]:
        """service -> the health of each of its running containers (one `docker ps` call)."""
        out: dict[str, list[str]] = {}
        ps = docker("ps", "--filter", f"label=com.docker.compose.project={self.env['COMPOSE_PROJECT_NAME']}",
                    "--format", '{{.Label "com.docker.compose.service"}} {{.Status}}').stdout
        for line in ps.splitlines():
            svc, status = line.split(" ", 1)
            health = status[status.find("(") + 1:status.find(")")] if "(" in status else status
            out.setdefault(svc, []).append(health.replace("health: ", ""))
        return out

    def platform(self) -> PlatformSettings:
        return settings_mod.platform({**os.environ, **HOST_ENV})


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=300)
    if check and res.returncode != 0:
        raise AssertionError(f"docker {shlex.join(args)}: {res.stderr[-2000:]}")
    return res


def wait_for(what: str, cond: Callable[[], bool], timeout: float, every: float = 5.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if cond():
                return time.monotonic() - t0
        except Exception as e:  # the stack is still coming up: refused connections are expected
            last = e
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} ({locals().get('last', '')})")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    started_engine = subprocess.run(["docker", "info"], capture_output=True).returncode != 0
    subprocess.run([str(ENGINE), "up"], check=True)
    missing = [i for i in REQUIRED_IMAGES if docker("image", "inspect", i, check=False).returncode != 0]
    if missing:
        log(f"building the offline images first ({', '.join(missing)} missing): {IMAGES}")
        subprocess.run([str(IMAGES)], check=True)
    compose = subprocess.run([str(ENGINE), "compose"], check=True, capture_output=True, text=True).stdout.split()

    # the replay files, readable by the containers' unprivileged users: phase 1 in warmup/, phase 2 in the top
    replay = tmp_path_factory.mktemp("replay")
    prepared = prepare_files(FILES, CANDLES_TOTAL, replay, warmup=CANDLES_TOTAL // 2)
    for p in [replay, *replay.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    override = replay / "compose.test.yml"
    override.write_text(
        "services:\n"
        "  ingest:\n"
        "    environment:\n"
        "      INGEST_FILES: ${REFTRAIN_REPLAY_FILES}\n"
        '      INGEST_SPEED: "0"\n'
        "    volumes:\n"
        f"      - {replay}:/replay:ro\n")
    project = f"reftrain-ct-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "COMPOSE_PROJECT_NAME": project,
           "GRAFANA_ADMIN_PASSWORD": uuid.uuid4().hex,  # required by the file; Grafana is off offline
           # required by the file: the PostgreSQL superuser and the two least-privilege roles
           **{v: uuid.uuid4().hex for v in ("POSTGRES_PASSWORD", "CATALOG_DB_PASSWORD", "REGISTRY_DB_PASSWORD")},
           "REFTRAIN_REPLAY_FILES": ",".join(f"/replay/warmup/{Path(e['warmup_file']).name}" for e in prepared)}
    env.pop("TOPIC_PREFIX", None)
    s = Stack([*compose, "-f", "docker-compose.yml", "-f", "deploy/docker/compose.offline.yml", "-f", str(override),
               "--profile", "cpu"], env)
    s.figures["prepared"] = prepared
    versions = docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    s.excerpt("engine and compose", f"docker {versions}; {s.run('version', '--short').stdout.strip()} "
              f"({shlex.join(compose)}); project {project}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    images = docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}  {{.Size}}").stdout.splitlines()
    s.excerpt("docker image ls (the images of the stack)",
              "\n".join(sorted(i for i in images if i.startswith("reftrain"))))
    s.figures["phase2_files"] = ",".join(f"/replay/{Path(e['file']).name}" for e in prepared)
    try:
        yield s
    finally:
        if not s.figures.get("down_done"):  # the test stopped early: its containers' last words
            for svc in ("trainer-cpu", "coordinator", "inference", "ingest", "pivots", "init", "kafka", "registry"):
                logs = s.run("logs", "--no-color", "--tail", "15", svc, check=False).stdout
                log(f"last log lines of {svc}:\n{logs}")
        s.run("down", "-v", "--remove-orphans", check=False, timeout=300)
        left = docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={project}").stdout.split()
        vols = docker("volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}").stdout.split()
        nets = docker("network", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}").stdout.split()
        s.figures["left_after_down"] = {"containers": left, "volumes": vols, "networks": nets}
        s.excerpt("after `down -v`: what is left of the project (docker ps -a / volume ls / network ls, "
                  "filtered on its label)", f"containers: {len(left)}, volumes: {len(vols)}, networks: {len(nets)}")
        EXCERPTS.parent.mkdir(parents=True, exist_ok=True)
        EXCERPTS.write_text("\n".join(s.excerpts))
        log(f"excerpts written to {EXCERPTS}")
        if started_engine and os.environ.get("REFTRAIN_KEEP_ENGINE") != "1":
            subprocess.run([str(ENGINE), "down"], check=False)


def drained(s: Stack, expected_candles: int, quiet_s: float = 20.0, timeout: float = 1200) -> float:
    """Every candle is in, every consumer group has read everything, and no topic grew for quiet_s."""
    view = KafkaView(s.platform())
    cat = TopicCatalogue(s.platform())
    try:
        t0 = time.monotonic()
        wait_for(f"{expected_candles} candles", lambda: sum(view.end_offsets([cat.name(CANDLES)]).values())
                 >= expected_candles, timeout)
        last: dict[Any, int] = {}
        still_since = time.monotonic()
        while time.monotonic() - t0 < timeout:
            ends = view.end_offsets(view.topics_with_prefix(""))
            if ends != last:
                last, still_since = ends, time.monotonic()
            no_lag = all(view.effective_lag(st.group(""), [cat.name(t) for t in st.inputs]) == 0
                         for st in STAGES if st.inputs)
            if no_lag and time.monotonic() - still_since >= quiet_s:
                return time.monotonic() - t0
            time.sleep(5)
        raise AssertionError("the pipeline did not drain in time")
    finally:
        view.close()


def checks(s: Stack) -> tuple[dict[str, tuple[str, str]], Analysis]:
    """`make run`'s checks (ops.analysis), on what the compose stack wrote to its topics."""
    inp = collect(s.platform(), read_store=False, stages_run={st.name: True for st in STAGES})
    a = Analysis(inp)
    a.sections()
    return {c.name: (c.status, c.detail) for c in a.checks}, a


def assert_make_run_checks(s: Stack, first_phase: bool = False) -> Analysis:
    """The checks must pass. In the first phase, the unpaced replay is over before the first
    trained version reaches inference, so "inference used trained versions" may fail there (every
    ref is made by version 0); it must pass after the second phase."""
    got, a = checks(s)
    for name in ("exactly-once: job ids == oracle batch_join", "model versions advanced", "no DLQ entries"):
        assert got[name][0] == "pass", (name, got[name])
    failed = {n: c for n, c in got.items() if c[0] == FAIL}
    if first_phase:
        failed.pop("inference used trained versions", None)
    assert not failed, failed
    log("checks: " + "; ".join(f"{n}: {c[0]} ({c[1]})" for n, c in got.items()))
    return a


def group_members(s: Stack, group: str) -> dict[str, set[tuple[str, int]]]:
    """member (consumer id) -> the partitions it owns now, from the broker (kafka-consumer-groups.sh).

    The tool prints `topic:0,1` (consumer protocol, CURRENT-ASSIGNMENT column) or `topic(0,1)`
    (classic protocol, ASSIGNMENT column)."""
    res = s.run("exec", "-T", "kafka", "/opt/kafka/bin/kafka-consumer-groups.sh", "--bootstrap-server",
                "localhost:9092", "--describe", "--group", group, "--members", "--verbose", check=False)
    members: dict[str, set[tuple[str, int]]] = {}
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) < 7 or parts[0] != group:
            continue
        owned: set[tuple[str, int]] = set()
        for token in parts[6:]:
            m = re.fullmatch(r"([A-Za-z][\w.-]*)(?::([\d,]+)|\(([\d,]+)\))", token)
            if m:
                owned = {(m.group(1), int(x)) for x in (m.group(2) or m.group(3)).split(",")}
                break
        members[parts[1]] = owned
    return members


DOC = REPO / "docs" / "compose.md"
README = REPO / "README.md"
EXCERPTS = Path(os.environ.get("REFTRAIN_COMPOSE_EXCERPTS") or REPO / "reports" / "compose-excerpts.txt")


def readme_compose_section() -> str:
    text = README.read_text()
    start = text.index("## Docker Compose")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def doc_recipes() -> list[str]:
    """The command lines that look at the data in the README's compose section (```bash blocks) and
    docs/compose.md (```sh blocks): host kcat, `docker compose run --rm kcat` and
    `docker compose exec kafka` (continuation lines joined, trailing comments dropped, each once)."""
    out: list[str] = []
    blocks = re.findall(r"```bash\n(.*?)```", readme_compose_section(), re.S)
    blocks += re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S)
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            if not line.strip().startswith(("kcat ", "docker compose run --rm kcat ", "docker compose exec kafka ")):
                continue
            cmd = shlex.join(shlex.split(line, comments=True))
            if cmd not in out:
                out.append(cmd)
    return out


def run_recipes(s: Stack) -> dict[str, str]:
    """Run each recipe against this stack as written (host port 127.0.0.1:9092, the compose network for
    the kcat container), reading from the beginning and stopping at the end so each one terminates.
    The Avro recipes need an Avro-enabled kcat (upstream image): Debian's has none, they are skipped."""
    features = subprocess.run(["kcat", "-V"], capture_output=True, text=True).stdout.lower()
    outputs: dict[str, str] = {}
    for cmd in doc_recipes():
        argv = shlex.split(cmd)
        if "value=avro" in cmd and "avro" not in features:
            outputs[cmd] = "SKIPPED: no Avro in Debian's kcat"
            continue
        argv = ["beginning" if a == "end" and argv[i - 1] == "-o" else a for i, a in enumerate(argv)]
        if "-C" in argv and "-e" not in argv:
            argv.append("-e")
        if argv[:2] == ["docker", "compose"]:
            run_args = argv[2:]
            if run_args[0] == "exec":
                run_args = ["exec", "-T", *run_args[1:]]
            elif run_args[0] == "run":
                run_args = ["run", "-T", *run_args[1:]]
            res = s.run(*run_args, check=False, timeout=300)
        else:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, (cmd, res.stdout[-2000:], res.stderr[-2000:])
        outputs[cmd] = res.stdout
        if " -L" in cmd:
            assert 'topic "candles" with 6 partitions' in res.stdout, res.stdout[:2000]
        elif "-t candles" in cmd and "%h" in cmd:
            lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
            # partition, offset, series key (1m and the derived 5m/15m/1h), the record-name header
            pat = re.compile(r"^(\d+ \d+ )?[A-Z]+:\d+[mhd] .*content-type=application/vnd\.confluent\.avro; "
                             r"record=reftrain\.Candle")
            assert lines and all(pat.match(ln) for ln in lines), lines[:5]
        elif ".dlq" in cmd:
            assert res.stdout.strip() == "", res.stdout[:2000]
        elif "kafka-consumer-groups.sh" in cmd:
            assert "trainer" in res.stdout and "LAG" in res.stdout, res.stdout[:2000]
    return outputs


def prometheus_targets(job: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen("http://127.0.0.1:9090/api/v1/targets?state=active", timeout=5) as r:
        data = json.load(r)["data"]["activeTargets"]
    return [t for t in data if t["labels"].get("job") == job]


def test_compose_stack_replays_scales_survives_a_kill_and_cleans_up(stack: Stack) -> None:
    s = stack
    s.run("down", "-v", "--remove-orphans", check=False)

    # 1. up, health
    t0 = time.monotonic()
    s.run("up", "-d", "--scale", "trainer=0", "--scale", "trainer-cpu=1", timeout=1200)
    up_s = time.monotonic() - t0
    init = s.run("ps", "-a", "-q", "init").stdout.split()
    assert init, "no init container"
    state = json.loads(docker("inspect", init[0]).stdout)[0]["State"]
    assert state["Status"] == "exited" and state["ExitCode"] == 0, state
    def all_healthy() -> bool:
        health = s.health()
        return all(health.get(svc) and all(h == "healthy" for h in health[svc]) for svc in LONG_RUNNING)

    healthy_s = up_s + wait_for("every container healthy", all_healthy, 600)
    s.figures["up_s"], s.figures["healthy_s"] = round(up_s), round(healthy_s)
    log(f"up in {up_s:.0f} s, all healthy after {healthy_s:.0f} s")
    s.excerpt(f"docker-compose ps ('up -d' returned after {up_s:.0f} s, every health check green "
              f"{healthy_s:.0f} s after 'up -d' was called)", s.run("ps").stdout)

    # the services and the registry log in with their own roles, neither a superuser nor able to make
    # databases or roles, each owning its one database (deploy/docker/postgres-init)
    roles = s.run("exec", "-T", "postgres", "psql", "-U", "postgres", "-tAc",
                  "select r.rolname, r.rolsuper, r.rolcreatedb, r.rolcreaterole, d.datname from pg_roles r "
                  "join pg_database d on d.datdba = r.oid where r.rolname in ('reftrain', 'registry') "
                  "order by 1").stdout.split()
    assert roles == ["reftrain|f|f|f|reftrain", "registry|f|f|f|registry"], roles
    s.excerpt("PostgreSQL roles (psql in the postgres container)", "\n".join(roles))

    # 2. phase 1: the first half of the real candles; make run's checks
    n = sum(e["candles"] for e in s.figures["prepared"])
    phase1 = sum(e["candles"] // 2 for e in s.figures["prepared"])
    s.figures["phase1_drain_s"] = round(drained(s, phase1))
    a1 = assert_make_run_checks(s, first_phase=True)
    jobs1 = len(a1.jobs)
    assert jobs1 > 0
    log(f"phase 1 drained in {s.figures['phase1_drain_s']} s: {jobs1} jobs, checks pass")
    s.excerpt(f"phase 1 ({phase1} real candles, unpaced) drained in {s.figures['phase1_drain_s']} s: make run's checks",
              "\n".join(f"{c.name}: {c.status} ({c.detail})" for c in a1.checks))
    outputs = run_recipes(s)
    assert sum(not o.startswith("SKIPPED") for o in outputs.values()) >= 5
    for cmd, out in outputs.items():
        s.excerpt(f"$ {cmd}", out, max_lines=8)

    # 3. three CPU trainers: one group, partitions split, Prometheus scrapes all three
    s.run("up", "-d", "--no-recreate", "--scale", "trainer=0", "--scale", "trainer-cpu=3", timeout=600)
    trainers = s.containers("trainer-cpu")
    assert len(trainers) == 3
    wait_for("3 healthy trainers", lambda: s.health().get("trainer-cpu") == ["healthy"] * 3, 400)

    def three_owners() -> bool:
        members = group_members(s, "trainer")
        return len(members) == 3 and all(members.values())

    wait_for("three trainer group members, each owning partitions", three_owners, 300)
    members = group_members(s, "trainer")
    owned = [p for ps in members.values() for p in ps]
    assert len(owned) == len(set(owned)), f"a partition has two owners: {members}"
    s.figures["trainer_members"] = {m: sorted(ps) for m, ps in members.items()}
    wait_for("Prometheus scraping 3 trainers", lambda: sum(
        t["health"] == "up" for t in prometheus_targets("trainer")) == 3, 120)
    targets = prometheus_targets("trainer")
    ips = {json.loads(docker("inspect", c).stdout)[0]["NetworkSettings"]["Networks"].popitem()[1]["IPAddress"]
           for c in trainers}
    assert {t["labels"]["instance"].split(":")[0] for t in targets} == ips, (targets, ips)
    s.excerpt("after `up -d --scale trainer=0 --scale trainer-cpu=3`: docker-compose ps trainer-cpu",
              s.run("ps", "trainer-cpu").stdout)
    s.excerpt("the trainer group as the broker sees it (kafka-consumer-groups.sh --describe --group trainer "
              "--members --verbose)", s.run("exec", "-T", "kafka", "/opt/kafka/bin/kafka-consumer-groups.sh",
                                            "--bootstrap-server", "localhost:9092", "--describe", "--group",
                                            "trainer", "--members", "--verbose").stdout)
    s.excerpt("Prometheus' trainer targets (curl -s localhost:9090/api/v1/targets, job trainer)",
              "\n".join(f"{t['labels']['job']} {t['scrapeUrl']} {t['health']}" for t in targets))

    # 4. phase 2 with a kill: ingest re-created on the second half; kill a trainer while it trains
    versions_before = len(a1.version_msgs)
    view = KafkaView(s.platform())
    cat = TopicCatalogue(s.platform())
    try:
        # (end offsets count transaction markers too: compare with the offsets before phase 2, not jobs1)
        end1 = sum(view.end_offsets([cat.name("training-jobs")]).values())
        s.env["REFTRAIN_REPLAY_FILES"] = s.figures["phase2_files"]
        s.run("up", "-d", "--scale", "trainer=0", "--scale", "trainer-cpu=3", "ingest", timeout=600)
        wait_for("new training jobs in phase 2", lambda: sum(
            view.end_offsets([cat.name("training-jobs")]).values()) > end1 + 10, 600, every=2)
        # the victim: a trainer that owns a partition with jobs on it (jobs are keyed by model key, so
        # with two keys some partitions stay empty and their owner would train nothing)
        busy = {tp for tp, hi in view.end_offsets([cat.name("training-jobs")]).items() if hi > 0}
        owners = {m: ps for m, ps in group_members(s, "trainer").items() if ps & busy}
        victim = next(c for c in trainers if any(c[:12] in m for m in owners))
        victim_owned = sorted(next(ps for m, ps in owners.items() if victim[:12] in m))
        docker("kill", victim)
        jobs_at_kill = sum(view.end_offsets([cat.name("training-jobs")]).values())
    finally:
        view.close()
    s.figures["victim_owned"] = victim_owned
    killed = json.loads(docker("inspect", victim).stdout)[0]
    s.figures["killed"] = victim[:12]
    log(f"killed trainer {victim[:12]}: {killed['State']['Status']}, exit code {killed['State']['ExitCode']}")
    assert killed["State"]["ExitCode"] == 137 or killed["RestartCount"] > 0, killed["State"]
    s.figures["phase2_drain_s"] = round(drained(s, n, quiet_s=45))
    a2 = assert_make_run_checks(s)
    assert len(a2.jobs) > jobs1 and len(a2.version_msgs) > versions_before
    # the kill was mid-stream: jobs kept coming after it, and the group's members own every partition again
    assert len(a2.jobs) > jobs_at_kill, (len(a2.jobs), jobs_at_kill)
    after = group_members(s, "trainer")
    assert {p for ps in after.values() for p in ps} == {(cat.name("training-jobs"), i)
                                                         for i in range(int(HOST_ENV["TOPIC_PARTITIONS"]))}, after
    running_again = json.loads(docker("inspect", victim).stdout)[0]["State"]["Running"]
    if not running_again:  # docker kill marks it stopped: `restart: unless-stopped` does not bring it back
        assert not [m for m in after if victim[:12] in m], after
    s.figures["members_after_kill"] = {m: sorted(ps) for m, ps in after.items()}
    # every job trained once: the last committed version of each key counts exactly that key's jobs
    jobs_per_key = Counter((m.value or {})["model_key"] for m in a2.jobs.values())
    last: dict[str, dict[str, Any]] = {}
    for m in a2.version_msgs:
        v = m.value or {}
        if v["version"] >= last.get(v["model_key"], {}).get("version", -1):
            last[v["model_key"]] = v
    trained = {k: v["trained_jobs"] for k, v in last.items()}
    assert trained == dict(jobs_per_key), (trained, dict(jobs_per_key))
    s.figures["jobs"], s.figures["trained"] = len(a2.jobs), trained
    log(f"phase 2 drained in {s.figures['phase2_drain_s']} s after the kill: {len(a2.jobs)} jobs, trained {trained}")
    got2 = {c.name: (c.status, c.detail) for c in a2.checks}
    s.excerpt(f"`docker kill` of trainer {victim[:12]} (it owned {victim_owned}; training-jobs end offsets "
              f"summed {jobs_at_kill} then), phase 2 drained in {s.figures['phase2_drain_s']} s: make run's checks",
              "\n".join(f"{n}: {c[0]} ({c[1]})" for n, c in got2.items())
              + f"\nlast model version per key, trained_jobs: {trained} == jobs per key {dict(jobs_per_key)}"
              + f"\ntrainer group after the kill: {s.figures['members_after_kill']}")

    # 5. down -v leaves nothing of the project
    s.run("down", "-v", "--remove-orphans", timeout=300)
    s.figures["down_done"] = True
    project = s.env["COMPOSE_PROJECT_NAME"]
    assert not docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={project}").stdout.split()
    assert not docker("volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}").stdout.split()
    assert not [n for n in docker("network", "ls", "--format", "{{.Name}}").stdout.split() if n.startswith(project)]
    assert not docker("network", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}").stdout.split()
    log(f"figures: {json.dumps(s.figures, default=str)}")
