"""Normalisation scheme ``logret-v1``: raw window -> model input, and head output -> prices.

Pure numpy (no torch) so the coordinator or a notebook can use it without the model.

Model input, one row per candle ``i`` of the window (float32, ``[n, N_FEATURES]``)::

    prev_close_0 = params["first_ref_close"]        (close before the window if the caller knew it,
                                                      else the first candle's own open)
    prev_close_i = close_{i-1}                      (i >= 1)
    x[i, 0:4]    = clip(log(o|h|l|c_i / prev_close_i) / ret_scale, -CLIP, CLIP)
    x[i, 4]      = clip((log(volume_i + VOLUME_EPS) - logvol_mean) / logvol_std, -CLIP, CLIP)

Returns are divided by ``ret_scale`` (the std of the window's close-to-close log returns) so one
model sees every timeframe and volatility regime in the same units; the next-candle head predicts
in those units too and ``decode_candle`` maps them back to prices with ``ret_scale`` and
``last_close``. ``norm_params.params`` therefore holds five finite floats:

``first_ref_close``, ``last_close``, ``ret_scale``, ``logvol_mean``, ``logvol_std``.

Everything data-dependent is in the params; constants (``CLIP``, ``VOLUME_EPS``, floors) belong to
the scheme name, so a change of any of them must get a new scheme name.

Reproducibility: ``build_input`` is element-wise float64 arithmetic on the raw values and the
stored params, then one rounding to float32, so the same window and params give the same bytes in
any process with the same numpy build and CPU family (the statistics are never recomputed by the
trainer; it uses the ones the ref carries).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from reftrain.records import ACTIONS, Action, ActionProbs, NormParams, PredictedCandle
from reftrain.window import Window

SCHEME = "logret-v1"
N_FEATURES = 5
PARAM_KEYS: tuple[str, ...] = ("first_ref_close", "last_close", "ret_scale", "logvol_mean", "logvol_std")

CLIP = 10.0
"""Features are clipped to +-CLIP (in units of the window's std) so one bad print cannot blow up."""
VOLUME_EPS = 1e-8
"""Added to volume before the log so a zero-volume candle (exchange outage) stays finite."""
MIN_RET_SCALE = 1e-6
"""Floor of ret_scale: a flat window (all closes equal) would otherwise divide by zero."""
MIN_LOGVOL_STD = 1e-6

_O, _H, _L, _C, _V = range(5)


def compute_norm_params(window: Window, prev_close: float | None = None) -> NormParams:
    """Statistics of ``window`` that ``build_input`` needs; computed once, at inference.

    ``prev_close`` is the close of the candle just before the window, when the caller has it;
    otherwise the first candle's open stands in, so the first row's open return is 0.
    """
    values = _checked_values(window)
    first_ref = float(values[0, _O]) if prev_close is None else float(prev_close)
    if not (math.isfinite(first_ref) and first_ref > 0.0):
        raise ValueError(f"prev_close must be a positive finite price, got {prev_close!r}")
    close = values[:, _C]
    ret_std = float(np.std(np.log(close[1:] / close[:-1]))) if close.shape[0] >= 2 else 0.0
    logvol = np.log(values[:, _V] + VOLUME_EPS)
    params = {
        "first_ref_close": first_ref,
        "last_close": float(close[-1]),
        "ret_scale": max(ret_std, MIN_RET_SCALE),
        "logvol_mean": float(np.mean(logvol)),
        "logvol_std": max(float(np.std(logvol)), MIN_LOGVOL_STD),
    }
    _check_params(params)
    return {"scheme": SCHEME, "params": params}


def build_input(window: Window, norm_params: NormParams) -> npt.NDArray[np.float32]:
    """The model input ``[n, N_FEATURES]`` float32, rebuilt from the raw window and stored params.

    Raises ValueError if the params are of another scheme, malformed, or belong to another window
    (their ``last_close`` differs from the window's), so a mismatched ref never trains silently.
    """
    p = checked_params(norm_params)
    values = _checked_values(window)
    if float(values[-1, _C]) != p["last_close"]:
        raise ValueError(
            f"norm_params last_close {p['last_close']!r} != window's last close {float(values[-1, _C])!r}"
        )
    prev_close = np.empty(values.shape[0], dtype=np.float64)
    prev_close[0] = p["first_ref_close"]
    prev_close[1:] = values[:-1, _C]
    out = np.empty((values.shape[0], N_FEATURES), dtype=np.float64)
    out[:, 0:4] = np.log(values[:, 0:4] / prev_close[:, None]) / p["ret_scale"]
    out[:, 4] = (np.log(values[:, _V] + VOLUME_EPS) - p["logvol_mean"]) / p["logvol_std"]
    np.clip(out, -CLIP, CLIP, out=out)
    return np.ascontiguousarray(out, dtype=np.float32)


def candle_logrets(
    norm_params: NormParams, open_: float, high: float, low: float, close: float
) -> npt.NDArray[np.float64]:
    """A candle's o/h/l/c as log returns vs the window's last close, in units of ret_scale.

    This is the next-candle head's target; ``decode_candle`` is its inverse.
    """
    p = checked_params(norm_params)
    prices = np.array([open_, high, low, close], dtype=np.float64)
    if not (np.all(np.isfinite(prices)) and np.all(prices > 0.0)):
        raise ValueError(f"candle prices must be positive and finite, got {prices.tolist()}")
    out: npt.NDArray[np.float64] = np.log(prices / p["last_close"]) / p["ret_scale"]
    return out


def decode_candle(head_output: npt.ArrayLike, norm_params: NormParams) -> PredictedCandle:
    """Prices of the next-candle head's output ``[o, h, l, c]`` (log returns / ret_scale)."""
    p = checked_params(norm_params)
    z = np.asarray(head_output, dtype=np.float64).reshape(-1)
    if z.shape[0] != 4:
        raise ValueError(f"head output must have 4 values (o, h, l, c), got {z.shape[0]}")
    prices = p["last_close"] * np.exp(z * p["ret_scale"])
    o, h, low, c = (float(x) for x in prices)
    # The network's head already orders h >= max(o, c) >= min(o, c) >= l; enforce it against
    # rounding so the record always passes candle validation downstream.
    return {"open": o, "high": max(h, o, c), "low": min(low, o, c), "close": c}


def choose_action(probs: ActionProbs) -> tuple[Action, float]:
    """The most probable action and its probability (ties go to the earlier of BUY, SELL, HOLD)."""
    values = (probs["buy"], probs["sell"], probs["hold"])
    best = max(range(3), key=lambda i: (values[i], -i))
    return ACTIONS[best], float(values[best])


def checked_params(norm_params: NormParams | Mapping[str, object]) -> dict[str, float]:
    """The params of a ``logret-v1`` NormParams, validated (scheme, keys, finite, positive)."""
    scheme = norm_params.get("scheme")
    if scheme != SCHEME:
        raise ValueError(f"norm_params scheme {scheme!r} is not {SCHEME!r}")
    raw = norm_params.get("params")
    if not isinstance(raw, Mapping):
        raise ValueError("norm_params.params must be a mapping")
    missing = [k for k in PARAM_KEYS if k not in raw]
    if missing:
        raise ValueError(f"norm_params.params lacks {missing}")
    params = {k: float(raw[k]) for k in PARAM_KEYS}
    _check_params(params)
    return params


def _check_params(params: Mapping[str, float]) -> None:
    for key, value in params.items():
        if not math.isfinite(value):
            raise ValueError(f"norm param {key} is not finite: {value!r}")
    for key in ("first_ref_close", "last_close", "ret_scale", "logvol_std"):
        if params[key] <= 0.0:
            raise ValueError(f"norm param {key} must be > 0, got {params[key]!r}")


def _checked_values(window: Window) -> npt.NDArray[np.float64]:
    values = np.asarray(window.values, dtype=np.float64)
    if values.shape[0] == 0:
        raise ValueError("empty window")
    prices = values[:, 0:4]
    if not (np.all(np.isfinite(values)) and np.all(prices > 0.0) and np.all(values[:, _V] >= 0.0)):
        raise ValueError("window has non-finite values, non-positive prices or negative volume")
    return values
