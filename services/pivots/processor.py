"""The pivots service's stream processor: one ``PivotDetector`` per series, state in the changelog,
confirmed pivots written to the store and then emitted to ``pivots``.

Why the work is split between ``process`` (per candle) and ``end_batch`` (per transaction):

* ``process`` only feeds the detector and buffers what the candle produced. It is cheap.
* ``end_batch`` (the StreamApp hook) runs once per Kafka transaction, after the batch's last candle
  and before the consumed offsets join the transaction. It
  1. writes every buffered pivot to the store in ONE ``append_pivots`` call. A DuckLake commit
     costs about the same for 1 pivot as for 200 (56 ms vs 76 ms measured on the 2-core machine,
     far more under load), so a write per confirming candle caps catch-up at ~50 candles/s
     (bench/bench_pivots.py --per-record),
  2. emits the pivots to ``pivots`` (key = series), in detection order,
  3. writes each touched series' detector state to the changelog (``put_state``).
  All of 2 and 3 commit atomically with the input offsets. The store write is outside the
  transaction but happens before the commit, so a pivot is in the store before any read_committed
  reader can see it on the topic. A crash between the store write and the commit aborts the
  transaction; the restarted service restores the state committed with the offsets, reprocesses
  the same candles and derives the same pivots with the same deterministic ids, and
  ``append_pivots`` skips the ids it already holds.
* Writing the state once per series per transaction (rather than after every candle) leaves the
  changelog holding exactly the same thing at every commit: the state after the last candle whose
  offset is committed. It only writes fewer changelog records.

A store failure raises ``RestartSession``: the transaction is aborted and the session restarts
from the committed state, so pivots are delayed, never lost and never emitted without a store row.

Non-accepted candles (duplicate, conflict, out_of_order, invalid: docs/pivots.md) change nothing
but the detector's outcome counts; they are counted in ``reftrain_pivots_candles_total{outcome}``
and never produce pivots. A candle whose Kafka key is not its series is dead-lettered
(``key_mismatch``): it may sit on another partition than its series, where a second detector
would see a partial series.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import KafkaException

from reftrain.errors import InvalidRecordError, StoreError
from reftrain.records import Candle, Pivot, series_key, timeframe_ms
from reftrain.serde import RegistryUnavailableError
from reftrain.streams import Context, Record, RestartSession
from reftrain.topics import PIVOTS
from services.pivots import metrics
from services.pivots.detector import CandleOutcome, PivotDetector, validate_strengths

log = logging.getLogger(__name__)


class PivotSink(Protocol):
    """Where confirmed pivots are persisted; ``reftrain.store.Store`` in the service. Must be
    idempotent on ``pivot_id`` (replays re-append)."""

    def append_pivots(self, pivots: Sequence[Pivot]) -> int: ...


@dataclass(frozen=True)
class _Pending:
    partition: int
    series: str
    pivot: Pivot
    close_time: int  # close_time of the candle that confirmed the pivot (for the lag metric)


class PivotProcessor:
    """``reftrain.streams.Processor`` for the pivots service.

    ``flush_each_record=True`` does the ``end_batch`` work after every candle instead: also correct,
    but one store commit per pivot-confirming candle (kept to measure that design in the bench).
    """

    def __init__(self, strengths: Sequence[int], store: PivotSink, *,
                 flush_each_record: bool = False) -> None:
        self.strengths = validate_strengths(strengths)
        self._store = store
        self.flush_each_record = flush_each_record
        self._detectors: dict[int, dict[str, PivotDetector]] = {}
        self._pending: list[_Pending] = []
        self._dirty: dict[str, int] = {}  # series -> partition whose state changed in this transaction

    # -- Processor protocol -------------------------------------------------------------------------
    def assigned(self, partition: int, state: dict[str, Any]) -> None:
        """Rebuild this partition's detectors from the restored changelog (series -> to_dict())."""
        detectors: dict[str, PivotDetector] = {}
        for series, data in state.items():
            det = self._restore(series, data)
            if det is not None:
                detectors[series] = det
        self._detectors[partition] = detectors
        self._update_series_gauge()
        log.info("pivot detectors restored", extra={"partition": partition, "series": sorted(detectors),
                                                    "discarded": len(state) - len(detectors)})

    def revoked(self, partition: int) -> None:
        """Forget the partition, including anything buffered for a transaction that will not commit."""
        self._detectors.pop(partition, None)
        self._pending = [p for p in self._pending if p.partition != partition]
        self._dirty = {s: p for s, p in self._dirty.items() if p != partition}
        self._update_series_gauge()

    def process(self, record: Record, ctx: Context) -> None:
        """Feed one decoded, validated candle to its series' detector; buffer what it confirmed."""
        candle: Candle = record.value  # type: ignore[assignment]
        series = series_key(candle["symbol"], candle["timeframe"])
        if record.key != series:
            raise InvalidRecordError("key_mismatch", f"key {record.key!r} carries a candle of {series}")
        detectors = self._detectors.setdefault(record.partition, {})
        det = detectors.get(series)
        if det is None:
            det = detectors[series] = PivotDetector(candle["symbol"], candle["timeframe"], self.strengths)
            self._update_series_gauge()
        result = det.feed(candle)
        metrics.CANDLES_TOTAL.labels(result.outcome.value).inc()
        if result.outcome is not CandleOutcome.ACCEPTED:
            self._log_rejected(result.outcome, series, candle, det, record)
        self._dirty[series] = record.partition  # counts are part of the state, whatever the outcome
        self._pending.extend(
            _Pending(record.partition, series, p, candle["close_time"]) for p in result.pivots)
        if self.flush_each_record:
            self.end_batch(ctx)

    # -- per transaction ----------------------------------------------------------------------------
    def end_batch(self, ctx: Context) -> None:
        """Store, then emit, the buffered pivots; write the touched detectors' state. Runs inside the
        open transaction, before its offsets are sent; any failure aborts it (RestartSession)."""
        try:
            self._flush(ctx)
        except (RestartSession, RegistryUnavailableError, KafkaException):
            raise
        except StoreError as exc:
            raise RestartSession(f"pivot store write failed: {exc}") from exc
        except Exception as exc:  # a half-flushed transaction must never commit
            log.exception("pivot flush failed; aborting the transaction")
            raise RestartSession(f"pivot flush failed: {type(exc).__name__}: {exc}") from exc

    def _flush(self, ctx: Context) -> None:
        pending = self._pending
        if pending:
            started = time.monotonic()
            self._store.append_pivots([p.pivot for p in pending])
            metrics.STORE_WRITE_SECONDS.observe(time.monotonic() - started)
            now_s = time.time()
            for item in pending:
                pivot = item.pivot
                ctx.emit(PIVOTS, item.series, dict(pivot))
                level = str(pivot["level"])
                metrics.PIVOTS_TOTAL.labels(level, pivot["kind"]).inc()
                bars = (pivot["confirmed_at"] - pivot["pivot_time"]) / timeframe_ms(pivot["timeframe"])
                metrics.CONFIRMATION_DELAY_BARS.labels(level).observe(bars)
                metrics.PROCESSING_LAG_SECONDS.observe(max(0.0, now_s - item.close_time / 1000))
            self._pending = []
        for series, partition in self._dirty.items():
            ctx.partition = partition  # put_state writes to the changelog partition of the input
            ctx.put_state(series, self._detectors[partition][series].to_dict())
        self._dirty = {}

    # -- helpers ------------------------------------------------------------------------------------
    def _restore(self, series: str, data: Any) -> PivotDetector | None:
        """A detector from saved state, or None (logged, counted) when it cannot or must not be used."""
        try:
            det = PivotDetector.from_dict(data)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("discarding unreadable pivot state", extra={"series": series, "error": str(exc)[:300]})
            metrics.STATE_DISCARDED.labels("unreadable").inc()
            return None
        if series_key(det.symbol, det.timeframe) != series:
            log.error("discarding pivot state saved under another series' key", extra={
                "series": series, "state_series": series_key(det.symbol, det.timeframe)})
            metrics.STATE_DISCARDED.labels("unreadable").inc()
            return None
        if det.strengths != self.strengths:
            # Strengths define the pivots: a detector may not continue under new ones. The series
            # restarts from its next candle; re-deriving history needs a replay (docs/pivots.md).
            log.warning("discarding pivot state saved with other strengths", extra={
                "series": series, "saved_strengths": list(det.strengths),
                "configured_strengths": list(self.strengths)})
            metrics.STATE_DISCARDED.labels("strengths_changed").inc()
            return None
        return det

    def _log_rejected(self, outcome: CandleOutcome, series: str, candle: Candle, det: PivotDetector,
                      record: Record) -> None:
        extra = {"series": series, "outcome": outcome.value, "open_time": candle["open_time"],
                 "last_open_time": det.last_open_time, "partition": record.partition, "offset": record.offset}
        if outcome is CandleOutcome.DUPLICATE:
            log.debug("candle ignored", extra=extra)
        else:
            log.warning("candle rejected by the pivot detector", extra=extra)

    def _update_series_gauge(self) -> None:
        metrics.SERIES.set(sum(len(d) for d in self._detectors.values()))

    def detector(self, series: str) -> PivotDetector | None:
        """The live detector of a series (for tests and the benchmark)."""
        for detectors in self._detectors.values():
            if series in detectors:
                return detectors[series]
        return None
