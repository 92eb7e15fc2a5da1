"""Prometheus metrics of the coordinator (the shared ones, with label service="coordinator", come from
reftrain.observability: consumed/produced messages, DLQ, transactions, batch time, consumer lag,
readiness, restored state keys).

The join's counters (inputs, late inputs, jobs, expired refs, evicted candles/pivots, archive work)
are RESTART-PROOF: they are part of the state. Per series they are written to the changelog in the
transaction that did the counted work and restored with it, and exported only as committed, so each
counts committed work exactly once, across kill -9, aborted transactions and rebalances (a replayed
input is not counted twice). Their value on an instance is the total of the series it owns now: they
move with the partitions (summed over instances they are the cluster's totals), so an instance that
loses a partition shows a drop. The other metrics (latency, alignment, the shared ones) are per
process and count work done, redone work included. Gauges describe this instance's partitions.
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter as Tally
from collections.abc import Iterator, Mapping

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

PENDING_REFS = Gauge("reftrain_coordinator_pending_refs",
                     "Refs in state on this instance (waiting for their candle, pivots or expiry)")
STATE_SIZE = Gauge("reftrain_coordinator_state_size",
                   "State held on this instance, by kind (ref: pending refs, hot or archived; candle, pivot, "
                   "series, archived_ref, archive_bucket; total: changelog keys)", ["kind"])


Family = tuple[str, str, tuple[str, ...]]
"""name, help, label names of a restart-proof counter (exported by CommittedCounts below)."""

JOBS_TOTAL: Family = ("reftrain_coordinator_jobs", "Training jobs emitted in committed transactions (restored "
              "with the state)", ("trigger",))
EXPIRED_TOTAL: Family = ("reftrain_coordinator_expired", "Refs dropped from state, by reason (joined: had its "
                 "CANDLE job; no_target_candle: its target candle never came); restored with the state",
                 ("reason",))
LATE_INPUTS_TOTAL: Family = ("reftrain_coordinator_late_inputs", "Inputs ignored because their series' watermark "
                     "was more than max_lag past their event time; restored with the state", ("kind",))
INPUTS_TOTAL: Family = ("reftrain_coordinator_inputs", "Decoded inputs by kind and outcome (accepted, duplicate, "
                "conflict, late, invalid, slow_confirmation); restored with the state", ("kind", "outcome"))
EVICTED_TOTAL: Family = ("reftrain_coordinator_evicted", "Candles and pivots dropped from state once no future "
                 "input can join them; restored with the state", ("kind",))
ARCHIVE_TOTAL: Family = ("reftrain_coordinator_archive", "Refs moved from the in-memory state to the compact "
                 "archive (event=archived) and PIVOT jobs joined from the archive (event=pivot_joins: "
                 "pivots confirmed later than the hot retention); restored with the state", ("event",))
FAMILIES = (JOBS_TOTAL, EXPIRED_TOTAL, LATE_INPUTS_TOTAL, INPUTS_TOTAL, EVICTED_TOTAL, ARCHIVE_TOTAL)


def family_of(count: str) -> list[tuple[Family, tuple[str, ...]]]:
    """The (counter family, label values) an engine count name (join.py ``Output.counts``:
    ``<kind>.<outcome>``, ``job.<trigger>``, ``ref.expired.<reason>``, ``<kind>.evicted``,
    ``ref.archived``, ``pivot.archive_joins``) adds to."""
    parts = count.split(".")
    if parts[0] == "job":
        return [(JOBS_TOTAL, (parts[1],))]
    if len(parts) == 3 and parts[1] == "expired":
        return [(EXPIRED_TOTAL, (parts[2],))]
    if count == "ref.archived":
        return [(ARCHIVE_TOTAL, ("archived",))]
    if count == "pivot.archive_joins":
        return [(ARCHIVE_TOTAL, ("pivot_joins",))]
    if len(parts) == 2 and parts[1] == "evicted":
        return [(EVICTED_TOTAL, (parts[0],))]
    if len(parts) == 2:
        out: list[tuple[Family, tuple[str, ...]]] = [(INPUTS_TOTAL, (parts[0], parts[1]))]
        if parts[1] == "late":
            out.append((LATE_INPUTS_TOTAL, (parts[0],)))
        return out
    return []


class CommittedCounts(Collector):
    """Exports the committed join counts each live processor published (``publish``), summed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_owner: weakref.WeakKeyDictionary[object, Tally[str]] = weakref.WeakKeyDictionary()

    def publish(self, owner: object, counts: Mapping[str, int]) -> None:
        """Replace ``owner``'s committed counts (called after each commit and on (re)assignment)."""
        with self._lock:
            self._by_owner[owner] = Tally(counts)

    def totals(self) -> Tally[str]:
        with self._lock:
            out: Tally[str] = Tally()
            for counts in self._by_owner.values():
                out.update(counts)
            return out

    def collect(self) -> Iterator[CounterMetricFamily]:
        values: dict[Family, Tally[tuple[str, ...]]] = {f: Tally() for f in FAMILIES}
        for name, n in self.totals().items():
            for fam, labels in family_of(name):
                values[fam][labels] += n
        for fam in FAMILIES:
            name, doc, labels = fam
            metric = CounterMetricFamily(name, doc, labels=list(labels))
            for label_values, n in sorted(values[fam].items()):
                metric.add_metric(list(label_values), n)
            yield metric


COMMITTED = CommittedCounts()
REGISTRY.register(COMMITTED)
JOIN_LATENCY = Histogram(
    "reftrain_coordinator_join_latency_seconds",
    "From the Kafka timestamp of the input that completed a join (the later of the pair) to the commit "
    "of the transaction that published the job",
    ["trigger"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
HELD_RECORDS = Gauge("reftrain_coordinator_held_records",
                     "Records consumed but held back by event-time alignment, by input topic", ["topic"])
ALIGNMENT_TIMEOUTS = Counter("reftrain_coordinator_alignment_timeouts_total",
                             "Times a held record stopped waiting for an input partition that was neither "
                             "caught up nor delivering (align_max_wait_ms passed)", ["topic"])
PAUSES_TOTAL = Counter("reftrain_coordinator_alignment_pauses_total",
                       "Times an input topic-partition was paused because alignment held more than "
                       "align_max_buffered of its records", ["topic"])
PAUSED_PARTITIONS = Gauge("reftrain_coordinator_paused_partitions",
                          "Input topic-partitions paused because alignment holds too many of their records")
