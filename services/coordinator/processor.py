"""The coordinator's stream processor: one ``JoinEngine`` per assigned partition, every engine change
written to the changelog in the same transaction as the jobs it produced and the consumed offsets.

State changes are coalesced per transaction: ``end_batch`` (the platform's optional pre-commit hook)
writes only the latest value of each changed key, before the offsets join the transaction.

Why one engine per partition: the inputs are co-partitioned by series and the changelog partition is
the input partition (``Context.put_state``), so a partition's engine state is exactly its changelog
partition; a rebalance moves whole engines, and ``assigned`` rebuilds one from the restored changelog
(only the latest value per key matters, so compaction is safe: see join.py).

Outcomes of inputs that decode and validate (the platform dead-letters the rest):

* key != the record's series -> ``InvalidRecordError("key_mismatch")`` -> DLQ. Such a record may sit
  on another partition than its series, where a second engine would see part of the series.
* everything else goes to the engine, whose outcome is counted in
  ``reftrain_coordinator_inputs_total{kind,outcome}``: accepted, duplicate (same content again),
  conflict (same id, other content), late (watermark more than S past the event time; also
  ``late_inputs_total{kind}``), invalid, slow_confirmation (pivot took more than D bars). None of
  these stops the service or emits anything; conflict/late/invalid are logged with the ids.
* an exception inside the engine or while emitting (a bug, not bad input) restarts the session
  (abort, restore from the changelog) instead of dead-lettering: the engine may have changed its
  in-memory state already, and dead-lettering would let it drift from the changelog.

Counters are state (issue #15: reports and checks read them). Each series' engine counts are kept in
one more changelog key, ``<series>|counts`` -> ``{"counts": {name: n}}``, written by ``end_batch`` in
the same transaction as the work counted, restored in ``assigned``, and exported (metrics.COMMITTED)
only after a commit. So a kill -9, an aborted transaction or a rebalance neither loses nor repeats a
count: after any restart they equal what the topics hold.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

from confluent_kafka import KafkaException

from reftrain.errors import InvalidRecordError
from reftrain.records import Candle, InferenceRef, Pivot, series_key
from reftrain.serde import RegistryUnavailableError
from reftrain.streams import Context, Record, RestartSession
from reftrain.topics import CANDLES, INFERENCE_REFS, PIVOTS, TRAINING_JOBS
from services.coordinator import metrics
from services.coordinator.join import EXPIRED, JoinEngine, Output, StateValue, event_time
from services.coordinator.join_config import JoinConfig

log = logging.getLogger(__name__)

INPUTS: tuple[str, ...] = (INFERENCE_REFS, PIVOTS, CANDLES)
"""Input topics; this order also breaks event-time ties in the alignment (candles last, so a ref or
pivot made at the close of candle t is joined before candle t moves the watermark)."""

KIND_OF_TOPIC: dict[str, str] = {INFERENCE_REFS: "ref", CANDLES: "candle", PIVOTS: "pivot"}

LatencyObserver = Callable[[str, float], None]

COUNTS_SUFFIX = "|counts"


def counts_key(series: str) -> str:
    """Changelog key of a series' committed counts (kept by the processor, not the engine)."""
    return f"{series}{COUNTS_SUFFIX}"


def record_event_time(record: Record) -> int:
    """Event time of a decoded input (join.event_time): what the alignment merges the topics by."""
    return event_time(cast(Any, record.value))


class CoordinatorProcessor:
    """``reftrain.streams.Processor`` of the coordinator.

    ``latency_observer`` (bench, tests) receives ``(trigger, seconds)`` for every job once its
    transaction has committed, besides the histogram.
    """

    def __init__(self, config: JoinConfig, latency_observer: LatencyObserver | None = None) -> None:
        self.config = config
        self.engines: dict[int, JoinEngine] = {}
        self._latency_observer = latency_observer
        # (trigger, Kafka timestamp ms of the input that completed the join) of uncommitted jobs
        self._pending_latency: list[tuple[str, int]] = []
        # partition -> state key -> latest value (None deletes) changed in the open transaction
        self._dirty: dict[int, dict[str, StateValue | None]] = {}
        # partition -> series -> counts since the series began, this transaction's included
        self._counts: dict[int, dict[str, Counter[str]]] = {}
        self.jobs_emitted = 0  # since start, committed or not (bench, tests)
        self.work_counts: Counter[str] = Counter()  # engine counts since start, redone work included
        self.inputs_processed = 0

    # ------------------------------------------------------------------ Processor protocol

    def assigned(self, partition: int, state: dict[str, Any]) -> None:
        """Rebuild the partition's engine from its restored changelog. A key the engine cannot read
        raises: silently dropping state would break exactly-once, so the session fails loudly."""
        engine = JoinEngine(self.config)
        counts: dict[str, Counter[str]] = {}
        for key, value in state.items():
            if key.endswith(COUNTS_SUFFIX):
                counts[key[: -len(COUNTS_SUFFIX)]] = Counter(
                    {str(k): int(v) for k, v in value["counts"].items()})
            else:
                engine.restore(key, value)
        self.engines[partition] = engine
        self._counts[partition] = counts
        log.info("coordinator state restored", extra={
            "partition": partition, "keys": len(state), "pending_refs": engine.pending_refs,
            "series": engine.series_names()})
        self.update_gauges()
        self.publish_counts()

    def revoked(self, partition: int) -> None:
        """Drop the engine; the changelog keeps its state for the next owner. Uncommitted latency
        samples are dropped too: a revocation ends the transaction they belonged to, or follows it."""
        self.engines.pop(partition, None)
        self._counts.pop(partition, None)
        self._pending_latency.clear()
        self._dirty.pop(partition, None)
        self.update_gauges()
        self.publish_counts()

    def process(self, record: Record, ctx: Context) -> None:
        engine = self.engines.get(record.partition)
        if engine is None:  # cannot happen: the app only hands over records of assigned partitions
            raise RestartSession(f"record for unassigned partition {record.partition}")
        value = record.value
        series = series_key(value["symbol"], value["timeframe"])
        if record.key != series:
            raise InvalidRecordError("key_mismatch",
                                     f"key {record.key!r} but the record's series is {series!r}")
        if record.topic not in KIND_OF_TOPIC:
            raise RestartSession(f"coordinator does not consume {record.topic!r}")
        now_ms = ctx.now_ms or int(time.time() * 1000)
        try:
            if record.topic == INFERENCE_REFS:
                out = engine.on_ref(cast(InferenceRef, value), now_ms)
            elif record.topic == CANDLES:
                out = engine.on_candle(cast(Candle, value), now_ms)
            else:
                out = engine.on_pivot(cast(Pivot, value), now_ms)
            for job in out.jobs:
                ctx.emit(TRAINING_JOBS, job["model_key"], cast(dict[str, Any], job))
                self._pending_latency.append((job["trigger"], record.timestamp))
            dirty = self._dirty.setdefault(record.partition, {})
            for key, state_value in out.changes:
                dirty[key] = state_value  # written by end_batch, once per key per transaction
            if out.counts:
                tally = self._counts.setdefault(record.partition, {}).setdefault(series, Counter())
                tally.update(out.counts)
                dirty[counts_key(series)] = {"counts": dict(sorted(tally.items()))}
        except (RestartSession, RegistryUnavailableError, KafkaException):
            raise
        except Exception as exc:
            # The engine may already have changed its in-memory state: dead-lettering the record
            # would leave that state ahead of the changelog. Abort and restore instead (loud: a
            # deterministic failure here is a bug, and it shows as aborted transactions + not ready).
            log.exception("coordinator failed on a valid input; restarting the session", extra={
                "topic": record.topic, "partition": record.partition, "offset": record.offset})
            raise RestartSession(f"internal error on {record.topic}@{record.offset}: {exc!r}") from exc
        self.inputs_processed += 1
        self.jobs_emitted += len(out.jobs)
        self.work_counts.update(out.counts)
        self._account(out)

    # ------------------------------------------------------------------ transaction hooks

    def end_batch(self, ctx: Context) -> None:
        """Write the transaction's state changes to the changelog: the latest value of each changed
        key, once. Called inside the transaction, after its last record and before its offsets.

        Why this is exact: restore keeps only the latest value per key (join.py), so after the commit
        the changelog restores to the same engine as if every intermediate value had been written;
        a pivot joining a dozen refs, or a ref accepted, joined and expired within one batch, then
        costs one record per key instead of one per change.
        """
        for partition in sorted(self._dirty):
            ctx.partition = partition
            for key, value in self._dirty[partition].items():
                ctx.put_state(key, value)
        self._dirty.clear()

    def batch_committed(self) -> None:
        """Called after each committed transaction: the jobs are now visible to read_committed
        readers, so their join latency ends here."""
        if self._pending_latency:
            now = time.time()
            for trigger, ts in self._pending_latency:
                if ts <= 0:  # the input had no Kafka timestamp
                    continue
                seconds = max(0.0, now - ts / 1000.0)
                metrics.JOIN_LATENCY.labels(trigger).observe(seconds)
                if self._latency_observer is not None:
                    self._latency_observer(trigger, seconds)
            self._pending_latency.clear()
        self.update_gauges()
        self.publish_counts()

    def batch_aborted(self) -> None:
        self._pending_latency.clear()
        self._dirty.clear()

    # ------------------------------------------------------------------ metrics

    def committed_counts(self) -> Counter[str]:
        """The join counts of the series this instance owns. Exact (committed only) when called
        between transactions: after a commit, or on (re)assignment."""
        totals: Counter[str] = Counter()
        for by_series in self._counts.values():
            for tally in by_series.values():
                totals.update(tally)
        return totals

    def publish_counts(self) -> None:
        metrics.COMMITTED.publish(self, self.committed_counts())

    def update_gauges(self) -> None:
        totals: Counter[str] = Counter()
        for engine in self.engines.values():
            totals.update(engine.state_counts())
            totals["total"] += engine.state_size
        metrics.PENDING_REFS.set(totals["ref"])
        for kind in ("ref", "candle", "pivot", "series", "archived_ref", "archive_bucket", "total"):
            metrics.STATE_SIZE.labels(kind).set(totals[kind])

    def _account(self, out: Output) -> None:
        for ev in out.events:
            if ev.outcome == EXPIRED:
                log.debug("ref expired", extra=ev.as_dict())
            else:
                log.warning("coordinator input not joined", extra=ev.as_dict())
