"""The coordinator's join: InferenceRefs meet their target candle (CANDLE) and nearby pivots (PIVOT).

Pure logic, no Kafka: the wiring feeds records in arrival order, publishes ``Output.jobs`` and writes
``Output.changes`` to the changelog inside the same transaction, and on start-up replays that
changelog through ``JoinEngine.restore``.

Semantics (docs/semantics.md, rules 5-8), per series ``SYMBOL:TIMEFRAME``:

* CANDLE: a ref joins the candle whose open_time == ref.target_timestamp, whichever arrives first.
* PIVOT: a pivot joins every ref with ``|ref.data_range_end - pivot.pivot_time| <= pivot_window``,
  in either arrival order, provided ``pivot.confirmed_at - pivot.pivot_time <= D`` (a data rule:
  pivots that took longer to confirm join nothing; the oracle applies the same rule).
* One job per (ref, candle) and per (ref, pivot); job ids from ``reftrain.records.job_id``.
* Inputs are identified by (series, inference_id), (series, open_time), (series, pivot_id). The
  first accepted arrival wins; a repeat is ``duplicate`` (same content; a ref's created_at is
  ignored) or ``conflict`` (different content), and neither changes anything.

Time. The watermark ``wm`` of a series is the max candle open_time seen. Each input has an event time:
candle -> open_time, ref -> data_range_end (refs are made right after that candle closed), pivot ->
confirmed_at (pivots are made right after that candle closed). An input is LATE when, at its
first arrival, ``wm > event_time + S`` (S = max_lag). Late inputs are counted, reported as an event,
and otherwise ignored (no jobs, no state); a repeat of a late input is late too, because wm only
grows. Being late depends on the arrival interleaving; everything else does not.

Retention (what keeps state bounded), with pw = pivot window, D = max confirmation, S = max lag:

* candle: removed when ``wm > open_time + S``;
* pivot:  removed when ``wm > max(pivot_time + pw, confirmed_at) + S``;
* ref:    removed ("expired") when ``wm > data_range_end + pw + D + S`` AND its CANDLE job was
  emitted or ``wm > target_timestamp + S``. Reason ``joined`` if the CANDLE job was emitted,
  ``no_target_candle`` otherwise (its PIVOT job count is in the event).

Guarantee (tested in tests/unit/coordinator with hypothesis). For ANY arrival order of the three
inputs, across any number of series, with duplicates and conflicts, and with a restore from the
changelog at any point:

    set of emitted jobs (job_id -> content minus created_at), each emitted exactly once
    == oracle.batch_join(accepted refs, accepted candles, accepted pivots)

where "accepted" are the arrivals the engine counted as ``accepted`` (i.e. every valid input minus
late ones and minus later copies). Hence, if no input is late -- at every arrival
``wm <= event_time + S``, which holds when the candles topic runs at most S bars ahead of the
other two topics and candles are in open_time order per series up to re-sends -- and each topic's
order per series is preserved (so "first arrival" is "first in the topic"), the engine equals
``batch_join`` of the full topics. Why: whichever of a joinable pair arrives second still finds
the other in state (the retention rules above are exactly wide enough), and a copy arriving after
its original left state is already late, so no pair is joined twice.

Arrival outcomes (``Output.counts`` keys ``<kind>.<outcome>``, kind in ref/candle/pivot): accepted,
duplicate, conflict, late, invalid (unknown timeframe; ref target_timestamp <= data_range_end;
pivot confirmed_at < pivot_time), and for pivots ``slow_confirmation`` (confirmed_at - pivot_time
> D). Departures: ``ref.expired.joined``, ``ref.expired.no_target_candle``, ``candle.evicted``,
``pivot.evicted``. Jobs: ``job.CANDLE``, ``job.PIVOT``. Invariant: ref.accepted ==
ref.expired.* + pending refs.

State and changelog. Keys start with the series (so a compacted, series-keyed changelog can be
partitioned like the inputs): ``<series>|ref|<inference_id>`` -> ``{"ref": InferenceRef,
"candle_joined": bool, "pivot_jobs": int}``, ``<series>|candle|<open_time>`` -> Candle,
``<series>|pivot|<pivot_id>`` -> Pivot, ``<series>|wm`` -> ``{"wm": int}``; ``None`` deletes. Values
are JSON-able and one record each (a few hundred bytes). Restore only needs the latest value per key
(order between keys does not matter), so log compaction is safe; after replaying the changes of
calls 1..n, the engine is indistinguishable from the original after call n.
"""

from __future__ import annotations

import bisect
import heapq
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict, cast

from reftrain.records import (
    TIMEFRAME_MS,
    Candle,
    InferenceRef,
    Pivot,
    TrainingJob,
    Trigger,
    job_id,
    series_key,
    split_series,
)
from services.coordinator.config import Horizons, JoinConfig

STATE_LAYOUT_VERSION = 1
"""Version of the key/value layout below; put it in the changelog topic name or a header."""

Kind = Literal["ref", "candle", "pivot"]
StateValue = dict[str, Any]
Change = tuple[str, StateValue | None]

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
CONFLICT = "conflict"
LATE = "late"
INVALID = "invalid"
SLOW_CONFIRMATION = "slow_confirmation"
EXPIRED = "expired"
EVICTED = "evicted"
JOINED = "joined"
NO_TARGET_CANDLE = "no_target_candle"

ARRIVAL_OUTCOMES: tuple[str, ...] = (ACCEPTED, DUPLICATE, CONFLICT, LATE, INVALID, SLOW_CONFIRMATION)
EXPIRY_REASONS: tuple[str, ...] = (JOINED, NO_TARGET_CANDLE)


class RefState(TypedDict):
    """Changelog value of a pending ref: the ref and what it has been joined with so far."""

    ref: InferenceRef
    candle_joined: bool
    pivot_jobs: int


@dataclass(frozen=True)
class Event:
    """Something an operator may want in the log: a ref's expiry, or a late/conflicting/invalid input."""

    kind: Kind
    outcome: str
    series: str
    id: str
    reason: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "outcome": self.outcome,
            "series": self.series,
            "id": self.id,
            "reason": self.reason,
            **self.detail,
        }


@dataclass
class Output:
    """What one input produced: jobs to publish, changelog entries to write, events and counts."""

    jobs: list[TrainingJob] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)


def ref_key(series: str, inference_id: str) -> str:
    return f"{series}|ref|{inference_id}"


def candle_key(series: str, open_time: int) -> str:
    return f"{series}|candle|{open_time}"


def pivot_key(series: str, pivot_id: str) -> str:
    return f"{series}|pivot|{pivot_id}"


def watermark_key(series: str) -> str:
    return f"{series}|wm"


def parse_key(key: str) -> tuple[str, str, str]:
    """(series, kind, id) of a state key, kind in ref/candle/pivot/wm; ValueError if malformed."""
    if key.endswith("|wm"):
        series, kind, ident = key[: -len("|wm")], "wm", ""
    else:
        parts = key.rsplit("|", 2)
        if len(parts) != 3 or parts[1] not in ("ref", "candle", "pivot") or not parts[2]:
            raise ValueError(f"malformed coordinator state key {key!r}")
        series, kind, ident = parts
    split_series(series)
    return series, kind, ident


def event_time(record: Candle | InferenceRef | Pivot) -> int:
    """The time lateness is measured from; the wiring may use it to align topics when catching up."""
    if "inference_id" in record:
        return cast(InferenceRef, record)["data_range_end"]
    if "pivot_id" in record:
        return cast(Pivot, record)["confirmed_at"]
    return record["open_time"]


def _clone(value: Any) -> Any:
    """Deep copy of a JSON-shaped tree (dicts, lists, scalars): records are that, and it is ~10x
    cheaper than copy.deepcopy, which dominated the engine's profile."""
    if type(value) is dict:
        return {k: _clone(v) for k, v in value.items()}
    if type(value) is list:
        return [_clone(v) for v in value]
    return value


def _copy(value: object) -> StateValue:
    """A private copy, so neither the caller's records nor emitted values alias the engine's state."""
    return cast(StateValue, _clone(value))


def _same_ref(a: InferenceRef, b: InferenceRef) -> bool:
    """Same prediction: every field but created_at (a re-run stamps a new wall clock)."""
    return {k: v for k, v in a.items() if k != "created_at"} == {
        k: v for k, v in b.items() if k != "created_at"
    }


def _make_job(
    ref: InferenceRef, trigger: Trigger, candle: Candle | None, pivot: Pivot | None, now_ms: int
) -> TrainingJob:
    ident: str | int = ref["target_timestamp"] if pivot is None else pivot["pivot_id"]
    return TrainingJob(
        job_id=job_id(ref["inference_id"], trigger, ident),
        model_key=ref["model_key"],
        trigger=trigger,
        ref=_clone(ref),
        actual_candle=_clone(candle),
        pivot=_clone(pivot),
        created_at=now_ms,
    )


class _Series:
    """State of one series plus indexes derived from it (rebuilt on restore, never logged)."""

    def __init__(self, name: str, horizons: Horizons) -> None:
        self.name = name
        self.h = horizons
        self.wm: int | None = None
        self.refs: dict[str, RefState] = {}
        self.refs_by_target: dict[int, set[str]] = {}
        self.refs_by_time: list[tuple[int, str]] = []
        self.candles: dict[int, Candle] = {}
        self.pivots: dict[str, Pivot] = {}
        self.pivots_by_time: list[tuple[int, str]] = []
        # Lazy-deletion heaps of (deadline, id): an entry may be stale, the current deadline decides.
        self.ref_heap: list[tuple[int, str]] = []
        self.candle_heap: list[tuple[int, int]] = []
        self.pivot_heap: list[tuple[int, str]] = []

    # deadlines: the item leaves state once wm > deadline
    def ref_deadline(self, st: RefState) -> int:
        r = st["ref"]
        d = r["data_range_end"] + self.h.pivot_window + self.h.max_confirmation + self.h.max_lag
        if not st["candle_joined"]:
            d = max(d, r["target_timestamp"] + self.h.max_lag)
        return d

    def pivot_deadline(self, p: Pivot) -> int:
        return max(p["pivot_time"] + self.h.pivot_window, p["confirmed_at"]) + self.h.max_lag

    def candle_deadline(self, open_time: int) -> int:
        return open_time + self.h.max_lag

    def is_late(self, event_time_ms: int) -> bool:
        return self.wm is not None and self.wm > event_time_ms + self.h.max_lag

    # index maintenance
    def put_ref(self, st: RefState) -> None:
        r = st["ref"]
        iid = r["inference_id"]
        if iid in self.refs:
            self.drop_ref(iid)
        self.refs[iid] = st
        self.refs_by_target.setdefault(r["target_timestamp"], set()).add(iid)
        bisect.insort(self.refs_by_time, (r["data_range_end"], iid))
        heapq.heappush(self.ref_heap, (self.ref_deadline(st), iid))

    def drop_ref(self, iid: str) -> RefState:
        st = self.refs.pop(iid)
        r = st["ref"]
        bucket = self.refs_by_target[r["target_timestamp"]]
        bucket.discard(iid)
        if not bucket:
            del self.refs_by_target[r["target_timestamp"]]
        i = bisect.bisect_left(self.refs_by_time, (r["data_range_end"], iid))
        del self.refs_by_time[i]
        return st

    def put_candle(self, c: Candle) -> None:
        self.candles[c["open_time"]] = c
        heapq.heappush(self.candle_heap, (self.candle_deadline(c["open_time"]), c["open_time"]))

    def put_pivot(self, p: Pivot) -> None:
        pid = p["pivot_id"]
        if pid in self.pivots:
            self.drop_pivot(pid)
        self.pivots[pid] = p
        bisect.insort(self.pivots_by_time, (p["pivot_time"], pid))
        heapq.heappush(self.pivot_heap, (self.pivot_deadline(p), pid))

    def drop_pivot(self, pid: str) -> Pivot:
        p = self.pivots.pop(pid)
        i = bisect.bisect_left(self.pivots_by_time, (p["pivot_time"], pid))
        del self.pivots_by_time[i]
        return p

    def refs_near(self, t: int) -> list[str]:
        """Inference ids with |data_range_end - t| <= pivot window, by (data_range_end, id)."""
        lo = bisect.bisect_left(self.refs_by_time, (t - self.h.pivot_window, ""))
        out: list[str] = []
        for when, iid in self.refs_by_time[lo:]:
            if when > t + self.h.pivot_window:
                break
            out.append(iid)
        return out

    def pivots_near(self, t: int) -> list[str]:
        """Pivot ids with |pivot_time - t| <= pivot window, by (pivot_time, id)."""
        lo = bisect.bisect_left(self.pivots_by_time, (t - self.h.pivot_window, ""))
        out: list[str] = []
        for when, pid in self.pivots_by_time[lo:]:
            if when > t + self.h.pivot_window:
                break
            out.append(pid)
        return out


class JoinEngine:
    """Streaming join of refs, candles and pivots; deterministic, restorable from its own changes.

    Not thread-safe: one engine per consumer (per assigned partition set). ``now_ms`` only stamps
    ``created_at`` of the jobs; it never influences what is joined or expired.
    """

    def __init__(self, config: JoinConfig | None = None) -> None:
        self.config = config or JoinConfig()
        self._series: dict[str, _Series] = {}
        self.counters: Counter[str] = Counter()
        """Cumulative counts since this object was created (metrics; not part of the state)."""

    # ------------------------------------------------------------------ inputs

    def on_ref(self, ref: InferenceRef, now_ms: int) -> Output:
        """Handle one InferenceRef: dedupe, lateness, join with the stored target candle and pivots."""
        out = Output()
        tf = ref.get("timeframe")
        if tf not in TIMEFRAME_MS or ref["target_timestamp"] <= ref["data_range_end"]:
            return self._reject(out, "ref", INVALID, ref.get("symbol", "?"), tf, ref.get("inference_id", "?"))
        s = self._series_of(ref["symbol"], tf)
        iid = ref["inference_id"]
        old = s.refs.get(iid)
        if old is not None:
            if _same_ref(old["ref"], ref):
                return self._done(self._count(out, "ref", DUPLICATE))
            return self._note(out, "ref", CONFLICT, s.name, iid)
        t = ref["data_range_end"]
        if s.is_late(t):
            return self._note(out, "ref", LATE, s.name, iid, watermark=s.wm, event_time=t)
        self._count(out, "ref", ACCEPTED)
        st = RefState(ref=cast(InferenceRef, _copy(ref)), candle_joined=False, pivot_jobs=0)
        candle = s.candles.get(ref["target_timestamp"])
        if candle is not None:
            self._emit(out, _make_job(st["ref"], "CANDLE", candle, None, now_ms))
            st["candle_joined"] = True
        for pid in s.pivots_near(t):
            self._emit(out, _make_job(st["ref"], "PIVOT", None, s.pivots[pid], now_ms))
            st["pivot_jobs"] += 1
        s.put_ref(st)
        out.changes.append((ref_key(s.name, iid), _copy(st)))
        self._evict(s, out)
        return self._done(out)

    def on_candle(self, candle: Candle, now_ms: int) -> Output:
        """Handle one completed candle: join refs waiting for it, advance the watermark, evict."""
        out = Output()
        tf = candle.get("timeframe")
        if tf not in TIMEFRAME_MS:
            return self._reject(
                out, "candle", INVALID, candle.get("symbol", "?"), tf, candle.get("open_time")
            )
        s = self._series_of(candle["symbol"], tf)
        ot = candle["open_time"]
        old = s.candles.get(ot)
        if old is not None:
            if old == candle:
                return self._done(self._count(out, "candle", DUPLICATE))
            return self._note(out, "candle", CONFLICT, s.name, str(ot))
        if s.is_late(ot):
            return self._note(out, "candle", LATE, s.name, str(ot), watermark=s.wm, event_time=ot)
        self._count(out, "candle", ACCEPTED)
        c = cast(Candle, _copy(candle))
        s.put_candle(c)
        out.changes.append((candle_key(s.name, ot), _copy(c)))
        for iid in sorted(s.refs_by_target.get(ot, ())):
            st = s.refs[iid]
            # Not joined yet: a ref is only ever joined by this open_time, and this candle is new.
            self._emit(out, _make_job(st["ref"], "CANDLE", c, None, now_ms))
            st["candle_joined"] = True
            heapq.heappush(s.ref_heap, (s.ref_deadline(st), iid))
            out.changes.append((ref_key(s.name, iid), _copy(st)))
        if s.wm is None or ot > s.wm:
            s.wm = ot
            out.changes.append((watermark_key(s.name), {"wm": ot}))
        self._evict(s, out)
        return self._done(out)

    def on_pivot(self, pivot: Pivot, now_ms: int) -> Output:
        """Handle one confirmed pivot: join every stored ref within the pivot window."""
        out = Output()
        tf = pivot.get("timeframe")
        if tf not in TIMEFRAME_MS or pivot["confirmed_at"] < pivot["pivot_time"]:
            return self._reject(out, "pivot", INVALID, pivot.get("symbol", "?"), tf, pivot.get("pivot_id"))
        s = self._series_of(pivot["symbol"], tf)
        pid = pivot["pivot_id"]
        pt = pivot["pivot_time"]
        if pivot["confirmed_at"] - pt > s.h.max_confirmation:
            # A data rule, not an arrival rule: the oracle drops the same pivots.
            return self._note(out, "pivot", SLOW_CONFIRMATION, s.name, pid, delay=pivot["confirmed_at"] - pt)
        old = s.pivots.get(pid)
        if old is not None:
            if old == pivot:
                return self._done(self._count(out, "pivot", DUPLICATE))
            return self._note(out, "pivot", CONFLICT, s.name, pid)
        if s.is_late(pivot["confirmed_at"]):
            return self._note(
                out, "pivot", LATE, s.name, pid, watermark=s.wm, event_time=pivot["confirmed_at"]
            )
        self._count(out, "pivot", ACCEPTED)
        p = cast(Pivot, _copy(pivot))
        s.put_pivot(p)
        out.changes.append((pivot_key(s.name, pid), _copy(p)))
        for iid in s.refs_near(pt):
            st = s.refs[iid]
            self._emit(out, _make_job(st["ref"], "PIVOT", None, p, now_ms))
            st["pivot_jobs"] += 1
            out.changes.append((ref_key(s.name, iid), _copy(st)))
        self._evict(s, out)
        return self._done(out)

    # ------------------------------------------------------------------ state

    def restore(self, key: str, value: StateValue | None) -> None:
        """Apply one changelog entry (``None`` deletes). Only the latest value per key matters."""
        series, kind, ident = parse_key(key)
        s = self._series_of(*split_series(series))
        if kind == "wm":
            s.wm = None if value is None else int(value["wm"])
        elif kind == "ref":
            if value is None:
                if ident in s.refs:
                    s.drop_ref(ident)
            else:
                st = cast(RefState, _clone(value))
                if st["ref"]["inference_id"] != ident:
                    raise ValueError(f"state key {key!r} holds ref {st['ref']['inference_id']!r}")
                s.put_ref(st)
        elif kind == "candle":
            ot = int(ident)
            if value is None:
                s.candles.pop(ot, None)
            else:
                s.put_candle(cast(Candle, _clone(value)))
        else:
            if value is None:
                if ident in s.pivots:
                    s.drop_pivot(ident)
            else:
                s.put_pivot(cast(Pivot, _clone(value)))

    def restore_all(self, changes: Iterable[Change]) -> None:
        """Replay a changelog (or its compacted form) in order."""
        for key, value in changes:
            self.restore(key, value)

    def snapshot(self) -> dict[str, StateValue]:
        """The whole state as the changelog would hold it after compaction (tests, debugging)."""
        snap: dict[str, StateValue] = {}
        for name in sorted(self._series):
            s = self._series[name]
            if s.wm is not None:
                snap[watermark_key(name)] = {"wm": s.wm}
            for iid, st in s.refs.items():
                snap[ref_key(name, iid)] = _copy(st)
            for ot, c in s.candles.items():
                snap[candle_key(name, ot)] = _copy(c)
            for pid, p in s.pivots.items():
                snap[pivot_key(name, pid)] = _copy(p)
        return snap

    @property
    def pending_refs(self) -> int:
        """Refs in state (waiting for a candle, a pivot, or their expiry)."""
        return sum(len(s.refs) for s in self._series.values())

    @property
    def state_size(self) -> int:
        """Number of state keys (refs + candles + pivots + one watermark per series)."""
        return sum(
            len(s.refs) + len(s.candles) + len(s.pivots) + (s.wm is not None) for s in self._series.values()
        )

    def state_counts(self) -> dict[str, int]:
        """State keys by kind, for a gauge per kind."""
        return {
            "ref": self.pending_refs,
            "candle": sum(len(s.candles) for s in self._series.values()),
            "pivot": sum(len(s.pivots) for s in self._series.values()),
            "series": len(self._series),
        }

    def series_names(self) -> list[str]:
        """Series this engine holds state for, sorted."""
        return sorted(self._series)

    def drop_series(self, series: str) -> None:
        """Forget a series without emitting changes: its partition was revoked and the changelog
        still holds its state for the next owner."""
        self._series.pop(series, None)

    def watermark(self, series: str) -> int | None:
        """Max candle open_time seen for a series (None before its first candle)."""
        s = self._series.get(series)
        return None if s is None else s.wm

    # ------------------------------------------------------------------ internals

    def _series_of(self, symbol: str, timeframe: str) -> _Series:
        name = series_key(symbol, timeframe)
        s = self._series.get(name)
        if s is None:
            s = _Series(name, self.config.horizons(timeframe))
            self._series[name] = s
        return s

    def _evict(self, s: _Series, out: Output) -> None:
        """Drop everything whose deadline the watermark has passed; order: candles, pivots, refs."""
        wm = s.wm
        if wm is None:
            return
        due_candles: set[int] = set()
        while s.candle_heap and s.candle_heap[0][0] < wm:
            _, ot = heapq.heappop(s.candle_heap)
            if ot in s.candles and s.candle_deadline(ot) < wm:
                due_candles.add(ot)
        for ot in sorted(due_candles):
            del s.candles[ot]
            out.changes.append((candle_key(s.name, ot), None))
            out.counts["candle." + EVICTED] += 1
        due_pivots: dict[str, int] = {}
        while s.pivot_heap and s.pivot_heap[0][0] < wm:
            _, pid = heapq.heappop(s.pivot_heap)
            p = s.pivots.get(pid)
            if p is not None and s.pivot_deadline(p) < wm:
                due_pivots[pid] = s.pivot_deadline(p)
        for _, pid in sorted((d, i) for i, d in due_pivots.items()):
            s.drop_pivot(pid)
            out.changes.append((pivot_key(s.name, pid), None))
            out.counts["pivot." + EVICTED] += 1
        due_refs: dict[str, int] = {}
        while s.ref_heap and s.ref_heap[0][0] < wm:
            _, iid = heapq.heappop(s.ref_heap)
            st = s.refs.get(iid)
            if st is None or iid in due_refs:
                continue
            deadline = s.ref_deadline(st)
            if deadline < wm:
                due_refs[iid] = deadline
            else:  # cannot happen (deadlines only shrink); keep the ref reachable anyway
                heapq.heappush(s.ref_heap, (deadline, iid))
        for deadline, iid in sorted((d, i) for i, d in due_refs.items()):
            st = s.drop_ref(iid)
            reason = JOINED if st["candle_joined"] else NO_TARGET_CANDLE
            out.changes.append((ref_key(s.name, iid), None))
            out.counts[f"ref.{EXPIRED}.{reason}"] += 1
            out.events.append(
                Event(
                    "ref",
                    EXPIRED,
                    s.name,
                    iid,
                    reason,
                    {"pivot_jobs": st["pivot_jobs"], "deadline": deadline, "watermark": wm},
                )
            )

    def _emit(self, out: Output, job: TrainingJob) -> None:
        out.jobs.append(job)
        out.counts["job." + job["trigger"]] += 1

    def _count(self, out: Output, kind: Kind, outcome: str) -> Output:
        out.counts[f"{kind}.{outcome}"] += 1
        return out

    def _note(self, out: Output, kind: Kind, outcome: str, series: str, ident: str, **detail: Any) -> Output:
        out.counts[f"{kind}.{outcome}"] += 1
        out.events.append(Event(kind, outcome, series, ident, outcome, detail))
        return self._done(out)

    def _reject(
        self, out: Output, kind: Kind, outcome: str, symbol: object, timeframe: object, ident: object
    ) -> Output:
        return self._note(out, kind, outcome, f"{symbol}:{timeframe}", str(ident))

    def _done(self, out: Output) -> Output:
        self.counters.update(out.counts)
        return out
