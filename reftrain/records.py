"""Record types exchanged between services, ids derived from them, and time helpers.

Records are plain dicts shaped exactly like the Avro schemas in ``schemas/`` (fastavro reads and
writes dicts), typed here with TypedDict so mypy checks the field names.
"""

from __future__ import annotations

import hashlib
from typing import Literal, NotRequired, TypedDict

TIMEFRAME_MS: dict[str, int] = {
    "1m": 60_000,
    "3m": 180_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "4h": 14_400_000,
    "1d": 86_400_000,
}

Action = Literal["BUY", "SELL", "HOLD"]
PivotKind = Literal["HIGH", "LOW"]
Trigger = Literal["CANDLE", "PIVOT"]
ACTIONS: tuple[Action, ...] = ("BUY", "SELL", "HOLD")


class Candle(TypedDict):
    symbol: str
    timeframe: str
    open_time: int
    close_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    trades: int | None
    source: str


class Pivot(TypedDict):
    pivot_id: str
    symbol: str
    timeframe: str
    level: int
    kind: PivotKind
    pivot_time: int
    price: float
    confirmed_at: int
    strength: NotRequired[int]


class NormParams(TypedDict):
    scheme: str
    params: dict[str, float]


class ActionProbs(TypedDict):
    buy: float
    sell: float
    hold: float


class PredictedCandle(TypedDict):
    open: float
    high: float
    low: float
    close: float


class InferenceRef(TypedDict):
    inference_id: str
    model_key: str
    model_version: int
    symbol: str
    timeframe: str
    data_range_start: int
    data_range_end: int
    window_size: int
    window_checksum: str
    norm_params: NormParams
    predicted_action: Action
    action_probs: ActionProbs
    predicted_candle: PredictedCandle | None
    confidence: float
    target_timestamp: int
    created_at: int


class TrainingJob(TypedDict):
    job_id: str
    model_key: str
    trigger: Trigger
    ref: InferenceRef
    actual_candle: Candle | None
    pivot: Pivot | None
    created_at: int


class ModelVersion(TypedDict):
    model_key: str
    version: int
    checkpoint_path: str
    trained_jobs: int
    metrics: dict[str, float]
    created_at: int
    checkpoint_sha256: NotRequired[str | None]  # sha256 hex of the checkpoint file; checked before loading
    adapter: NotRequired[str | None]  # 'name/feature-scheme' of the training adapter that wrote it


def series_key(symbol: str, timeframe: str) -> str:
    """The Kafka key of a series: 'SYMBOL:TIMEFRAME' (plain UTF-8 so kcat shows it)."""
    return f"{symbol}:{timeframe}"


def split_series(series: str) -> tuple[str, str]:
    """Inverse of series_key; raises ValueError on a malformed key."""
    symbol, sep, timeframe = series.partition(":")
    if not sep or not symbol or timeframe not in TIMEFRAME_MS:
        raise ValueError(f"malformed series key {series!r}: expected SYMBOL:TIMEFRAME")
    return symbol, timeframe


def timeframe_ms(timeframe: str) -> int:
    try:
        return TIMEFRAME_MS[timeframe]
    except KeyError:
        raise ValueError(f"unknown timeframe {timeframe!r}; known: {sorted(TIMEFRAME_MS)}") from None


def stable_id(*parts: object) -> str:
    """Deterministic 128-bit hex id of the parts (a replay yields the same id)."""
    text = "|".join(str(p) for p in parts)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def pivot_id(series: str, level: int, kind: str, pivot_time: int) -> str:
    return stable_id(series, level, kind, pivot_time)


def inference_id(series: str, data_range_end: int, model_key: str, model_version: int) -> str:
    return stable_id(series, data_range_end, model_key, model_version)


def job_id(inference_id_: str, trigger: str, pivot_id_or_target: str | int) -> str:
    """TrainingJob id: (inference_id, trigger, pivot_id for PIVOT or target_timestamp for CANDLE)."""
    return stable_id(inference_id_, trigger, pivot_id_or_target)


def candle_series(candle: Candle) -> str:
    return series_key(candle["symbol"], candle["timeframe"])


def ref_series(ref: InferenceRef) -> str:
    return series_key(ref["symbol"], ref["timeframe"])
