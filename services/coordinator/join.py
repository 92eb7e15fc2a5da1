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

Archive (memory, not semantics). D is sized for the slowest pivots (level 4-5 take thousands of
bars to confirm), so most of a ref's wait is for pivots that rarely come. A ref is kept HOT (a full
record, indexed, one changelog key) for ``pw + H + S`` (H = min(hot retention, D); the CANDLE rule
above as before), then moved into its series' ARCHIVE: refs grouped by data_range_end into buckets of
``archive_bucket_bars``, each bucket one changelog value holding the refs as compressed JSON
(``archive_value``). A pivot joins the hot refs near it AND the archived ones (decoding the one or
two buckets its window touches); a ref is in exactly one of the two at any time, moved within one
call, so no pair is joined twice and none is missed. Expiry from the archive follows the ref rule
above exactly (per ref, not per bucket). Counting: an archived ref is still pending; it expires once.

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
``<series>|pivot|<pivot_id>`` -> Pivot, ``<series>|wm`` -> ``{"wm": int}``,
``<series>|arch|<bucket_start>`` -> ``{"n": live refs, "lo": their min data_range_end, "cut": refs
with data_range_end < cut have expired, "z": [base64(zlib(JSON list of RefState)), ...]}`` (one chunk
per append, re-encoded as one when the next bucket starts; ~110 bytes per ref once complete), and
the processor adds ``<series>|counts`` (processor.py); ``None`` deletes. Values are JSON-able and
one record each (a few hundred bytes; an archive bucket a few KB). Restore only needs the latest value per key
(order between keys does not matter), so log compaction is safe; after replaying the changes of
calls 1..n, the engine is indistinguishable from the original after call n.
"""

from __future__ import annotations

import base64
import bisect
import heapq
import json
import zlib
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
from services.coordinator.join_config import Horizons, JoinConfig

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


def archive_key(series: str, bucket_start: int) -> str:
    return f"{series}|arch|{bucket_start}"


def _encode_chunk(entries: list[RefState], level: int = 6) -> str:
    """Compressed JSON of some archived refs. A bucket is appended to as chunks (only the new refs are
    encoded, fast level 1) and re-encoded as one chunk (level 6) once a newer bucket starts."""
    raw = json.dumps(entries, separators=(",", ":"), allow_nan=False).encode()
    return base64.b64encode(zlib.compress(raw, level)).decode("ascii")


def _decode_chunk(chunk: str) -> list[RefState]:
    return cast(list[RefState], json.loads(zlib.decompress(base64.b64decode(chunk))))


def archive_value(entries: list[RefState], cut: int, chunks: list[str] | None = None) -> StateValue:
    """An archive bucket as a changelog value: ``z`` compressed JSON chunks (~90 bytes per ref, base64
    included, against ~1 KB as a hot record), ``cut``: refs with data_range_end < cut have expired
    (expiry only moves ``cut``, it does not re-encode), ``n``/``lo``: live refs and their min
    data_range_end. ``chunks`` given: they already encode ``entries`` (plus expired ones)."""
    return {"n": len(entries), "lo": min(e["ref"]["data_range_end"] for e in entries), "cut": cut,
            "z": list(chunks) if chunks is not None else [_encode_chunk(entries)]}


def decode_archive(value: StateValue) -> list[RefState]:
    """The live refs of an archive bucket, in the order they were archived."""
    cut = int(value["cut"])
    return [e for chunk in value["z"] for e in _decode_chunk(chunk) if e["ref"]["data_range_end"] >= cut]


def parse_key(key: str) -> tuple[str, str, str]:
    """(series, kind, id) of a state key, kind in ref/candle/pivot/arch/wm; ValueError if malformed."""
    if key.endswith("|wm"):
        series, kind, ident = key[: -len("|wm")], "wm", ""
    else:
        parts = key.rsplit("|", 2)
        if len(parts) != 3 or parts[1] not in ("ref", "candle", "pivot", "arch") or not parts[2]:
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
        # Archive: bucket start -> encoded bucket (archive_value); starts kept sorted. The live refs of
        # the oldest bucket are kept decoded (``expiring``): expiry then decodes nothing per candle.
        self.archive: dict[int, StateValue] = {}
        self.archive_starts: list[int] = []
        self.archived_refs = 0
        self.expiring: tuple[int, list[RefState]] | None = None

    # deadlines: the item leaves state once wm > deadline
    def ref_deadline(self, st: RefState) -> int:
        """When a ref leaves the HOT state (to the archive when D > H, else for good)."""
        r = st["ref"]
        d = r["data_range_end"] + self.h.pivot_window + self.h.hot + self.h.max_lag
        if not st["candle_joined"]:
            d = max(d, r["target_timestamp"] + self.h.max_lag)
        return d

    def final_deadline(self, st: RefState) -> int:
        """When a ref leaves state for good (the retention rule in the module docstring)."""
        r = st["ref"]
        d = r["data_range_end"] + self.h.pivot_window + self.h.max_confirmation + self.h.max_lag
        if not st["candle_joined"]:
            d = max(d, r["target_timestamp"] + self.h.max_lag)
        return d

    def bucket_of(self, t: int) -> int:
        return t - t % self.h.archive_bucket

    def bucket_entries(self, start: int) -> list[RefState]:
        """Live refs of a bucket (decoded, or from the expiry cache); the caller may mutate them."""
        if self.expiring is not None and self.expiring[0] == start:
            return self.expiring[1]
        return decode_archive(self.archive[start])

    def put_bucket(self, start: int, value: StateValue | None, entries: list[RefState] | None = None) -> None:
        """Set (None: delete) a bucket; ``entries``: its live refs decoded, kept if it is the oldest."""
        if self.expiring is not None and self.expiring[0] == start:
            self.expiring = None
        if value is not None and entries is not None and (not self.archive_starts or start <= self.archive_starts[0]):
            self.expiring = (start, entries)
        old = self.archive.pop(start, None)
        if old is not None:
            self.archived_refs -= int(old["n"])
            if value is None:
                del self.archive_starts[bisect.bisect_left(self.archive_starts, start)]
        if value is not None:
            if old is None:
                bisect.insort(self.archive_starts, start)
            self.archive[start] = value
            self.archived_refs += int(value["n"])

    def archive_near(self, t: int) -> list[int]:
        """Starts of the archive buckets that may hold refs within the pivot window of ``t``."""
        lo = bisect.bisect_left(self.archive_starts, self.bucket_of(t - self.h.pivot_window))
        out: list[int] = []
        for start in self.archive_starts[lo:]:
            if start > t + self.h.pivot_window:
                break
            out.append(start)
        return out

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
        for start in s.archive_near(pt):
            # Refs past their hot retention: only pivots slower than H get here (levels 4-5 mostly).
            entries = s.bucket_entries(start)
            hit = False
            for e in entries:
                if abs(e["ref"]["data_range_end"] - pt) <= s.h.pivot_window:
                    self._emit(out, _make_job(e["ref"], "PIVOT", None, p, now_ms))
                    e["pivot_jobs"] += 1
                    out.counts["pivot.archive_joins"] += 1
                    hit = True
            if hit:
                value = archive_value(entries, int(s.archive[start]["cut"]))
                s.put_bucket(start, value, entries)
                out.changes.append((archive_key(s.name, start), _copy(value)))
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
        elif kind == "arch":
            s.put_bucket(int(ident), None if value is None else _copy(value))
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
            for start, bucket in s.archive.items():
                snap[archive_key(name, start)] = _copy(bucket)
        return snap

    @property
    def pending_refs(self) -> int:
        """Refs in state (waiting for a candle, a pivot, or their expiry), hot or archived."""
        return sum(len(s.refs) + s.archived_refs for s in self._series.values())

    @property
    def state_size(self) -> int:
        """Number of state keys (refs + candles + pivots + archive buckets + one watermark per series)."""
        return sum(
            len(s.refs) + len(s.candles) + len(s.pivots) + len(s.archive) + (s.wm is not None)
            for s in self._series.values()
        )

    def state_counts(self) -> dict[str, int]:
        """State by kind, for a gauge per kind: pending refs (hot + archived), candles, pivots, series,
        archived refs and archive buckets."""
        return {
            "ref": self.pending_refs,
            "candle": sum(len(s.candles) for s in self._series.values()),
            "pivot": sum(len(s.pivots) for s in self._series.values()),
            "series": len(self._series),
            "archived_ref": sum(s.archived_refs for s in self._series.values()),
            "archive_bucket": sum(len(s.archive) for s in self._series.values()),
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
        to_archive: dict[int, list[RefState]] = {}
        for deadline, iid in sorted((d, i) for i, d in due_refs.items()):
            st = s.drop_ref(iid)
            out.changes.append((ref_key(s.name, iid), None))
            final = s.final_deadline(st)
            if final >= wm:  # D > H: late pivots may still come; keep it, compactly
                to_archive.setdefault(s.bucket_of(st["ref"]["data_range_end"]), []).append(st)
                out.counts["ref.archived"] += 1
            else:
                self._expire(s, out, st, deadline, wm)
        for start, entries in sorted(to_archive.items()):
            old = s.archive.get(start)
            if old is None:
                prev = s.archive_starts[-1] if s.archive_starts and s.archive_starts[-1] < start else None
                value = archive_value(entries, start)
                s.put_bucket(start, value, entries)
                if prev is not None and len(s.archive[prev]["z"]) > 1:
                    # the previous bucket is complete (up to late stragglers): one chunk, compressed well
                    live = s.bucket_entries(prev)
                    whole = archive_value(live, int(s.archive[prev]["cut"]))
                    s.put_bucket(prev, whole, live)
                    out.changes.append((archive_key(s.name, prev), _copy(whole)))
            else:  # append a chunk: encode only the new refs
                cached = s.bucket_entries(start) + entries if s.expiring and s.expiring[0] == start else None
                value = archive_value(entries, int(old["cut"]), [*old["z"], _encode_chunk(entries, 1)])
                value["n"] = int(old["n"]) + len(entries)
                value["lo"] = min(int(old["lo"]), int(value["lo"]))
                s.put_bucket(start, value, cached)
            out.changes.append((archive_key(s.name, start), _copy(value)))
        # Archived refs expire by the ref rule above, which for them is ``data_range_end + pw + D + S
        # < wm`` (their target candle was already due when they were archived): expiry moves a bucket's
        # ``cut``; ``lo`` (its earliest live data_range_end) says when to look.
        threshold = wm - s.h.pivot_window - s.h.max_confirmation - s.h.max_lag  # live: dre >= threshold
        for start in list(s.archive_starts):
            bucket = s.archive[start]
            if int(bucket["lo"]) >= threshold:
                break  # later buckets start later
            keep: list[RefState] = []
            for e in s.bucket_entries(start):
                if e["ref"]["data_range_end"] < threshold:
                    self._expire(s, out, e, s.final_deadline(e), wm)
                else:
                    keep.append(e)
            rest = archive_value(keep, threshold, bucket["z"]) if keep else None
            s.put_bucket(start, rest, keep)
            out.changes.append((archive_key(s.name, start), None if rest is None else _copy(rest)))

    def _expire(self, s: _Series, out: Output, st: RefState, deadline: int, wm: int) -> None:
        """A ref leaves state for good: count it by reason and report its pivot job count."""
        reason = JOINED if st["candle_joined"] else NO_TARGET_CANDLE
        out.counts[f"ref.{EXPIRED}.{reason}"] += 1
        out.events.append(
            Event(
                "ref",
                EXPIRED,
                s.name,
                st["ref"]["inference_id"],
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
