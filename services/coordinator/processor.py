"""The coordinator's stream processor: one ``JoinEngine`` per assigned partition, every engine change
written to the changelog in the same transaction as the jobs it produced and the consumed offsets.

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
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

from reftrain.errors import InvalidRecordError
from reftrain.records import Candle, InferenceRef, Pivot, series_key
from reftrain.streams import Context, Record, RestartSession
from reftrain.topics import CANDLES, INFERENCE_REFS, PIVOTS, TRAINING_JOBS
from services.coordinator import metrics
from services.coordinator.config import JoinConfig
from services.coordinator.join import EXPIRED, JoinEngine, Output, event_time

log = logging.getLogger(__name__)

INPUTS: tuple[str, ...] = (INFERENCE_REFS, PIVOTS, CANDLES)
"""Input topics; this order also breaks event-time ties in the alignment (candles last, so a ref or
pivot made at the close of candle t is joined before candle t moves the watermark)."""

KIND_OF_TOPIC: dict[str, str] = {INFERENCE_REFS: "ref", CANDLES: "candle", PIVOTS: "pivot"}

LatencyObserver = Callable[[str, float], None]


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
        self.jobs_emitted = 0  # since start, committed or not (bench, tests)
        self.inputs_processed = 0

    # ------------------------------------------------------------------ Processor protocol

    def assigned(self, partition: int, state: dict[str, Any]) -> None:
        """Rebuild the partition's engine from its restored changelog. A key the engine cannot read
        raises: silently dropping state would break exactly-once, so the session fails loudly."""
        engine = JoinEngine(self.config)
        for key, value in state.items():
            engine.restore(key, value)
        self.engines[partition] = engine
        log.info("coordinator state restored", extra={
            "partition": partition, "keys": len(state), "pending_refs": engine.pending_refs,
            "series": engine.series_names()})
        self.update_gauges()

    def revoked(self, partition: int) -> None:
        """Drop the engine; the changelog keeps its state for the next owner. Uncommitted latency
        samples are dropped too: a revocation ends the transaction they belonged to, or follows it."""
        self.engines.pop(partition, None)
        self._pending_latency.clear()
        self.update_gauges()

    def process(self, record: Record, ctx: Context) -> None:
        engine = self.engines.get(record.partition)
        if engine is None:  # cannot happen: the app only hands over records of assigned partitions
            raise RestartSession(f"record for unassigned partition {record.partition}")
        value = record.value
        series = series_key(value["symbol"], value["timeframe"])
        if record.key != series:
            raise InvalidRecordError("key_mismatch", f"key {record.key!r} but the record's series is {series!r}")
        now_ms = ctx.now_ms or int(time.time() * 1000)
        if record.topic == INFERENCE_REFS:
            out = engine.on_ref(cast(InferenceRef, value), now_ms)
        elif record.topic == CANDLES:
            out = engine.on_candle(cast(Candle, value), now_ms)
        elif record.topic == PIVOTS:
            out = engine.on_pivot(cast(Pivot, value), now_ms)
        else:
            raise RestartSession(f"coordinator does not consume {record.topic!r}")
        self.inputs_processed += 1
        for job in out.jobs:
            ctx.emit(TRAINING_JOBS, job["model_key"], cast(dict[str, Any], job))
            self._pending_latency.append((job["trigger"], record.timestamp))
        self.jobs_emitted += len(out.jobs)
        for key, state_value in out.changes:
            ctx.put_state(key, state_value)
        self._account(out)

    # ------------------------------------------------------------------ transaction hooks

    def batch_committed(self) -> None:
        """Called after each committed transaction: the jobs are now visible to read_committed
        readers, so their join latency ends here."""
        if self._pending_latency:
            now = time.time()
            for trigger, ts in self._pending_latency:
                seconds = max(0.0, now - ts / 1000.0)
                metrics.JOIN_LATENCY.labels(trigger).observe(seconds)
                if self._latency_observer is not None:
                    self._latency_observer(trigger, seconds)
            self._pending_latency.clear()
        self.update_gauges()

    def batch_aborted(self) -> None:
        self._pending_latency.clear()

    # ------------------------------------------------------------------ metrics

    def update_gauges(self) -> None:
        totals: Counter[str] = Counter()
        for engine in self.engines.values():
            totals.update(engine.state_counts())
            totals["total"] += engine.state_size
        metrics.PENDING_REFS.set(totals["ref"])
        for kind in ("ref", "candle", "pivot", "series", "total"):
            metrics.STATE_SIZE.labels(kind).set(totals[kind])

    def _account(self, out: Output) -> None:
        for name, n in out.counts.items():
            parts = name.split(".")
            if parts[0] == "job":
                metrics.JOBS_TOTAL.labels(parts[1]).inc(n)
            elif len(parts) == 3 and parts[1] == EXPIRED:
                metrics.EXPIRED_TOTAL.labels(parts[2]).inc(n)
            elif len(parts) == 2 and parts[1] == "evicted":
                metrics.EVICTED_TOTAL.labels(parts[0]).inc(n)
            elif len(parts) == 2:
                metrics.INPUTS_TOTAL.labels(parts[0], parts[1]).inc(n)
                if parts[1] == "late":
                    metrics.LATE_INPUTS_TOTAL.labels(parts[0]).inc(n)
        for ev in out.events:
            if ev.outcome == EXPIRED:
                log.debug("ref expired", extra=ev.as_dict())
            else:
                log.warning("coordinator input not joined", extra=ev.as_dict())
