"""Training jobs over REAL candles, built the way inference and the coordinator would build them.

These refs are SYNTHESISED by the tests because no inference service runs in them: a window of
``window_size`` stored rows ending at candle ``i``, ``norm_params = compute_norm_params(window)``,
``window_checksum = window.checksum()``, target = the next bar. CANDLE jobs carry the real next
candle; PIVOT jobs carry real pivots found by ``services.pivots.detector.detect_pivots`` over the
same candles, joined to every ref whose inference time (``data_range_end``) lies within
±``PIVOT_WINDOW_MS`` of the pivot's ``pivot_time``, as the coordinator does (DESIGN §6.6). Job ids
come from ``reftrain.records.job_id``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reftrain.errors import StoreError
from reftrain.model import compute_norm_params
from reftrain.records import (
    Candle,
    InferenceRef,
    Pivot,
    TrainingJob,
    inference_id,
    job_id,
    series_key,
    timeframe_ms,
)
from reftrain.window import COLUMNS, Window
from services.pivots.detector import detect_pivots

BTC_1M = "BTCUSDT-1m-2025-09-22_2025-09-25.csv"
ETH_1H = "ETHUSDT-1h-2017-08-21_2020-09-08.csv"
PIVOT_WINDOW_MS = 300_000
CREATED_AT = 1_760_000_000_000


def window_of(candles: Sequence[Candle]) -> Window:
    c0 = candles[0]
    return Window(c0["symbol"], c0["timeframe"], np.array([c["open_time"] for c in candles], dtype=np.int64),
                  np.array([[c["open"], c["high"], c["low"], c["close"], c["volume"]] for c in candles],
                           dtype=np.float64))


def make_ref(candles: Sequence[Candle], end: int, window_size: int, model_version: int = 0) -> InferenceRef:
    """The ref inference would log after candle ``end`` closed (synthesised: no inference runs here)."""
    rows = candles[end - window_size + 1:end + 1]
    w = window_of(rows)
    c = candles[end]
    series = series_key(c["symbol"], c["timeframe"])
    return {
        "inference_id": inference_id(series, c["open_time"], series, model_version),
        "model_key": series,
        "model_version": model_version,
        "symbol": c["symbol"],
        "timeframe": c["timeframe"],
        "data_range_start": rows[0]["open_time"],
        "data_range_end": c["open_time"],
        "window_size": window_size,
        "window_checksum": w.checksum(),
        "norm_params": compute_norm_params(w),
        "predicted_action": "HOLD",
        "action_probs": {"buy": 0.25, "sell": 0.25, "hold": 0.5},
        "predicted_candle": None,
        "confidence": 0.5,
        "target_timestamp": c["open_time"] + timeframe_ms(c["timeframe"]),
        "created_at": CREATED_AT,
    }


def candle_job(ref: InferenceRef, candle: Candle) -> TrainingJob:
    return {"job_id": job_id(ref["inference_id"], "CANDLE", ref["target_timestamp"]), "model_key": ref["model_key"],
            "trigger": "CANDLE", "ref": copy.deepcopy(ref), "actual_candle": dict(candle), "pivot": None,
            "created_at": CREATED_AT}


def pivot_job(ref: InferenceRef, pivot: Pivot) -> TrainingJob:
    return {"job_id": job_id(ref["inference_id"], "PIVOT", pivot["pivot_id"]), "model_key": ref["model_key"],
            "trigger": "PIVOT", "ref": copy.deepcopy(ref), "actual_candle": None, "pivot": dict(pivot),  # type: ignore[typeddict-item]
            "created_at": CREATED_AT}


def synth_jobs(candles: Sequence[Candle], window_size: int, first_end: int | None = None,
               last_end: int | None = None, max_pivot_jobs: int = 20) -> list[TrainingJob]:
    """CANDLE jobs for refs ending at ``first_end..last_end`` (whose next bar exists) and up to
    ``max_pivot_jobs`` PIVOT jobs, in the order of the refs' inference time (as a coordinator emits)."""
    first = window_size - 1 if first_end is None else first_end
    last = len(candles) - 2 if last_end is None else last_end
    bar = timeframe_ms(candles[0]["timeframe"])
    pivots = detect_pivots(list(candles))
    out: list[tuple[int, int, TrainingJob]] = []
    n_pivot = 0
    for end in range(first, last + 1):
        ref = make_ref(candles, end, window_size)
        nxt = candles[end + 1]
        if nxt["open_time"] == candles[end]["open_time"] + bar:
            out.append((end, 0, candle_job(ref, nxt)))
        for p in pivots:
            if n_pivot < max_pivot_jobs and abs(p["pivot_time"] - ref["data_range_end"]) <= PIVOT_WINDOW_MS:
                out.append((end, 1, pivot_job(ref, p)))
                n_pivot += 1
    out.sort(key=lambda t: (t[0], t[1]))
    return [j for _, _, j in out]


class MemStore:
    """The parts of reftrain.store.Store the trainer uses, over in-memory candles; counts reads."""

    def __init__(self, data_path: Path, candles: Iterable[Candle] = ()) -> None:
        self.data_path = str(data_path)
        self.rows: dict[tuple[str, str], dict[int, tuple[float, ...]]] = {}
        self.versions: list[dict[str, Any]] = []
        self.read_calls = 0
        self.rows_read = 0
        self.fail_rows = False
        self.add(candles)

    def add(self, candles: Iterable[Candle]) -> None:
        for c in candles:
            self.rows.setdefault((c["symbol"], c["timeframe"]), {}).setdefault(
                c["open_time"], tuple(float(c[k]) for k in COLUMNS))  # type: ignore[literal-required]

    def remove(self, symbol: str, timeframe: str, open_time: int) -> None:
        del self.rows[(symbol, timeframe)][open_time]

    def _window(self, symbol: str, timeframe: str, start: int, end: int) -> Window:
        rows = self.rows.get((symbol, timeframe), {})
        times = sorted(t for t in rows if start <= t <= end)
        self.rows_read += len(times)
        values = np.array([rows[t] for t in times], dtype=np.float64).reshape(len(times), len(COLUMNS))
        return Window(symbol, timeframe, np.array(times, dtype=np.int64), values)

    def read_range(self, symbol: str, timeframe: str, start: int, end: int) -> Window:
        self.read_calls += 1
        return self._window(symbol, timeframe, start, end)

    def read_ranges(self, requests: Iterable[tuple[str, str, int, int]]) -> dict[tuple[str, str], Window]:
        self.read_calls += 1
        spans: dict[tuple[str, str], tuple[int, int]] = {}
        for symbol, tf, start, end in requests:
            lo, hi = spans.get((symbol, tf), (start, end))
            spans[(symbol, tf)] = (min(lo, start), max(hi, end))
        return {k: self._window(k[0], k[1], lo, hi) for k, (lo, hi) in spans.items()}

    def record_model_version(self, model_key: str, version: int, checkpoint_path: str, trained_jobs: int,
                             metrics: dict[str, float], created_at: int) -> None:
        if self.fail_rows:
            raise StoreError("catalog unavailable")
        self.versions.append({"model_key": model_key, "version": version, "checkpoint_path": checkpoint_path,
                              "trained_jobs": trained_jobs, "metrics": dict(metrics), "created_at": created_at})

    def latest_model_version(self, model_key: str) -> dict[str, Any] | None:
        rows = [r for r in self.versions if r["model_key"] == model_key]
        return max(rows, key=lambda r: r["version"]) if rows else None
