"""A second, deliberately different adapter: multinomial logistic regression on a few engineered
features, in numpy only (no torch), trained online by plain SGD.

It exists to prove the adapter interface is real (inference and trainer run it unchanged via
``MODEL_ADAPTER=reftrain.adapters.linear:LinearAdapter``) and as a strong, honest baseline: if the
GRU cannot beat a linear model on eight numbers, the report should say so.

Feature scheme ``linfeat-v1`` (params: last_close, vol, logvol_mean, logvol_std), one row of
``N_FEATURES`` float32 values per window, each clipped to +-CLIP:

    0..3  log returns over the last 1, 5, 15, 60 bars / (vol * sqrt(bars))
    4     log(vol) + 7          (the volatility level itself: about 0 for 1m crypto)
    5     log(short vol / vol)  (the last 30 bars' volatility vs the window's)
    6     log(high / low) of the last bar / vol
    7     (log volume of the last bar - mean) / std over the window
    8     1                     (bias)
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from reftrain.adapters import CandleExample, PivotExample, Prediction, TrainingAdapter, fit_temperature, softmax
from reftrain.labels import PIVOT_CLASSES, window_vol
from reftrain.records import NormParams
from reftrain.window import Window

SCHEME = "linfeat-v1"
N_FEATURES = 9
CLIP = 10.0
LAGS = (1, 5, 15, 60)
SHORT = 30
PARAM_KEYS = ("last_close", "vol", "logvol_mean", "logvol_std")
CALIBRATION_TAIL = 512
MIN_CALIBRATION = 64


class LinearAdapter(TrainingAdapter):
    """Weights: action [F, 3], pivot [F, 3], close [F]; plus the mean high/low extensions."""

    name = "linear-logit-v1"
    scheme = SCHEME

    lr: float = 0.03
    l2: float = 1e-4

    def __init__(self, arrays: Mapping[str, npt.NDArray[Any]] | None = None) -> None:
        a = dict(arrays or {})
        self.w_action = np.asarray(a.get("w_action", np.zeros((N_FEATURES, 3))), dtype=np.float64)
        self.w_pivot = np.asarray(a.get("w_pivot", np.zeros((N_FEATURES, 3))), dtype=np.float64)
        self.w_close = np.asarray(a.get("w_close", np.zeros(N_FEATURES)), dtype=np.float64)
        # running means of (high - max(o, c)) and (min(o, c) - low) in vol units, and the count
        self.ext = np.asarray(a.get("ext", np.array([0.5, 0.5, 0.0])), dtype=np.float64)
        self.temperature = float(np.asarray(a.get("temperature", 1.0)))
        self.calib_logits = np.asarray(a.get("calib_logits", np.zeros((0, 3))), dtype=np.float64)
        self.calib_labels = np.asarray(a.get("calib_labels", np.zeros(0)), dtype=np.int64)

    @classmethod
    def create(cls, seed: int = 0, device: str | None = None) -> LinearAdapter:
        return cls()  # all-zero weights: uniform probabilities, no-change candle; the same everywhere

    @classmethod
    def load_state(cls, data: bytes, device: str | None = None) -> LinearAdapter:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls({k: z[k] for k in z.files})

    def save_state(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, w_action=self.w_action, w_pivot=self.w_pivot, w_close=self.w_close, ext=self.ext,
                 temperature=np.array(self.temperature), calib_logits=self.calib_logits,
                 calib_labels=self.calib_labels)
        return buf.getvalue()

    # -- features ------------------------------------------------------------------------------
    def norm_params(self, window: Window) -> NormParams:
        v = np.asarray(window.values, dtype=np.float64)
        logvol = np.log(v[:, 4] + 1e-8)
        return {"scheme": SCHEME, "params": {
            "last_close": float(v[-1, 3]), "vol": window_vol(v[:, 3]),
            "logvol_mean": float(np.mean(logvol)), "logvol_std": max(float(np.std(logvol)), 1e-6)}}

    def features(self, window: Window, norm_params: NormParams) -> npt.NDArray[np.float32]:
        if norm_params.get("scheme") != SCHEME:
            raise ValueError(f"norm_params scheme {norm_params.get('scheme')!r} is not {SCHEME!r}")
        raw = norm_params.get("params") or {}
        if any(k not in raw or not math.isfinite(float(raw[k])) for k in PARAM_KEYS):
            raise ValueError(f"norm_params.params must hold finite {PARAM_KEYS}")
        p = {k: float(raw[k]) for k in PARAM_KEYS}
        v = np.asarray(window.values, dtype=np.float64)
        if v.shape[0] < 2 or not np.all(v[:, :4] > 0):
            raise ValueError("window needs >= 2 rows of positive prices")
        c = v[:, 3]
        if float(c[-1]) != p["last_close"]:
            raise ValueError(f"norm_params last_close {p['last_close']!r} != window's last close {float(c[-1])!r}")
        vol = max(p["vol"], 1e-6)
        x = np.zeros(N_FEATURES, dtype=np.float64)
        for i, lag in enumerate(LAGS):
            k = min(lag, c.shape[0] - 1)
            x[i] = math.log(c[-1] / c[-1 - k]) / (vol * math.sqrt(k))
        x[4] = math.log(vol) + 7.0
        rets = np.diff(np.log(c[-(SHORT + 1):]))
        x[5] = math.log(max(float(np.std(rets)), 1e-6) / vol) if rets.shape[0] >= 2 else 0.0
        x[6] = math.log(v[-1, 1] / v[-1, 2]) / vol
        x[7] = (math.log(v[-1, 4] + 1e-8) - p["logvol_mean"]) / max(p["logvol_std"], 1e-6)
        x[8] = 1.0
        np.clip(x, -CLIP, CLIP, out=x)
        return x.astype(np.float32)

    # -- prediction ----------------------------------------------------------------------------
    def predict(self, xs: npt.NDArray[np.float32], norm_params: Sequence[NormParams]) -> list[Prediction]:
        x = np.asarray(xs, dtype=np.float64).reshape(len(norm_params), N_FEATURES)
        probs = softmax(x @ self.w_action / self.temperature)
        pivot = softmax(x @ self.w_pivot)
        close_z = x @ self.w_close
        out = []
        for i, params in enumerate(norm_params):
            last, vol = float(params["params"]["last_close"]), float(params["params"]["vol"])
            close = last * math.exp(close_z[i] * vol)
            high = max(last, close) * math.exp(self.ext[0] * vol)
            low = min(last, close) * math.exp(-self.ext[1] * vol)
            heads = {f"pivot_{k.lower()}": float(v) for k, v in zip(PIVOT_CLASSES, pivot[i], strict=True)}
            out.append(Prediction({"buy": float(probs[i, 0]), "sell": float(probs[i, 1]), "hold": float(probs[i, 2])},
                                  {"open": last, "high": high, "low": low, "close": close}, heads))
        return out

    # -- training ------------------------------------------------------------------------------
    def train_candle(self, batch: Sequence[CandleExample]) -> dict[str, float]:
        x = np.stack([np.asarray(e.x, dtype=np.float64).reshape(N_FEATURES) for e in batch])
        y = np.array([e.action for e in batch], dtype=np.int64)
        logits = x @ self.w_action  # before the update: held-out for calibration
        loss = self._sgd_softmax(self.w_action, x, y, logits)
        z = np.empty(len(batch))
        for i, e in enumerate(batch):
            last, vol = float(e.norm_params["params"]["last_close"]), float(e.norm_params["params"]["vol"])
            o, h, lo, c = (float(e.candle[k]) for k in ("open", "high", "low", "close"))
            z[i] = math.log(c / last) / vol
            n = self.ext[2] + 1
            self.ext[0] += (math.log(h / max(o, c)) / vol - self.ext[0]) / n
            self.ext[1] += (math.log(min(o, c) / lo) / vol - self.ext[1]) / n
            self.ext[2] = min(n, 10_000.0)  # a running mean that keeps adapting slowly
        z = np.clip(z, -CLIP, CLIP)
        err = x @ self.w_close - z
        self.w_close -= self.lr * (x.T @ err / len(batch) + self.l2 * self.w_close)
        self.calib_logits = np.concatenate([self.calib_logits, logits])[-CALIBRATION_TAIL:]
        self.calib_labels = np.concatenate([self.calib_labels, y])[-CALIBRATION_TAIL:]
        if self.calib_labels.shape[0] >= MIN_CALIBRATION:
            self.temperature = fit_temperature(self.calib_logits, self.calib_labels)
        return {"loss": loss, "action_loss": loss, "candle_loss": float(np.mean(err**2)),
                "temperature": self.temperature}

    def train_pivot(self, batch: Sequence[PivotExample]) -> dict[str, float]:
        x = np.stack([np.asarray(e.x, dtype=np.float64).reshape(N_FEATURES) for e in batch])
        y = np.array([e.label for e in batch], dtype=np.int64)
        loss = self._sgd_softmax(self.w_pivot, x, y, x @ self.w_pivot)
        return {"loss": loss, "pivot_loss": loss}

    def _sgd_softmax(self, w: npt.NDArray[np.float64], x: npt.NDArray[np.float64], y: npt.NDArray[np.int64],
                     logits: npt.NDArray[np.float64]) -> float:
        """One SGD step of multinomial log loss (in place); returns the loss before it."""
        p = softmax(logits)
        loss = float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))
        p[np.arange(len(y)), y] -= 1.0
        w -= self.lr * (x.T @ p / len(y) + self.l2 * w)
        return loss

    @classmethod
    def configure(cls, options: Mapping[str, Any]) -> None:
        return None  # TRAINER_LR is tuned for AdamW on the network; this model keeps its own rate
