"""Model input of a window and the InferenceRef of a prediction (pure: numpy, no torch, no Kafka).

What a ref carries is exactly what the trainer needs to rebuild the model input from the store
alone: the range ``[data_range_start, data_range_end]``, the row count ``window_size``, the window
checksum and the normaliser's params. ``norm_params`` are computed with ``prev_close=None`` (the
first row's open stands in for the close before the window), so the input depends on the rows of
the range and nothing else: no candle outside ``[data_range_start, data_range_end]`` is needed to
rebuild it, even when the row before the window is missing or later corrected.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from reftrain.adapters import Prediction, TrainingAdapter, choose_action
from reftrain.records import InferenceRef, NormParams, inference_id, series_key
from reftrain.window import Window
from services.inference.windows import target_timestamp


def model_input(window: Window, adapter: TrainingAdapter) -> tuple[NormParams, npt.NDArray[np.float32]]:
    """(norm_params, float32 features) of a window, reproducible from the window alone."""
    params = adapter.norm_params(window)
    if params.get("scheme") != adapter.scheme:
        raise ValueError(f"adapter {type(adapter).name!r} made params of scheme {params.get('scheme')!r}, "
                         f"not its own {adapter.scheme!r}")
    return params, adapter.features(window, params)


def build_ref(window: Window, norm_params: NormParams, prediction: Prediction,
              model_key: str, model_version: int, bar_ms: int, horizon: int, created_at: int) -> InferenceRef:
    """The InferenceRef of one prediction. Ids and times come from event times only, so a replay
    of the same candles with the same model version yields the same ``inference_id``."""
    series = series_key(window.symbol, window.timeframe)
    probs = prediction.probs
    action, confidence = choose_action(probs)
    return {
        "inference_id": inference_id(series, window.end, model_key, model_version),
        "model_key": model_key,
        "model_version": int(model_version),
        "symbol": window.symbol,
        "timeframe": window.timeframe,
        "data_range_start": window.start,
        "data_range_end": window.end,
        "window_size": len(window),
        "window_checksum": window.checksum(),
        "norm_params": norm_params,
        "predicted_action": action,
        "action_probs": {"buy": float(probs["buy"]), "sell": float(probs["sell"]), "hold": float(probs["hold"])},
        "predicted_candle": prediction.candle,
        "confidence": confidence,
        "target_timestamp": target_timestamp(window.end, bar_ms, horizon),
        "created_at": int(created_at),
    }
