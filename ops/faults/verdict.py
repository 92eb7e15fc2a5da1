"""The campaign's verdict, from the outside: the topics (read_committed) and the trainers' checkpoint
lineages. The exactly-once and pivot checks are ops.analysis's (the ones ``make run`` reports);
what is added here is the per-fault attribution: a job counts in the row of the fault active when
the job became possible."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ops.faults.config import CAMPAIGN_ENV, CONSUMERS, CONSUMERS_OF
from ops.faults.results import Injection, Result, Row
from ops.kafkaview import read_messages, read_topic
from reftrain.records import series_key
from reftrain.redact import redact_text
from reftrain.settings import PlatformSettings
from reftrain.streams import Serdes
from reftrain.topics import CANDLES, INFERENCE_REFS, PIVOTS, TRAINING_JOBS, TopicCatalogue

if TYPE_CHECKING:
    from ops.analysis import Analysis
    from ops.faults.campaign import Campaign
    from services.coordinator.join_config import JoinConfig

__all__ = ["NO_EXIT_FAULTS", "Injection", "Result", "Row", "analyse"]

#: Faults every service must ride out without exiting (a replicated cluster and a retrying store).
NO_EXIT_FAULTS = ("kill -9 partition leader", "object store unavailable")


def _window_of(injs: Sequence[Injection], t: float, pre: float = 2.0, post: float = 5.0) -> Injection | None:
    """The fault active when something became possible at wall time ``t`` (the latest one started)."""
    best = None
    for j in injs:
        end = (j.recovered if j.recovered is not None else j.end + 240.0) + post
        if j.start - pre <= t <= end and (best is None or j.start > best.start):
            best = j
    return best


def analyse(c: Campaign, crash_loops: list[str]) -> Result:
    """The campaign's verdict from the topics (read_committed) and the trainers' surviving lineages;
    the exactly-once and pivot checks are ops.analysis's, as in ``make run``'s report."""
    from ops.analysis import Analysis
    from ops.report import collect
    from reftrain.blobs import blobs_from_settings
    from services.coordinator.settings import load as coordinator_settings
    from services.trainer.lineage import lineage_job_ids, manifest_relpath, read_manifest_at
    from services.trainer.spec import SPEC as TRAINER_SPEC

    assert c.platform is not None
    platform = c.platform
    env = {**CAMPAIGN_ENV}
    join = coordinator_settings(env).join_config()
    inp = collect(platform, stages_run=dict.fromkeys(("ingest", *CONSUMERS), True), join_config=join, read_store=False)
    a = Analysis(inp)
    eo = a.exactly_once()
    pivots = a.pivot_check()
    msgs = inp.messages
    oracle = _oracle(a, join)
    emitted = Counter((m.value or {})["job_id"] for m in a.job_msgs if m.value is not None)

    def join_time(jid: str) -> float:
        """When the job became possible: the later of its ref and its resolving candle or pivot."""
        j = oracle.get(jid) or (a.jobs[jid].value if jid in a.jobs else None) or {}
        if not j:
            return c.t0
        s = series_key(j["ref"]["symbol"], j["ref"]["timeframe"])
        ref = a.refs.get((s, j["ref"]["inference_id"]))
        times = [ref.timestamp] if ref is not None else []
        if j.get("trigger") == "CANDLE":
            cm = a.candles.get((s, j["ref"]["target_timestamp"]))
            times += [cm.timestamp] if cm is not None else []
        elif j.get("pivot"):
            pm = a.pivots.get((s, j["pivot"]["pivot_id"]))
            times += [pm.timestamp] if pm is not None else []
        return max(times) / 1000.0 if times else c.t0

    # trainer: surviving lineages and what it dead-lettered
    topic = TopicCatalogue(platform).name(TRAINING_JOBS)
    lineage: Counter[str] = Counter()
    blobs = blobs_from_settings(platform)  # a folder, or the bucket with --lake s3
    group = TRAINER_SPEC.group(platform.topic_prefix)
    for part in range(platform.topic_partitions):
        man = read_manifest_at(blobs, manifest_relpath(group, topic, part))
        if man is None or man.group != group or man.topic != topic:
            continue
        for entry in man.models.values():
            lineage.update(lineage_job_ids(blobs, entry.checkpoint_path))
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
    no_exit = [r for r in rows.values() if r.fault.startswith(NO_EXIT_FAULTS)]
    if no_exit:  # issue #19: services ride these out without a restart
        checks["no unplanned service exit during " + ", ".join(r.fault for r in no_exit)] = all(
            r.crashes == 0 and r.hung == 0 for r in no_exit)
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



def _oracle(a: Analysis, join: JoinConfig) -> dict[str, dict[str, Any]]:
    """The offline oracle: ``batch_join`` of each series' refs, candles and pivots as on the topics.
    ops.analysis builds the same join for its exactly-once check but keeps it inside that check."""
    from services.coordinator.oracle import batch_join

    by_series: dict[str, tuple[list[Any], list[Any], list[Any]]] = defaultdict(lambda: ([], [], []))
    for idx, ms in enumerate((a.ref_msgs, a.candle_msgs, a.pivot_msgs)):
        for m in sorted(ms, key=lambda m: (m.partition, m.offset)):
            if m.value is not None:
                by_series[series_key(m.value["symbol"], m.value["timeframe"])][idx].append(m.value)
    oracle: dict[str, dict[str, Any]] = {}
    for rs, cs, ps in by_series.values():
        if rs:
            for job in batch_join(rs, cs, ps, join):
                oracle[job["job_id"]] = dict(job)
    return oracle
