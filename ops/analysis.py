"""The report's numbers, computed from what the topics recorded (plus the services' final /metrics).

Pure functions over decoded messages: no Kafka, no processes. So the same analysis serves a run of
``ops.run``, a long-running stack (``ops.report``) and unit tests, and every number in the report can
be traced to records an operator can read with kcat.

Why the topics are the source of truth: they are what downstream consumers see (read_committed), so
"exactly once" is a statement about them; service counters count work done, including work redone
after an aborted transaction, and are only used to cross-check and for what topics cannot show
(e.g. refs the coordinator still holds at stop).
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ops import scoring
from ops.kafkaview import Msg
from ops.promtext import Scrape
from ops.stages import PRODUCER_OF
from reftrain import labels
from reftrain import topics as T
from reftrain.records import TIMEFRAME_MS, series_key, split_series
from services.coordinator.join_config import JoinConfig
from services.coordinator.oracle import batch_join

PASS, FAIL, NOT_RUN = "pass", "FAIL", "not run"

# What the model is scored against: the labels the trainer learns, from the ONE torch-free rule
# (reftrain.labels); the metrics are ops.scoring's, the same functions as ``make backtest``.


@dataclass
class Check:
    """One invariant of the report: pass, FAIL, or not run (a stage it needs did not run)."""

    name: str
    status: str
    detail: str = ""


@dataclass
class Inputs:
    """Everything the analysis reads: decoded topic contents, DLQ messages, final /metrics per stage."""

    messages: dict[str, list[Msg]]  # logical topic -> messages (decoded values)
    dlq: dict[str, list[Msg]] = field(default_factory=dict)  # logical topic -> raw DLQ messages
    metrics: dict[str, Scrape] = field(default_factory=dict)  # stage -> merged scrape of its instances
    stages_run: dict[str, bool] = field(default_factory=dict)  # stage -> did it run (in this run/stack)
    join_config: JoinConfig = field(default_factory=JoinConfig)
    strengths: tuple[int, ...] = (2, 2, 2, 2, 2)
    incomplete_reads: list[str] = field(default_factory=list)
    model_versions_table: list[dict[str, Any]] | None = None


def percentiles(values: Sequence[float], qs: Sequence[float] = (0.5, 0.9, 0.99)) -> dict[str, float | int | None]:
    """Nearest-rank percentiles (p50, p90, p99) plus max and n; None when empty."""
    out: dict[str, float | int | None] = {}
    xs = sorted(values)
    for q in qs:
        out[f"p{round(q * 100)}"] = xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))] if xs else None
    out["max"] = xs[-1] if xs else None
    out["n"] = len(xs)
    return out


def _first_by(msgs: Iterable[Msg], key: Callable[[dict[str, Any]], Any]) -> dict[Any, Msg]:
    """First message per key in topic order (per partition offset order; keys live in one partition)."""
    out: dict[Any, Msg] = {}
    for m in sorted(msgs, key=lambda m: (m.partition, m.offset)):
        if m.value is not None:
            out.setdefault(key(m.value), m)
    return out


def _series_of(v: dict[str, Any]) -> str:
    return series_key(v["symbol"], v["timeframe"])


class Analysis:
    """Derives every section of the report from ``Inputs``; ``sections()`` returns plain JSON data."""

    def __init__(self, inp: Inputs) -> None:
        self.inp = inp
        self.checks: list[Check] = []
        self.notes: list[str] = []
        m = inp.messages
        self.candle_msgs = m.get(T.CANDLES, [])
        self.pivot_msgs = m.get(T.PIVOTS, [])
        self.ref_msgs = m.get(T.INFERENCE_REFS, [])
        self.job_msgs = m.get(T.TRAINING_JOBS, [])
        self.version_msgs = m.get(T.MODEL_VERSIONS, [])
        self.candles = _first_by(self.candle_msgs, lambda v: (_series_of(v), v["open_time"]))
        self.pivots = _first_by(self.pivot_msgs, lambda v: (_series_of(v), v["pivot_id"]))
        self.refs = _first_by(self.ref_msgs, lambda v: (_series_of(v), v["inference_id"]))
        self.jobs = _first_by(self.job_msgs, lambda v: v["job_id"])
        self.wm: dict[str, int] = {}
        for (s, t) in self.candles:
            self.wm[s] = max(self.wm.get(s, t), t)

    def ran(self, stage: str) -> bool:
        return self.inp.stages_run.get(stage, False)

    def metrics(self, stage: str) -> Scrape | None:
        s = self.inp.metrics.get(stage)
        return s if s is not None and s.samples else None

    # -- counts --------------------------------------------------------------------------------
    def counts(self) -> dict[str, Any]:
        per_series: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for (s, _t) in self.candles:
            per_series[s]["candles"] += 1
        pivots_by_level: dict[str, int] = Counter()
        for (s, _pid), msg in self.pivots.items():
            v = msg.value or {}
            per_series[s]["pivots"] += 1
            pivots_by_level[f"L{v['level']} {v['kind']}"] += 1
        for (s, _iid) in self.refs:
            per_series[s]["refs"] += 1
        jobs_by_trigger: dict[str, int] = Counter()
        for msg in self.jobs.values():
            v = msg.value or {}
            jobs_by_trigger[v["trigger"]] += 1
            per_series[v["model_key"]][f"jobs {v['trigger']}"] += 1
        versions = _first_by(self.version_msgs, lambda v: (v["model_key"], v["version"]))
        for (k, _v) in versions:
            per_series[k]["model versions"] += 1
        dlq = {t: len(msgs) for t, msgs in self.inp.dlq.items()}
        dlq_reasons: dict[str, dict[str, int]] = {}
        for t, msgs in self.inp.dlq.items():
            c = Counter(m.headers.get("error.reason", m.headers.get("error.class", "?")) for m in msgs)
            if c:
                dlq_reasons[t] = dict(c)
        return {
            "messages": {t: len(self.inp.messages.get(t, [])) for t in
                         (T.CANDLES, T.PIVOTS, T.INFERENCE_REFS, T.TRAINING_JOBS, T.MODEL_VERSIONS)},
            "distinct": {T.CANDLES: len(self.candles), T.PIVOTS: len(self.pivots), T.INFERENCE_REFS: len(self.refs),
                         T.TRAINING_JOBS: len(self.jobs), T.MODEL_VERSIONS: len(versions)},
            "pivots_by_level": dict(sorted(pivots_by_level.items(), key=lambda kv: (int(kv[0][1:].split()[0]),
                                                                                     kv[0]))),
            "jobs_by_trigger": dict(sorted(jobs_by_trigger.items())),
            "per_series": {s: dict(v) for s, v in sorted(per_series.items(), key=lambda kv: _series_sort(kv[0]))},
            "dlq": dlq,
            "dlq_reasons": dlq_reasons,
        }

    # -- pivots: streaming == batch ------------------------------------------------------------
    def pivot_check(self) -> dict[str, Any]:
        if not self.ran("pivots"):
            self.checks.append(Check("pivots stream == batch detect_pivots", NOT_RUN, "pivots stage did not run"))
            return {}
        from services.pivots.detector import accepted_candles, detect_pivots

        by_series: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for m in sorted(self.candle_msgs, key=lambda m: (m.partition, m.offset)):
            if m.value is not None:
                by_series[_series_of(m.value)].append(m.value)
        stream_ids: dict[str, set[str]] = defaultdict(set)
        for (s, pid) in self.pivots:
            stream_ids[s].add(pid)
        rows = {}
        ok = True
        for s in sorted(set(by_series) | set(stream_ids), key=_series_sort):
            batch = {p["pivot_id"] for p in detect_pivots(accepted_candles(by_series.get(s, [])),  # type: ignore[arg-type]
                                                          self.inp.strengths)}
            missing, extra = batch - stream_ids[s], stream_ids[s] - batch
            ok &= not missing and not extra
            rows[s] = {"stream": len(stream_ids[s]), "batch": len(batch), "missing": len(missing),
                       "extra": len(extra)}
        self.checks.append(Check("pivots stream == batch detect_pivots", PASS if ok else FAIL,
                                 f"{sum(r['stream'] for r in rows.values())} pivots over {len(rows)} series"))
        return rows

    # -- join coverage -------------------------------------------------------------------------
    def coverage(self) -> dict[str, Any]:
        """Every distinct ref in exactly one bucket, by the coordinator's retention rule (join.py):
        a ref leaves state when ``wm > data_range_end + pivot_window + D + S`` and it either had its
        CANDLE job or ``wm > target + S``; ``wm`` = the series' last candle open_time in the topic."""
        candle_jobs = {(v["ref"]["inference_id"]) for m in self.jobs.values() if (v := m.value) and
                       v["trigger"] == "CANDLE"}
        pivot_jobs = Counter(v["ref"]["inference_id"] for m in self.jobs.values() if (v := m.value) and
                             v["trigger"] == "PIVOT")
        b = Counter[str]()
        for (s, iid), msg in self.refs.items():
            r = msg.value or {}
            tf = r["timeframe"]
            if tf not in TIMEFRAME_MS:
                b["invalid timeframe"] += 1
                continue
            h = self.inp.join_config.horizons(tf)
            wm = self.wm.get(s, -(2**62))
            out_of_window = wm > r["data_range_end"] + h.pivot_window + h.max_confirmation + h.max_lag
            if iid in candle_jobs:
                b["joined, expired" if out_of_window else "joined, pending (pivot window open)"] += 1
            elif (s, r["target_timestamp"]) in self.candles:
                b["target candle recorded but no CANDLE job"] += 1
            elif out_of_window and wm > r["target_timestamp"] + h.max_lag:
                b["expired, no target candle"] += 1
            else:
                b["pending, awaiting target candle"] += 1
        total = sum(b.values())
        data: dict[str, Any] = {
            "refs": len(self.refs),
            "buckets": dict(b),
            "sum": total,
            "refs_with_pivot_jobs": len(pivot_jobs),
            "pivot_jobs_per_ref": round(sum(pivot_jobs.values()) / len(self.refs), 2) if self.refs else 0.0,
        }
        if not self.ran("inference"):
            self.checks.append(Check("join coverage adds up", NOT_RUN, "no inference stage: no refs"))
            return data
        unexplained = b["target candle recorded but no CANDLE job"]
        late = None
        cm = self.metrics("coordinator")
        if cm is not None:
            late = int(cm.total("reftrain_coordinator_inputs_total", kind="ref", outcome="late"))
        status = PASS if total == len(self.refs) and (unexplained == 0 or (late is not None and
                                                                            unexplained <= late)) else FAIL
        if not self.ran("coordinator"):
            status = NOT_RUN
        self.checks.append(Check("join coverage adds up", status,
                                 f"{len(self.refs)} refs = " + " + ".join(f"{v} {k}" for k, v in b.items())))
        if cm is not None:
            accepted = int(cm.total("reftrain_coordinator_inputs_total", kind="ref", outcome="accepted"))
            exp = cm.by_label("reftrain_coordinator_expired_total", "reason")
            pending = int(cm.total("reftrain_coordinator_pending_refs"))
            coord = {
                "accepted": accepted,
                "duplicate": int(cm.total("reftrain_coordinator_inputs_total", kind="ref", outcome="duplicate")),
                "late": late or 0,
                "expired joined": int(exp.get("joined", 0)),
                "expired no_target_candle": int(exp.get("no_target_candle", 0)),
                "pending at stop": pending,
            }
            data["coordinator_metrics"] = coord
            adds = accepted == coord["expired joined"] + coord["expired no_target_candle"] + pending
            agree = (coord["expired joined"] == b["joined, expired"]
                     and coord["expired no_target_candle"] == b["expired, no target candle"]
                     and accepted + (late or 0) == len(self.refs))
            self.checks.append(Check(
                "coordinator: accepted refs = expired + pending", PASS if adds else FAIL,
                f"{accepted} = {coord['expired joined']} + {coord['expired no_target_candle']} + {pending}"))
            self.checks.append(Check(
                "coordinator metrics agree with the topics", PASS if agree else FAIL,
                f"accepted+late {accepted + (late or 0)} vs {len(self.refs)} refs in topic; expired "
                f"{coord['expired joined']}/{coord['expired no_target_candle']} vs "
                f"{b['joined, expired']}/{b['expired, no target candle']} recomputed"))
        return data

    # -- exactly once --------------------------------------------------------------------------
    def exactly_once(self) -> dict[str, Any]:
        if not (self.ran("coordinator") and self.ran("inference")):
            missing = [s for s in ("inference", "coordinator") if not self.ran(s)]
            self.checks.append(Check("exactly-once: job ids == oracle batch_join", NOT_RUN,
                                     f"{', '.join(missing)} did not run"))
            return {}
        by_series: dict[str, tuple[list[Any], list[Any], list[Any]]] = defaultdict(lambda: ([], [], []))
        for m in sorted(self.ref_msgs, key=lambda m: (m.partition, m.offset)):
            if m.value is not None:
                by_series[_series_of(m.value)][0].append(m.value)
        for m in sorted(self.candle_msgs, key=lambda m: (m.partition, m.offset)):
            if m.value is not None:
                by_series[_series_of(m.value)][1].append(m.value)
        for m in sorted(self.pivot_msgs, key=lambda m: (m.partition, m.offset)):
            if m.value is not None:
                by_series[_series_of(m.value)][2].append(m.value)
        oracle: dict[str, dict[str, Any]] = {}
        for refs, candles, pivots in by_series.values():
            if not refs:
                continue  # no ref, no job: skip the quadratic work for the series inference never saw
            for j in batch_join(refs, candles, pivots, self.inp.join_config):
                oracle[j["job_id"]] = j  # type: ignore[assignment]
        emitted = set(self.jobs)
        missing = sorted(set(oracle) - emitted)
        extra = sorted(emitted - set(oracle))
        mismatched = [jid for jid in sorted(emitted & set(oracle))
                      if _job_identity(self.jobs[jid].value or {}) != _job_identity(oracle[jid])]
        duplicates = len(self.job_msgs) - len(self.jobs)
        late_by_kind: dict[str, int] = {}
        cm = self.metrics("coordinator")
        if cm is not None:
            late_by_kind = {k: int(v) for k, v in
                            cm.by_label("reftrain_coordinator_late_inputs_total", "kind").items() if v}
        late = sum(late_by_kind.values())
        attributed = self._late_attribution([oracle[j] for j in missing], late_by_kind) if missing and late else None
        ok = ((not missing or (attributed is not None and attributed["ok"]))
              and not extra and not mismatched and duplicates == 0)
        detail = (f"emitted {len(emitted)} distinct ids ({len(self.job_msgs)} messages), oracle {len(oracle)}; "
                  f"missing {len(missing)}, extra {len(extra)}, content mismatches {len(mismatched)}, "
                  f"duplicates {duplicates}")
        if attributed is not None:
            detail += (f"; missing jobs of late inputs (ignored by contract, join.py): {attributed['refs']} refs, "
                       f"{attributed['pivots']} pivots, unexplained {attributed['unexplained']} jobs; the "
                       f"coordinator counted late {late_by_kind.get('ref', 0)} refs, "
                       f"{late_by_kind.get('pivot', 0)} pivots")
        elif late and not ok:
            detail += f"; the coordinator counted {late} late inputs (ignored by contract: see join.py)"
        self.checks.append(Check("exactly-once: job ids == oracle batch_join", PASS if ok else FAIL, detail))
        if late and ok:
            self.notes.append(
                f"the coordinator ignored {late} late inputs ({', '.join(f'{k}: {n}' for k, n in late_by_kind.items())}"
                "; more than max_lag_bars behind its candle watermark on arrival, see services/coordinator/join.py); "
                "the oracle over the full topics still equals the emitted jobs, so none of them could have joined")

        def describe(jid: str, j: dict[str, Any]) -> str:
            r = j["ref"]
            what = (f"pivot {j['pivot']['pivot_id'][:8]} L{j['pivot']['level']} {j['pivot']['kind']}"
                    if j["trigger"] == "PIVOT" and j.get("pivot") else f"target {r['target_timestamp']}")
            return f"{jid[:12]} {j['trigger']} {r['symbol']}:{r['timeframe']} ref@{r['data_range_end']} {what}"

        return {
            "ok": ok,
            "late_attribution": attributed,
            "emitted_messages": len(self.job_msgs),
            "emitted_distinct": len(emitted),
            "oracle": len(oracle),
            "missing": len(missing),
            "extra": len(extra),
            "mismatched": len(mismatched),
            "duplicates": duplicates,
            "late_inputs": late,
            "late_inputs_by_kind": late_by_kind,
            "missing_sample": [describe(j, oracle[j]) for j in missing[:20]],
            "extra_sample": [describe(j, self.jobs[j].value or {}) for j in extra[:20]],
            "mismatched_sample": mismatched[:20],
        }

    #: A transaction's messages carry their send time but become visible at its commit: a ref or
    #: pivot may reach the coordinator this much after its timestamp.
    VISIBILITY_SLACK_MS = 10_000

    def _late_attribution(self, missing: list[dict[str, Any]], late_by_kind: dict[str, int]) -> dict[str, Any]:
        """Are the oracle's jobs that were not emitted exactly those of LATE inputs, which the
        coordinator ignores by contract (join.py: the engine equals batch_join of the ACCEPTED
        inputs)? Late = its series' candle watermark more than S (max_lag) past its event time on
        arrival, which the topics bound from outside: an input can only have been late if the
        candles topic had passed event time + S by the time it was visible (its timestamp +
        VISIBILITY_SLACK_MS). A missing job is explained when its ref (or, for a PIVOT job, its
        pivot) got no job at all and could have been late; the explained refs and pivots may not
        outnumber the coordinator's restart-proof late counters (e.g. refs predicted after an
        inference outage longer than S bars of replay time)."""
        wm_at: dict[str, tuple[list[int], list[int]]] = {}
        by_series: dict[str, list[Msg]] = defaultdict(list)
        for m in self.candles.values():
            by_series[_series_of(m.value or {})].append(m)
        for ser, ms in by_series.items():
            ms.sort(key=lambda m: m.timestamp)
            ts, run, best = [], [], -(2**62)
            for m in ms:
                best = max(best, int((m.value or {})["open_time"]))
                ts.append(m.timestamp)
                run.append(best)
            wm_at[ser] = (ts, run)

        def could_be_late(ser: str, tf: str, event_time: int, published: int) -> bool:
            ts, run = wm_at.get(ser, ([], []))
            i = bisect.bisect_right(ts, published + self.VISIBILITY_SLACK_MS)
            if i == 0 or tf not in TIMEFRAME_MS:
                return False
            return run[i - 1] > event_time + self.inp.join_config.horizons(tf).max_lag

        with_jobs_ref = {(m.value or {})["ref"]["inference_id"] for m in self.jobs.values()}
        with_jobs_pivot = {((m.value or {}).get("pivot") or {}).get("pivot_id") for m in self.jobs.values()}
        refs: set[str] = set()
        pivots: set[str] = set()
        unexplained = 0
        for j in missing:
            r = j["ref"]
            ser = series_key(r["symbol"], r["timeframe"])
            ref_msg = self.refs.get((ser, r["inference_id"]))
            if (r["inference_id"] not in with_jobs_ref and ref_msg is not None
                    and could_be_late(ser, r["timeframe"], r["data_range_end"], ref_msg.timestamp)):
                refs.add(r["inference_id"])
                continue
            pv = j.get("pivot") or {}
            piv_msg = self.pivots.get((ser, pv.get("pivot_id")))
            if (j["trigger"] == "PIVOT" and pv.get("pivot_id") not in with_jobs_pivot and piv_msg is not None
                    and could_be_late(ser, r["timeframe"], pv["confirmed_at"], piv_msg.timestamp)):
                pivots.add(pv["pivot_id"])
                continue
            unexplained += 1
        ok = (unexplained == 0 and len(refs) <= late_by_kind.get("ref", 0)
              and len(pivots) <= late_by_kind.get("pivot", 0))
        return {"ok": ok, "refs": len(refs), "pivots": len(pivots), "unexplained": unexplained}

    # -- training ------------------------------------------------------------------------------
    def training(self) -> dict[str, Any]:
        versions = _first_by(self.version_msgs, lambda v: (v["model_key"], v["version"]))
        per_key: dict[str, list[Msg]] = defaultdict(list)
        for (k, _v), m in versions.items():
            per_key[k].append(m)
        for k in per_key:
            per_key[k].sort(key=lambda m: (m.value or {})["version"])
        loss: dict[str, list[dict[str, Any]]] = {}
        summary: dict[str, dict[str, Any]] = {}
        for k, ms in sorted(per_key.items(), key=lambda kv: _series_sort(kv[0])):
            vals = [m.value or {} for m in ms]
            summary[k] = {"versions": len(vals), "first": vals[0]["version"], "last": vals[-1]["version"],
                          "trained_jobs_last": vals[-1]["trained_jobs"],
                          "metrics_last": {a: round(b, 6) for a, b in sorted(vals[-1]["metrics"].items())}}
            loss[k] = [{"version": v["version"], "created_at": v["created_at"], "ts": m.timestamp,
                        "trained_jobs": v["trained_jobs"],
                        **{a: b for a, b in v["metrics"].items() if "loss" in a or "acc" in a}}
                       for m, v in zip(ms, vals, strict=True)]
        jobs_keys = {(m.value or {})["model_key"] for m in self.jobs.values()}
        used_versions = Counter((m.value or {})["model_version"] for m in self.refs.values())
        data: dict[str, Any] = {"models": summary, "loss": loss, "refs_by_model_version": dict(sorted(
            used_versions.items()))}
        if self.inp.model_versions_table is not None:
            data["store_model_versions"] = len(self.inp.model_versions_table)
        data["version_repeats"] = repeats = version_repeats(self.version_msgs)
        if not self.ran("trainer"):
            self.checks.append(Check(REPEAT_CHECK, NOT_RUN, "trainer did not run"))
            self.checks.append(Check("model versions advanced", NOT_RUN, "trainer did not run"))
            self.checks.append(Check("inference used trained versions", NOT_RUN, "trainer did not run"))
        else:
            advanced = bool(jobs_keys) and all(k in summary and summary[k]["last"] >= 1 for k in jobs_keys)
            self.checks.append(Check(
                REPEAT_CHECK, PASS if not repeats["conflicts"] else FAIL,
                f"{repeats['messages']} messages, {repeats['distinct']} distinct versions, "
                f"{repeats['identical_repeats']} identical repeats (one version each), "
                f"{len(repeats['conflicts'])} conflicting" + (": " + "; ".join(repeats["conflicts"][:5])
                                                            if repeats["conflicts"] else "")))
            self.checks.append(Check("model versions advanced", PASS if advanced else FAIL,
                                     ", ".join(f"{k}: v{s['first']}..v{s['last']} ({s['versions']})"
                                               for k, s in summary.items()) or "no model-versions"))
            if self.ran("inference"):
                newer = sum(n for v, n in used_versions.items() if v >= 1)
                self.checks.append(Check("inference used trained versions", PASS if newer else FAIL,
                                         f"{newer} of {len(self.refs)} refs made by a version >= 1"))
        data["accuracy"] = self.accuracy(per_key)
        return data

    def accuracy(self, versions_by_key: dict[str, list[Msg]]) -> dict[str, Any]:
        """Action accuracy of each ref against its realised target candle, vs always-HOLD and
        previous-move, on refs whose model version had seen no outcome from after the ref's window.

        Why this is out-of-sample: a ref's prediction is made by version v from a window that ends at
        data_range_end; its outcome is the target candle after it. Live, every job that trained v was
        resolved by a candle or pivot at or before the time v was used, hence before the target: the
        model never trained on the outcome it is scored on. In a replay faster than real time that is
        no longer guaranteed (pivots may be confirmed ahead of inference), so it is CHECKED here: a
        ref is scored only if every job published before its version (an upper bound of what that
        version trained on) was resolved at or before data_range_end; the others are counted as
        excluded.
        """
        # Upper bound of each version's information horizon: max resolution time of jobs published
        # before the version's message.
        horizon: dict[tuple[str, int], int] = {}
        jobs_by_key: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for m in self.jobs.values():
            j = m.value or {}
            resolved = (j["ref"]["target_timestamp"] if j["trigger"] == "CANDLE"
                        else (j.get("pivot") or {}).get("confirmed_at", j["ref"]["target_timestamp"]))
            jobs_by_key[j["model_key"]].append((m.timestamp, resolved))
        for k, ms in versions_by_key.items():
            js = sorted(jobs_by_key.get(k, []))
            i, best = 0, -(2**62)
            for m in sorted(ms, key=lambda m: m.timestamp):
                while i < len(js) and js[i][0] <= m.timestamp:
                    best = max(best, js[i][1])
                    i += 1
                horizon[(k, (m.value or {})["version"])] = best
        rows: list[dict[str, Any]] = []
        excluded = no_target = 0
        closes_of: dict[str, tuple[Any, Any]] = {}
        for (ser, t), cm in self.candles.items():
            closes_of.setdefault(ser, ([], []))
            closes_of[ser][0].append(t)
            closes_of[ser][1].append(float((cm.value or {})["close"]))
        series_arrays = {ser: (np.array(ts), np.array(cs)) for ser, (ts, cs) in closes_of.items()}
        for ser, (ts, cs) in series_arrays.items():
            order = np.argsort(ts)
            series_arrays[ser] = (ts[order], cs[order])

        def vol_of(r: dict[str, Any], s: str) -> float | None:
            """The label rule's window volatility: from the window's candles on the topic, else the
            built-in scheme's ret_scale (equal by construction), else unknown."""
            ts, cs = series_arrays.get(s, (np.zeros(0), np.zeros(0)))
            a, b = np.searchsorted(ts, r["data_range_start"]), np.searchsorted(ts, r["data_range_end"], side="right")
            if b - a == r["window_size"] and b - a >= 2:
                return labels.window_vol(cs[a:b])
            rs = r["norm_params"]["params"].get("ret_scale")
            return float(rs) if rs else None

        for (s, _iid), m in self.refs.items():
            r = m.value or {}
            target = self.candles.get((s, r["target_timestamp"]))
            if target is None:
                no_target += 1
                continue
            if horizon.get((r["model_key"], r["model_version"]), -(2**62)) > r["data_range_end"]:
                excluded += 1
                continue
            vol = vol_of(r, s)
            last_c = self.candles.get((s, r["data_range_end"]))
            if vol is None or last_c is None:
                no_target += 1
                continue
            last_close = float((last_c.value or {})["close"])
            close = float((target.value or {})["close"])
            actual = labels.action_label(last_close, close, vol)
            prev = self.candles.get((s, r["data_range_end"] - TIMEFRAME_MS[r["timeframe"]]))
            prev_move = (labels.previous_move(float((prev.value or {})["close"]), last_close, vol)
                         if prev is not None else None)
            p = r["action_probs"]
            pc = r.get("predicted_candle")
            rows.append({"t": r["data_range_end"], "target": r["target_timestamp"], "series": s,
                         "version": r["model_version"], "model": r["predicted_action"] == actual,
                         "hold": actual == "HOLD", "prev": None if prev_move is None else prev_move == actual,
                         "actual": actual, "y": labels.ACTION_INDEX[actual],
                         "prev_y": -1 if prev_move is None else labels.ACTION_INDEX[prev_move],
                         "probs": [float(p["buy"]), float(p["sell"]), float(p["hold"])],
                         "log_ret": math.log(close / last_close),
                         "pred_close_bp": None if not pc else math.log(float(pc["close"]) / last_close) * 1e4})
        rows.sort(key=lambda x: x["t"])

        def score(sel: list[dict[str, Any]]) -> dict[str, Any]:
            prev = [x["prev"] for x in sel if x["prev"] is not None]
            return {"n": len(sel), "model": _ratio(sum(x["model"] for x in sel), len(sel)),
                    "always_hold": _ratio(sum(x["hold"] for x in sel), len(sel)),
                    "previous_move": _ratio(sum(prev), len(prev))}

        by_version = {}
        for v in sorted({x["version"] for x in rows}):
            by_version[v] = score([x for x in rows if x["version"] == v])
        buckets = []
        n_buckets = min(10, max(1, len(rows) // 50)) if rows else 0
        for b in range(n_buckets):
            sel = rows[b * len(rows) // n_buckets:(b + 1) * len(rows) // n_buckets]
            if sel:
                buckets.append({"from": sel[0]["t"], "to": sel[-1]["t"], **score(sel)})
        overall = score(rows)
        scores = self._scores(rows)
        if self.ran("inference") and rows:
            self.notes.append(
                f"accuracy on {len(rows)} out-of-sample refs: model {overall['model']}, always-HOLD "
                f"{overall['always_hold']}, previous-move {overall['previous_move']} ({excluded} refs excluded "
                f"because their version may have trained on a later outcome, {no_target} without a target "
                f"candle yet)")
        return {"overall": overall, "by_version": by_version, "over_time": buckets, "excluded_leak": excluded,
                "no_target": no_target,
                "labels": dict(Counter(x["actual"] for x in rows)), "scores": scores}

    @staticmethod
    def _scores(rows: list[dict[str, Any]], fee_bp: float = 7.5) -> dict[str, Any]:
        """ops.scoring's action block (log loss, Brier, ECE, hit rate, close MAE, PnL) overall and per
        series. The class prior of each ref is fitted on the outcomes of refs of its series whose
        target candle opened at or before the ref's window end (known before the prediction)."""
        out: dict[str, Any] = {}
        by_series: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for x in rows:
            by_series[x["series"]].append(x)
        for sel in by_series.values():
            sel.sort(key=lambda x: x["t"])
            known = sorted(sel, key=lambda x: x["target"])
            counts, j = np.ones(3), 0
            for x in sel:
                while j < len(known) and known[j]["target"] <= x["t"]:
                    counts[known[j]["y"]] += 1
                    j += 1
                x["prior"] = (counts / counts.sum()).tolist()

        def block(sel: list[dict[str, Any]]) -> dict[str, Any]:
            pc = [x["pred_close_bp"] for x in sel]
            return scoring.action_block(
                np.array([x["probs"] for x in sel]).reshape(-1, 3), np.array([x["y"] for x in sel], dtype=np.int64),
                np.array([x["prior"] for x in sel]).reshape(-1, 3),
                np.array([x["prev_y"] for x in sel], dtype=np.int64), np.array([x["log_ret"] for x in sel]),
                None if any(v is None for v in pc) else np.array(pc, dtype=np.float64), fee_bp)

        if rows:
            out["all"] = block(sorted(rows, key=lambda x: (x["series"], x["t"])))
            for ser, sel in sorted(by_series.items()):
                out[ser] = block(sel)
        return out

    # -- throughput and latency ----------------------------------------------------------------
    def timing(self) -> dict[str, Any]:
        through: dict[str, Any] = {}
        for topic, msgs in ((T.CANDLES, self.candle_msgs), (T.PIVOTS, self.pivot_msgs),
                            (T.INFERENCE_REFS, self.ref_msgs), (T.TRAINING_JOBS, self.job_msgs),
                            (T.MODEL_VERSIONS, self.version_msgs)):
            if not msgs:
                continue
            ts = [m.timestamp for m in msgs]
            span = (max(ts) - min(ts)) / 1000
            through[topic] = {"stage": PRODUCER_OF.get(topic, "?"), "messages": len(msgs), "span_s": round(span, 1),
                              "per_s": round(len(msgs) / span, 1) if span > 0 else None}
        if self.version_msgs and self.job_msgs:
            last = _first_by(self.version_msgs, lambda v: v["model_key"] + f"#{v['version']:012d}")
            per_key: dict[str, int] = {}
            for name in sorted(last):
                mv = last[name].value or {}
                per_key[mv["model_key"]] = mv["trained_jobs"]
            start = min(m.timestamp for m in self.job_msgs)
            end = max(m.timestamp for m in self.version_msgs)
            span = (end - start) / 1000
            n_trained = sum(per_key.values())
            through["jobs trained"] = {"stage": "trainer", "messages": n_trained, "span_s": round(span, 1),
                                       "per_s": round(n_trained / span, 1) if span > 0 else None}
        lat: dict[str, Any] = {}
        candle_to_ref = []
        for (s, _), m in self.refs.items():
            c = self.candles.get((s, (m.value or {})["data_range_end"]))
            if c is not None:
                candle_to_ref.append(m.timestamp - c.timestamp)
        candle_to_pivot = []
        for (s, _), m in self.pivots.items():
            c = self.candles.get((s, (m.value or {})["confirmed_at"]))
            if c is not None:
                candle_to_pivot.append(m.timestamp - c.timestamp)
        candle_to_job: dict[str, list[int]] = defaultdict(list)
        window_end_to_job: list[int] = []
        for m in self.jobs.values():
            j = m.value or {}
            r = j["ref"]
            s = series_key(r["symbol"], r["timeframe"])
            t = r["target_timestamp"] if j["trigger"] == "CANDLE" else (j.get("pivot") or {}).get("confirmed_at")
            c = self.candles.get((s, t))
            if c is not None:
                candle_to_job[j["trigger"]].append(m.timestamp - c.timestamp)
            w = self.candles.get((s, r["data_range_end"]))
            if w is not None:
                window_end_to_job.append(m.timestamp - w.timestamp)
        lat["candle -> pivot (confirming candle)"] = percentiles(candle_to_pivot)
        lat["window-end candle -> ref (inference)"] = percentiles(candle_to_ref)
        for trig, xs in sorted(candle_to_job.items()):
            lat[f"resolving candle -> {trig} job"] = percentiles(xs)
        lat["window-end candle -> job (whole chain)"] = percentiles(window_end_to_job)
        trained, method = self._job_to_trained()
        if trained is not None:
            lat[f"job -> trained ({method})"] = percentiles(trained)
        lat = {k: {a: (round(b / 1000, 3) if isinstance(b, int | float) and a != "n" else b) for a, b in v.items()}
               for k, v in lat.items() if v["n"]}
        return {"throughput": through, "latency_s": lat}

    def _job_to_trained(self) -> tuple[list[int] | None, str]:
        """Job published -> first model version of its key published after it that includes it.

        Jobs of one model key share one partition, so the trainer sees them in offset order; if the
        versions' ``trained_jobs`` are cumulative (non-decreasing), the version that first reaches
        k+1 trained jobs is the one that includes the k-th job. Otherwise the first version published
        after the job is used (a lower bound)."""
        if not self.version_msgs or not self.jobs:
            return None, ""
        vers: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
        for m in _first_by(self.version_msgs, lambda v: (v["model_key"], v["version"])).values():
            v = m.value or {}
            vers[v["model_key"]].append((v["version"], m.timestamp, v["trained_jobs"]))
        jobs: dict[str, list[Msg]] = defaultdict(list)
        for m in self.jobs.values():
            jobs[(m.value or {})["model_key"]].append(m)
        out: list[int] = []
        cumulative = all(
            all(b[2] >= a[2] for a, b in zip(sorted(vs), sorted(vs)[1:], strict=False)) for vs in vers.values())
        for k, js in jobs.items():
            js.sort(key=lambda m: (m.partition, m.offset))
            vs = sorted(vers.get(k, []))
            if cumulative:
                i = 0
                for idx, m in enumerate(js):
                    while i < len(vs) and vs[i][2] < idx + 1:
                        i += 1
                    if i < len(vs):
                        out.append(max(0, vs[i][1] - m.timestamp))
            else:
                times = sorted(t for _v, t, _n in vs)
                for m in js:
                    later = [t for t in times if t >= m.timestamp]
                    if later:
                        out.append(later[0] - m.timestamp)
        return out, "cumulative trained_jobs" if cumulative else "next version after the job"

    # -- everything ----------------------------------------------------------------------------
    def sections(self) -> dict[str, Any]:
        out = {
            "counts": self.counts(),
            "pivot_check": self.pivot_check(),
            "coverage": self.coverage(),
            "exactly_once": self.exactly_once(),
            "training": self.training(),
            "timing": self.timing(),
        }
        for t in self.inp.incomplete_reads:
            self.notes.append(f"topic {t} was not read to its end (open transaction or timeout)")
        dlq_total = sum(out["counts"]["dlq"].values())
        self.checks.append(Check("no DLQ entries", PASS if dlq_total == 0 else FAIL,
                                 ", ".join(f"{t}: {n}" for t, n in out["counts"]["dlq"].items() if n) or "0"))
        return out


#: The idempotence contract of model-versions (docs/semantics.md, "Repeated ModelVersions").
REPEAT_CHECK = "model-versions: a repeated version names the same checkpoint"


def version_repeats(msgs: Sequence[Msg]) -> dict[str, Any]:
    """Repeated ModelVersions: a (model_key, version) announced more than once is ONE version when
    every message names the same checkpoint (path, and sha256 where both carry one); a repeat naming
    another checkpoint is a conflict (inference refuses it: services/inference/models.py)."""
    seen: dict[tuple[str, int], list[tuple[str, str | None]]] = defaultdict(list)
    for m in sorted(msgs, key=lambda m: (m.partition, m.offset)):
        v = m.value
        if v is not None:
            seen[(v["model_key"], int(v["version"]))].append((str(v["checkpoint_path"]),
                                                              v.get("checkpoint_sha256") or None))
    repeats = 0
    conflicts: list[str] = []
    for (key, version), idents in sorted(seen.items()):
        first_path, first_sha = idents[0]
        for path, sha in idents[1:]:
            same = path == first_path and (sha is None or first_sha is None or sha.lower() == first_sha.lower())
            if same:
                repeats += 1
            else:
                conflicts.append(f"{key} v{version}: {first_path} ({(first_sha or '?')[:12]}) vs {path} "
                                 f"({(sha or '?')[:12]})")
    return {"messages": sum(len(i) for i in seen.values()), "distinct": len(seen), "identical_repeats": repeats,
            "conflicts": conflicts}


def _job_identity(j: dict[str, Any]) -> tuple[Any, ...]:
    """What must agree between an emitted job and the oracle's (created_at excluded by contract)."""
    return (j["trigger"], j["model_key"], j["ref"]["inference_id"],
            (j.get("pivot") or {}).get("pivot_id"), (j.get("actual_candle") or {}).get("open_time"),
            (j.get("actual_candle") or {}).get("close"))


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def _series_sort(series: str) -> tuple[str, int]:
    try:
        sym, tf = split_series(series)
        return sym, TIMEFRAME_MS[tf]
    except ValueError:
        return series, 0
