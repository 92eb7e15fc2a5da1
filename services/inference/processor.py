"""The inference service's stream processor: candles in, one InferenceRef per completed candle out.

Why the work is split between ``process`` (per record) and ``end_batch`` (per transaction):

* ``process`` is cheap and decides everything that depends on stream order. A candle is bound, at
  that moment, to the model its series uses (so a ModelVersion consumed later in the same batch
  does not change it) and buffered. A ModelVersion is applied at once (hot reload).
* ``end_batch`` runs once per Kafka transaction, before the consumed offsets join it. It takes the
  window of every buffered candle from the series' ring buffer (``ring.SeriesRing``: the newest
  rows exactly as the store holds them, appended from ``candles``); the store is read only to seed
  a ring (first candle of a series after an assignment or a restart) or to repair it (a candle
  after a gap, after a late back-fill), one ``read_last`` per series covering all of that series'
  candles from there on (``windows.plan_reads``), lower-bounded in time. It normalises them, runs every window that
  shares a model through ONE ``predict_batch`` call (all series still on version 0 share one
  network, so many series closing at once are one batch), and emits the refs in consumption order.
  The refs commit atomically with the input offsets: after a crash the transaction is aborted and
  the same candles are predicted again, so no ref is lost or published twice.

Outcomes of a candle (``reftrain_inference_candles_total{outcome}``): ``predicted``;
``waiting_for_history`` (fewer than window_size rows up to it; also counted per series; no ref,
never padded); ``not_in_store`` (ingest's write-before-publish broken: logged with its coordinates);
``duplicate`` / ``out_of_order`` (open_time not after the last candle of the series seen in this
session: the ref for that inference time was already made); ``filtered`` (series not in
INFERENCE_SERIES); ``bad_window`` (the store's rows cannot be normalised). A candle whose Kafka key
is not its series, or a ModelVersion whose key is not its model_key, is dead-lettered
(``key_mismatch``): on another partition than its series it would reach another instance.

A store failure raises ``RestartSession``: the transaction aborts and the session restarts from the
committed offsets, so refs are delayed, never lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from reftrain.adapters import Prediction, TrainingAdapter
from reftrain.errors import InvalidRecordError, StoreError
from reftrain.records import Candle, ModelVersion, NormParams, series_key, timeframe_ms
from reftrain.streams import Context, Record, RestartSession
from reftrain.topics import CANDLES, INFERENCE_REFS, MODEL_VERSIONS
from reftrain.window import Window
from services.inference import metrics
from services.inference.models import LoadedModel, ModelRegistry
from services.inference.refs import build_ref, model_input
from services.inference.ring import SeriesRing
from services.inference.windows import Outcome, ReadPlan, missing_bars, plan_reads, select_window

log = logging.getLogger(__name__)

PredictFn = Callable[[TrainingAdapter, npt.NDArray[np.float32], list[NormParams]], list[Prediction]]


def _adapter_predict(adapter: TrainingAdapter, x: npt.NDArray[np.float32],
                     params: list[NormParams]) -> list[Prediction]:
    return adapter.predict(x, params)


class WindowSource(Protocol):
    """What the processor needs of ``reftrain.store.Store`` to read windows."""

    def read_last(self, symbol: str, timeframe: str, n: int, end: int | None = None,
                  start: int | None = None) -> Window: ...


@dataclass(frozen=True)
class _Pending:
    """A candle waiting for its prediction, bound to the model in use when it was consumed."""

    partition: int
    offset: int
    series: str
    symbol: str
    timeframe: str
    open_time: int
    event_ms: int  # Kafka timestamp of the candle message (latency metric)
    model: LoadedModel
    row: tuple[float, ...] = ()  # OHLCV in COLUMNS order: appended to the series' ring


@dataclass(frozen=True)
class _Ready:
    pending: _Pending
    window: Window
    norm_params: NormParams
    x: npt.NDArray[np.float32]


class InferenceProcessor:
    """``reftrain.streams.Processor`` (with ``end_batch``) of the inference service. Stateless
    between transactions: everything it holds in memory is rebuilt from the store and the topics."""

    def __init__(self, store: WindowSource, registry: ModelRegistry, *, window_size: int = 600, horizon: int = 1,
                 series: Sequence[str] = (), max_predict_batch: int = 256, predict: PredictFn | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self.registry = registry
        self.window_size = window_size
        self.horizon = horizon
        self.series_filter = frozenset(series)
        self.max_predict_batch = max_predict_batch
        self._predict = predict or _adapter_predict
        self._clock = clock
        self._pending: list[_Pending] = []
        self._last_seen: dict[str, int] = {}  # series -> open_time of its newest candle handled
        self._partition_of: dict[str, int] = {}  # series / model key -> partition number
        self._rings: dict[str, SeriesRing] = {}  # series -> its newest rows (windows from memory)

    # -- Processor protocol --------------------------------------------------------------------
    def assigned(self, partition: int, state: dict[str, Any]) -> None:
        """Nothing to restore: models come from the store, windows from the store."""

    def revoked(self, partition: int) -> None:
        for key in [k for k, p in self._partition_of.items() if p == partition]:
            self._partition_of.pop(key, None)
            self._last_seen.pop(key, None)
            self._rings.pop(key, None)
            self.registry.forget(key)
        self._pending = [p for p in self._pending if p.partition != partition]

    def process(self, record: Record, ctx: Context) -> None:
        if record.topic == CANDLES:
            self._on_candle(record)
        elif record.topic == MODEL_VERSIONS:
            self._on_model_version(record)
        else:  # pragma: no cover - the app subscribes to these two only
            raise InvalidRecordError("unexpected_topic", record.topic)

    def end_batch(self, ctx: Context) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            ready = self._read_windows(pending)
        except BaseException:
            self._rings.clear()  # the session restarts from committed offsets: rings are re-seeded
            raise
        results = self._predict_grouped(ready)
        for item in ready:
            prediction = results[id(item)]
            p = item.pending
            ref = build_ref(item.window, item.norm_params, prediction, p.model.key, p.model.version,
                            timeframe_ms(p.timeframe), self.horizon, int(self._clock() * 1000))
            ctx.emit(INFERENCE_REFS, p.series, dict(ref))
            metrics.REFS_TOTAL.labels(p.series).inc()
            metrics.CANDLES_TOTAL.labels(Outcome.OK.value).inc()
            metrics.LATENCY_SECONDS.observe(max(0.0, self._clock() - p.event_ms / 1000))
            if missing_bars(item.window, timeframe_ms(p.timeframe)) > 0:
                metrics.GAPPED_WINDOWS.labels(p.series).inc()

    # -- records ---------------------------------------------------------------------------------
    def _on_candle(self, record: Record) -> None:
        candle: Candle = record.value  # type: ignore[assignment]
        series = series_key(candle["symbol"], candle["timeframe"])
        if record.key != series:
            raise InvalidRecordError("key_mismatch", f"key {record.key!r} but candle of {series!r}")
        if self.series_filter and series not in self.series_filter:
            metrics.CANDLES_TOTAL.labels("filtered").inc()
            return
        open_time = int(candle["open_time"])
        last = self._last_seen.get(series)
        if last is not None and open_time <= last:
            metrics.CANDLES_TOTAL.labels("duplicate" if open_time == last else "out_of_order").inc()
            if open_time < last:  # a late back-fill may have changed stored rows the ring holds
                self._rings.pop(series, None)
            return
        model = self._model_for(series, record.partition)
        self._last_seen[series] = open_time
        self._pending.append(_Pending(record.partition, record.offset, series, candle["symbol"],
                                      candle["timeframe"], open_time, record.timestamp, model,
                                      (candle["open"], candle["high"], candle["low"], candle["close"],
                                       candle["volume"])))

    def _on_model_version(self, record: Record) -> None:
        mv: ModelVersion = record.value  # type: ignore[assignment]
        if record.key != mv["model_key"]:
            raise InvalidRecordError("key_mismatch", f"key {record.key!r} but ModelVersion of {mv['model_key']!r}")
        if self.series_filter and mv["model_key"] not in self.series_filter:
            metrics.MODEL_LOADS.labels("filtered").inc()
            return
        self._partition_of[mv["model_key"]] = record.partition
        try:
            self.registry.apply(mv)
        except StoreError as exc:
            raise RestartSession(f"store: {exc}") from exc

    def _model_for(self, key: str, partition: int) -> LoadedModel:
        self._partition_of[key] = partition
        try:
            return self.registry.current(key)
        except StoreError as exc:
            raise RestartSession(f"store: {exc}") from exc

    # -- batch work ------------------------------------------------------------------------------
    def _read_windows(self, pending: list[_Pending]) -> list[_Ready]:
        """Windows of every pending candle, in pending order; candles without one are counted.

        Per series (its candles are in increasing open_time): while a candle is one bar after the
        ring's newest row, its window comes from the ring; from the first one that is not, the rest
        of the series' candles are served by store reads and the ring is re-seeded from the last."""
        by_series: dict[str, list[_Pending]] = {}
        for p in pending:
            by_series.setdefault(p.series, []).append(p)
        selected: dict[int, _Ready] = {}
        for series, items in by_series.items():
            symbol, tf = items[0].symbol, items[0].timeframe
            bar = timeframe_ms(tf)
            ring = self._rings.get(series)
            k = 0
            while ring is not None and k < len(items) and ring.follows(items[k].open_time):
                p = items[k]
                ring.append(p.open_time, p.row)
                metrics.WINDOWS_TOTAL.labels("memory").inc()
                window = ring.window()
                if window is None:
                    self._waiting(p)
                elif (ready := self._ready(p, window)) is not None:
                    selected[id(p)] = ready
                k += 1
            if k == len(items):
                continue
            wanted = {p.open_time: p for p in items[k:]}
            block: Window | None = None
            for plan in plan_reads(list(wanted), self.window_size, bar):
                block = self._read_block(symbol, tf, plan, bar)
                for t in plan.times:
                    metrics.WINDOWS_TOTAL.labels("store").inc()
                    ready = self._select(wanted[t], block)
                    if ready is not None:
                        selected[id(wanted[t])] = ready
            if block is not None:
                ring = self._rings.get(series) or SeriesRing(symbol, tf, bar, self.window_size)
                ring.reset(block)
                self._rings[series] = ring
        return [selected[id(p)] for p in pending if id(p) in selected]

    def _read_block(self, symbol: str, tf: str, plan: ReadPlan, bar: int) -> Window:
        """``read_last(plan.n, plan.end)``, first bounded below to the plan's bars plus a margin for
        missing bars (a bounded read scans one stretch, not the series' whole history); only when
        that returns fewer than ``plan.n`` rows (a short history, or more gaps than the margin) is
        it repeated without the bound, so the result is the same either way."""
        margin = plan.n // 10 + 60
        started = time.monotonic()
        try:
            block = self._store.read_last(symbol, tf, plan.n, plan.end, start=plan.end - (plan.n - 1 + margin) * bar)
            if len(block) < plan.n:
                block = self._store.read_last(symbol, tf, plan.n, plan.end)
        except StoreError as exc:
            raise RestartSession(f"store: {exc}") from exc
        metrics.STORE_READ_SECONDS.observe(time.monotonic() - started)
        return block

    def _select(self, p: _Pending, block: Window) -> _Ready | None:
        sel = select_window(block, p.open_time, self.window_size)
        if sel.outcome is Outcome.WAITING:
            self._waiting(p)
            return None
        if sel.outcome is Outcome.NOT_IN_STORE:
            metrics.CANDLES_TOTAL.labels(Outcome.NOT_IN_STORE.value).inc()
            log.error("candle not in the store (published before written?); no ref", extra={
                "series": p.series, "open_time": p.open_time, "partition": p.partition, "offset": p.offset})
            return None
        assert sel.window is not None
        return self._ready(p, sel.window)

    def _waiting(self, p: _Pending) -> None:
        metrics.CANDLES_TOTAL.labels(Outcome.WAITING.value).inc()
        metrics.WAITING_FOR_HISTORY.labels(p.series).inc()

    def _ready(self, p: _Pending, window: Window) -> _Ready | None:
        try:
            params, x = model_input(window, p.model.adapter)
        except ValueError as exc:
            metrics.CANDLES_TOTAL.labels("bad_window").inc()
            log.error("window cannot be normalised; no ref", extra={
                "series": p.series, "open_time": p.open_time, "partition": p.partition, "offset": p.offset,
                "error": str(exc)[:300]})
            return None
        return _Ready(p, window, params, x)

    def _predict_grouped(self, ready: list[_Ready]) -> dict[int, Prediction]:
        """One predict call per distinct model (version 0 is one model for all keys), in chunks of
        ``max_predict_batch`` windows."""
        groups: dict[int, list[_Ready]] = {}
        for item in ready:
            groups.setdefault(id(item.pending.model.adapter), []).append(item)
        out: dict[int, Prediction] = {}
        chunks = [items[i:i + self.max_predict_batch] for items in groups.values()
                  for i in range(0, len(items), self.max_predict_batch)]
        for items in chunks:
            x = np.stack([item.x for item in items])
            started = time.monotonic()
            results = self._predict(items[0].pending.model.adapter, x, [item.norm_params for item in items])
            metrics.PREDICT_SECONDS.observe(time.monotonic() - started)
            metrics.BATCH_SIZE.observe(len(items))
            for item, result in zip(items, results, strict=True):
                out[id(item)] = result
        return out

    # -- introspection (tests, logs) -------------------------------------------------------------
    @property
    def pending(self) -> int:
        return len(self._pending)

    def model_versions(self) -> dict[str, int]:
        return self.registry.versions()
