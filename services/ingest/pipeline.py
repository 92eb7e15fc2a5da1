"""Ingest orchestration: source items -> sequencing -> indicators/aggregation -> store -> topic.

Write before publish (docs/semantics.md, rule 1): accepted candles, their derived higher-timeframe candles and
their indicator values are committed to the store in one transaction per batch; only then is the
batch produced to ``candles``, and the next batch is not committed before every delivery of this
one is confirmed. A crash therefore leaves, per series, the topic a prefix of the store, short by
at most one batch.

Start-up (``Pipeline.start``) repairs that and makes a restart indistinguishable from an
uninterrupted run:

1. *Repair*: for every series in the store, compare its last stored open_time with the last one on
   the topic (``kafka_io.last_published``) and publish the stored candles the topic lacks, once.
   Quarantined rows missing from ``candles.dlq`` are published the same way (by quarantine id).
2. *Seed*: each series' in-memory state (sequencing guard, SMA/EMA, partial aggregation buckets)
   is restored from the store's history *before the first candle of this run's source* (all of it
   in live mode).
3. *Replay*: the source is processed from its first row, deterministically, exactly as the first
   run did. An accepted candle whose open_time the store already has is not written and not
   published (``already_stored``); it only advances the in-memory state. Quarantine entries are
   keyed by (file, row) and written once. Duplicates, out-of-order candles and gaps are counted
   again, so a restarted run's counters equal a fresh run's.

This module has no Kafka code: the caller passes a publisher and the topic's state.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from reftrain.errors import InvalidRecordError
from reftrain.records import Candle, series_key, split_series, stable_id, timeframe_ms
from reftrain.store import CANDLE_COLS, LAKE, Store
from reftrain.validation import validate_candle
from services.ingest import limits
from services.ingest import metrics as m
from services.ingest.aggregate import Aggregator
from services.ingest.indicators import Indicators
from services.ingest.kafka_io import DeadRow
from services.ingest.sequencing import (
    CONFLICTING_DUPLICATE,
    Outcome,
    Sequencer,
    candle_values,
)
from services.ingest.sources import RowError, SourceItem

log = logging.getLogger(__name__)

FAR_FUTURE = 2**62
CONFLICTS_WITH_STORE = "conflicts_with_store"
BEFORE_STORE_LAST = "before_store_last"


class Publisher(Protocol):
    def publish(self, candles: Sequence[Candle], dead: Sequence[DeadRow] = ()) -> None:
        """Produce and wait until every message is acknowledged; raise on any failure."""


class StoreReader:
    """The few reads resume needs beyond the Store API, as single queries on the store's tables."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def series_last(self) -> dict[str, int]:
        rows = self.store.query(f"SELECT symbol, timeframe, max(open_time) FROM {LAKE}.candles GROUP BY ALL")
        return {series_key(s, tf): int(t) for s, tf, t in rows}

    def tail(self, symbol: str, timeframe: str, before: int, n: int) -> list[Candle]:
        """The last ``n`` candles with open_time < before, oldest first."""
        rows = self.store.query(
            f"""SELECT {", ".join(CANDLE_COLS)} FROM {LAKE}.candles WHERE symbol = ? AND timeframe = ?
                AND open_time < ? ORDER BY open_time DESC LIMIT ?""", [symbol, timeframe, before, n])
        return [_candle(r) for r in reversed(rows)]

    def span(self, symbol: str, timeframe: str, start: int, end: int) -> list[Candle]:
        """Candles with start <= open_time < end, oldest first."""
        rows = self.store.query(
            f"""SELECT {", ".join(CANDLE_COLS)} FROM {LAKE}.candles WHERE symbol = ? AND timeframe = ?
                AND open_time >= ? AND open_time < ? ORDER BY open_time""", [symbol, timeframe, start, end])
        return [_candle(r) for r in rows]

    def count_before(self, symbol: str, timeframe: str, before: int) -> int:
        rows = self.store.query(
            f"SELECT count(*) FROM {LAKE}.candles WHERE symbol = ? AND timeframe = ? AND open_time < ?",
            [symbol, timeframe, before])
        return int(rows[0][0])

    def indicators_at(self, symbol: str, timeframe: str, open_time: int) -> dict[str, float | None]:
        rows = self.store.query(
            f"""SELECT name, value FROM {LAKE}.candle_indicators WHERE symbol = ? AND timeframe = ?
                AND open_time = ?""", [symbol, timeframe, open_time])
        return {str(n): (None if v is None else float(v)) for n, v in rows}

    def dead_rows(self) -> list[DeadRow]:
        """Rows ingest quarantined (other services' entries in the shared table are skipped)."""
        out = []
        for (payload,) in self.store.query(f"SELECT payload FROM {LAKE}.quarantine"):
            try:
                p = json.loads(payload)
            except (TypeError, ValueError):
                continue
            if isinstance(p, dict) and p.get("service") == "ingest" and "id" in p:
                out.append(DeadRow.from_payload(p))
        return out


def _candle(row: Sequence[Any]) -> Candle:
    return dict(zip(CANDLE_COLS, row, strict=True))  # type: ignore[return-value]


@dataclass
class Stats:
    """Plain counts of this process (the Prometheus counters' twins, for tests and the bench)."""

    accepted: int = 0
    written: int = 0
    already_stored: int = 0
    invalid: int = 0
    quarantined: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    gaps: int = 0
    gap_bars: int = 0
    incomplete_buckets: int = 0
    republished: int = 0
    dlq_republished: int = 0
    batches: int = 0
    seed_seconds: float = 0.0
    store_seconds: float = 0.0
    publish_seconds: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)


class Pipeline:
    """Sequences, derives and writes-then-publishes candles; see the module doc."""

    def __init__(
        self,
        store: Store,
        publisher: Publisher,
        *,
        derive: Iterable[str] = (),
        sma: Iterable[int] = (),
        ema: Iterable[int] = (),
        batch: int = 500,
        memory: int = 1440,
        compact_every: int = 0,
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be >= 1")
        self.store = store
        self.reader = StoreReader(store)
        self.publisher = publisher
        self.batch = batch
        self.memory = memory
        self.compact_every = compact_every
        self.sequencer = Sequencer(memory=memory)
        derive = tuple(derive)
        self.aggregator = Aggregator(derive) if derive else None
        self.indicators = Indicators(sma, ema)
        self.stats = Stats()
        #: last open_time per series in the store (and, after start(), on the topic)
        self.stored_last: dict[str, int] = {}
        #: topic ahead of the store (store rebuilt): never publish at or below this
        self._published_floor: dict[str, int] = {}
        #: stored candles at/after the source start of each seeded series (compared on replay)
        self._overlap: dict[str, dict[int, Candle]] = {}
        self._seeded: set[str] = set()
        self._quarantined: set[str] = set()
        self._dead_published: set[str] = set()
        self._pending: list[Candle] = []
        self._pending_ind: list[dict[str, float | None]] = []
        self._pending_dead: list[DeadRow] = []
        self.symbols = limits.SymbolGate()  # bounded, well-formed series (services/ingest/limits.py)

    # -- start-up --------------------------------------------------------------------------------
    def load_store_state(self) -> dict[str, int]:
        """Last stored open_time per series; the caller looks these series up on the topic."""
        self.stored_last = self.reader.series_last()
        return dict(self.stored_last)

    def repair(self, published_last: Mapping[str, int], dead_published: set[str]) -> None:
        """Publish, once, what the store has and the topic lacks (candles and quarantined rows)."""
        for s, last in sorted(self.stored_last.items()):
            pub = published_last.get(s)
            if pub is not None and pub >= last:
                if pub > last:  # the store was rebuilt: store those candles again, publish them no more
                    log.error("topic is ahead of the store; not republishing up to its last candle",
                              extra={"series": s, "stored_last": last, "published_last": pub})
                    self._published_floor[s] = pub
                continue
            symbol, tf = split_series(s)
            after = -1 if pub is None else pub
            n = 0
            while True:
                chunk = self.store.candles_after(symbol, tf, after, limit=max(self.batch, 1000))
                if not chunk:
                    break
                t = time.perf_counter()
                self.publisher.publish(chunk)
                self.stats.publish_seconds += time.perf_counter() - t
                n += len(chunk)
                after = chunk[-1]["open_time"]
            m.REPUBLISHED.labels(s).inc(n)
            m.LAST_OPEN_TIME.labels(s).set(last)
            self.stats.republished += n
            log.warning("published stored candles missing from the topic (crash between commit and publish)",
                        extra={"series": s, "from_after": pub, "to": last, "candles": n})
        rows = self.reader.dead_rows()
        self._quarantined = {d.qid for d in rows}
        missing = [d for d in rows if d.qid not in dead_published]
        if missing:
            self.publisher.publish([], missing)
            m.DLQ_REPUBLISHED.inc(len(missing))
            self.stats.dlq_republished += len(missing)
            log.warning("published quarantined rows missing from the dead-letter topic",
                        extra={"rows": len(missing)})
        self._dead_published = set(dead_published) | {d.qid for d in missing}

    def seed(self, symbol: str, timeframe: str, before: int | None) -> None:
        """Restore a source series' state from its stored history before ``before`` (the first
        source candle; None: all history, live mode), and that of its derived series."""
        key = series_key(symbol, timeframe)
        self._seeded.add(key)
        if key not in self.stored_last:  # nothing stored: nothing to restore (and no query to make)
            self.sequencer.resume(symbol, timeframe, [])
            self._overlap[key] = {}
            return
        t = time.perf_counter()
        self._seed(symbol, timeframe, before)
        self.stats.seed_seconds += time.perf_counter() - t

    def _seed(self, symbol: str, timeframe: str, before: int | None) -> None:
        key = series_key(symbol, timeframe)
        bound = FAR_FUTURE if before is None else before
        bar = timeframe_ms(timeframe)
        tail = self.reader.tail(symbol, timeframe, bound, max(self.memory, self.indicators.window))
        self.sequencer.resume(symbol, timeframe, tail[-self.memory:])
        self._seed_indicators(symbol, timeframe, bound, tail)
        self._overlap[key] = {} if before is None else {
            c["open_time"]: c for c in self.reader.span(symbol, timeframe, before, FAR_FUTURE)}
        agg = self.aggregator
        if agg is None or timeframe != agg.base:
            return
        nxt = before if before is not None else (tail[-1]["open_time"] + bar if tail else None)
        if nxt is None:
            return
        starts = {tf: nxt - nxt % ms for tf, ms in agg.targets.items()}
        for c in self.reader.span(symbol, timeframe, min(starts.values()), nxt):
            agg.push(c)  # rebuilds the open buckets; what it emits is already stored
        for tf, start in starts.items():
            self._seed_indicators(symbol, tf, start, None)

    def _seed_indicators(self, symbol: str, timeframe: str, bound: int, tail: list[Candle] | None) -> None:
        ind = self.indicators
        if series_key(symbol, timeframe) not in self.stored_last:
            return
        if tail is None:
            tail = self.reader.tail(symbol, timeframe, bound, ind.window)
        if not tail:
            return
        count = self.reader.count_before(symbol, timeframe, bound)
        last = tail[-1]["open_time"]
        stored = self.reader.indicators_at(symbol, timeframe, last)
        ema = {p: stored.get(f"ema_{p}") for p in ind.ema_periods}
        try:
            ind.seed(symbol, timeframe, closes=[c["close"] for c in tail[-ind.window:]], count=count,
                     last_open_time=last, ema=ema)
        except ValueError as exc:  # periods changed: replay the stored history once
            log.info("replaying stored closes to seed indicators", extra={
                "series": series_key(symbol, timeframe), "reason": str(exc), "candles": count})
            fresh = Indicators(ind.sma_periods, ind.ema_periods)
            for c in self.reader.tail(symbol, timeframe, bound, count):
                fresh.update(c)
            st = fresh.state()["series"][series_key(symbol, timeframe)]
            ind.seed(symbol, timeframe, closes=st["closes"], count=st["count"], last_open_time=last,
                     ema={int(p): v for p, v in st["ema"].items()})

    # -- processing ------------------------------------------------------------------------------
    def offer(self, item: SourceItem, row: int | None = None) -> None:
        """Handle one source item (a candle or a row that did not parse); may flush a batch."""
        if isinstance(item, RowError):
            self._quarantine(item.source, item.row, None, item.reason, item.detail, item.raw)
            return
        c = item
        refused = self.symbols.refuse(c.get("symbol"), c.get("timeframe"))
        if refused is not None:
            self._quarantine(str(c.get("source", "")), row, None, *refused, _jsonable(c),
                             key=f"{c.get('open_time')}#{refused[0]}")
            return
        v = self.sequencer.check(c)
        if v.outcome is Outcome.INVALID:
            self._quarantine(str(c.get("source", "")), row, _series_or_none(c), v.reason, v.detail,
                             _jsonable(c), key=f"{c.get('open_time')}#{v.reason}")
            return
        s = series_key(c["symbol"], c["timeframe"])
        if s not in self._seeded:
            self.seed(c["symbol"], c["timeframe"], None)
            v = self.sequencer.check(c)
        if v.outcome is Outcome.DUPLICATE:
            self.stats.duplicates += 1
            m.DUPLICATES.inc()
            if v.reason == CONFLICTING_DUPLICATE:
                self._quarantine(c["source"], row, s, v.reason, v.detail, _jsonable(c),
                                 key=f"{c['open_time']}#{v.reason}")
            return
        if v.outcome is Outcome.OUT_OF_ORDER:
            self._out_of_order(s, c, v.detail)
            return
        guard = self.sequencer.guards[s]
        if v.gap_bars:
            self.stats.gaps += 1
            self.stats.gap_bars += v.gap_bars
            m.GAPS.labels(s).inc()
            m.GAP_BARS.labels(s).inc(v.gap_bars)
            log.warning("gap in series (not filled)", extra={
                "series": s, "gap_from": v.gap_start, "gap_to": c["open_time"] - guard.bar_ms,
                "bars": v.gap_bars})
        write = c["open_time"] > self.stored_last.get(s, -1)
        if not write:  # a restart replaying what the store already has
            stored = self._overlap.get(s, {}).get(c["open_time"])
            if stored is None:
                self._out_of_order(s, c, f"store already goes to {self.stored_last[s]}", BEFORE_STORE_LAST)
                return
            if candle_values(stored) != candle_values(c):
                self._quarantine(c["source"], row, s, CONFLICTS_WITH_STORE,
                                 f"stored {candle_values(stored)} != source {candle_values(c)}", _jsonable(c),
                                 key=f"{c['open_time']}#{CONFLICTS_WITH_STORE}")
                c = stored
            self.stats.already_stored += 1
            m.ALREADY_STORED.labels(s).inc()
        guard.commit(c, validate=False)
        self.stats.accepted += 1
        self._advance(c, write)

    def _out_of_order(self, s: str, c: Candle, detail: str, reason: str = "out_of_order") -> None:
        self.stats.out_of_order += 1
        m.OUT_OF_ORDER.inc()
        log.info("out-of-order candle ignored", extra={
            "series": s, "open_time": c["open_time"], "reason": reason, "detail": detail})

    def _advance(self, c: Candle, write: bool) -> None:
        values = self.indicators.update(c)
        if write:
            self._pending.append(c)
            self._pending_ind.append(values)
        agg = self.aggregator
        if agg is not None and c["timeframe"] == agg.base:
            out = agg.push(c)
            for b in out.dropped:
                self.stats.incomplete_buckets += 1
                m.INCOMPLETE_BUCKETS.labels(b.timeframe).inc()
                log.info("incomplete bucket not derived", extra={
                    "series": series_key(b.symbol, b.timeframe), "open_time": b.open_time,
                    "have": b.have, "need": b.need})
            for d in out.candles:
                dv = self.indicators.update(d)
                if d["open_time"] > self.stored_last.get(series_key(d["symbol"], d["timeframe"]), -1):
                    self._pending.append(d)
                    self._pending_ind.append(dv)
        if len(self._pending) >= self.batch:
            self.flush()

    def _quarantine(self, source: str, row: int | None, series: str | None, reason: str, detail: str,
                    raw: Any, key: str = "") -> None:
        """Queue a quarantine entry; (file, row) names it, or (source, series, key) for live input."""
        qid = f"{source}#{row}" if row is not None else f"{source}#{series}#{key}"
        self.stats.reasons[reason] = self.stats.reasons.get(reason, 0) + 1
        if reason not in (CONFLICTING_DUPLICATE, CONFLICTS_WITH_STORE):
            self.stats.invalid += 1
            m.INVALID.labels(reason).inc()
        m.QUARANTINED.labels(reason).inc()
        log.warning("quarantined", extra={"source": source, "row": row, "series": series, "reason": reason,
                                          "detail": detail[:300]})
        self._pending_dead.append(DeadRow(qid, source, row, series, reason, detail, raw))

    def quarantine_message(self, source: str, raw: str | bytes, reason: str, detail: str) -> None:
        """A live message that is not a readable kline (the WebSocket's bad input)."""
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        self._quarantine(source, None, None, reason, detail, text[:10_000], key=stable_id(text))

    @property
    def pending(self) -> int:
        """Candles and quarantine entries waiting for the next flush."""
        return len(self._pending) + len(self._pending_dead)

    def flush(self) -> int:
        """Commit the pending batch to the store, then publish it; returns candles written."""
        candles, values, dead = self._pending, self._pending_ind, self._pending_dead
        if not candles and not dead:
            return 0
        self._pending, self._pending_ind, self._pending_dead = [], [], []
        for d in dead:
            if d.qid not in self._quarantined:
                self.store.quarantine(d.source, d.reason, d.detail, json.dumps(d.payload(), default=str))
                self._quarantined.add(d.qid)
                self.stats.quarantined += 1
        t0 = time.perf_counter()
        if candles:
            res = self.store.append_candles(candles, values)
            if res.skipped_duplicates:
                log.warning("store already had candles of this batch", extra={"skipped": res.skipped_duplicates})
        t1 = time.perf_counter()
        floor = self._published_floor
        to_publish = [c for c in candles
                      if c["open_time"] > floor.get(series_key(c["symbol"], c["timeframe"]), -1)]
        dead_new = [d for d in dead if d.qid not in self._dead_published]
        self.publisher.publish(to_publish, dead_new)
        t2 = time.perf_counter()
        self._dead_published.update(d.qid for d in dead_new)
        if candles:
            m.STORE_WRITE_SECONDS.observe(t1 - t0)
            m.PUBLISH_SECONDS.observe(t2 - t1)
            m.BATCH_CANDLES.observe(len(candles))
        self.stats.store_seconds += t1 - t0
        self.stats.publish_seconds += t2 - t1
        self.stats.batches += 1
        self.stats.written += len(candles)
        last: dict[str, int] = {}
        counts: dict[str, int] = {}
        for c in candles:
            s = series_key(c["symbol"], c["timeframe"])
            last[s] = c["open_time"]
            counts[s] = counts.get(s, 0) + 1
        for s, t in last.items():
            self.stored_last[s] = max(self.stored_last.get(s, -1), t)
            m.CANDLES_INGESTED.labels(s).inc(counts[s])
            m.LAST_OPEN_TIME.labels(s).set(t)
        if candles and self.compact_every and self.stats.batches % self.compact_every == 0:
            self.compact()
        return len(candles)

    def compact(self) -> None:
        t = time.perf_counter()
        self.store.compact()
        log.info("store compacted", extra={"seconds": round(time.perf_counter() - t, 3)})

    def finish(self) -> None:
        """End of a finite source: flush, and count the buckets that can no longer complete."""
        self.flush()
        if self.aggregator is not None:
            for d in self.aggregator.flush():
                self.stats.incomplete_buckets += 1
                m.INCOMPLETE_BUCKETS.labels(d.timeframe).inc()

    def last_open_times(self) -> dict[str, int]:
        return dict(self.stored_last)


def _series_or_none(c: Candle) -> str | None:
    try:
        return series_key(str(c["symbol"]), str(c["timeframe"]))
    except (KeyError, TypeError):
        return None


def _jsonable(c: Mapping[str, Any]) -> dict[str, Any]:
    """The candle as JSON can carry it (NaN/inf as strings, so the payload stays valid JSON)."""
    out: dict[str, Any] = {}
    for k, v in c.items():
        out[k] = str(v) if isinstance(v, float) and not math.isfinite(v) else v
    return out


def validate_or_reason(c: Mapping[str, Any]) -> str | None:
    """The validation reason of a candle, or None when it is valid."""
    try:
        validate_candle(dict(c))
    except InvalidRecordError as exc:
        return exc.reason
    except (KeyError, TypeError):
        return "malformed_record"
    return None
