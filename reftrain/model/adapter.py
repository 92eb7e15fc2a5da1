"""The built-in training adapter: the GRU network (``network``) behind ``reftrain.adapters``.

* features: scheme ``logret-v1`` (``features``), unchanged from the seed, so refs stay comparable;
* action head: trained from CANDLE jobs only (``train_candle``), labels from ``reftrain.labels``
  (HOLD band relative to the window's volatility);
* pivot head: trained from PIVOT jobs only (``train_pivot``), FUTURE_LOW / FUTURE_HIGH / PAST;
* calibration: the action logits of every CANDLE batch are kept, as computed BEFORE the model
  trains on that batch (a held-out prediction), in a ring of the last ``CALIBRATION_TAIL`` jobs; after
  each step a temperature is fitted on that ring (``adapters.fit_temperature``) and every later
  prediction divides its logits by it. A calibration example is thus always a job whose target
  candle had closed before the temperature is used, never one at or after the prediction.
* state: ``torch.save`` of plain tensors and numbers, loaded with ``weights_only=True``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from reftrain.adapters import CandleExample, PivotExample, Prediction, TrainingAdapter, fit_temperature, softmax
from reftrain.labels import PIVOT_CLASSES
from reftrain.model.checkpoint import to_cpu
from reftrain.model.features import SCHEME, build_input, candle_logrets, compute_norm_params, decode_candle
from reftrain.model.network import (
    DEFAULT_SEED,
    ModelConfig,
    RefTrainNet,
    exact_math,
    init_model,
    select_device,
    to_device,
)
from reftrain.model.training import DEFAULT_LR, SampleTarget, TargetBatch, amp_dtype, make_optimizer, training_step
from reftrain.records import NormParams
from reftrain.window import Window

CALIBRATION_TAIL = 512
"""CANDLE jobs kept for the temperature fit (the most recent ones, each scored before training)."""
MIN_CALIBRATION = 64
"""No temperature (T = 1) before this many held-out jobs: a fit on a handful over-fits."""


class TorchAdapter(TrainingAdapter):
    """RefTrainNet + AdamW + a fitted temperature; one instance per model lineage."""

    name = "builtin-gru-v2"
    scheme = SCHEME

    #: settable by the trainer before ``create``/``load_state`` (TRAINER_LR, TRAINER_AMP)
    lr: float = DEFAULT_LR
    amp: bool = False

    def __init__(self, model: RefTrainNet, device: torch.device, optimizer_state: dict[str, Any] | None = None,
                 temperature: float = 1.0, calib_logits: npt.NDArray[np.float64] | None = None,
                 calib_labels: npt.NDArray[np.int64] | None = None) -> None:
        self.device = device
        self.model = model.to(device)
        self.optimizer = make_optimizer(self.model, self.lr)
        if optimizer_state:
            self.optimizer.load_state_dict(optimizer_state)
        self.temperature = float(temperature)
        self.calib_logits = calib_logits if calib_logits is not None else np.zeros((0, 3), np.float64)
        self.calib_labels = calib_labels if calib_labels is not None else np.zeros(0, np.int64)

    # -- lifecycle -----------------------------------------------------------------------------
    @classmethod
    def configure(cls, options: Mapping[str, Any]) -> None:
        if "lr" in options:
            cls.lr = float(options["lr"])
        if "amp" in options:
            cls.amp = bool(options["amp"])

    @classmethod
    def create(cls, seed: int = DEFAULT_SEED, device: str | None = None) -> TorchAdapter:
        return cls(init_model(seed), select_device(device))

    @classmethod
    def from_model(cls, model: RefTrainNet, device: str | None = "cpu") -> TorchAdapter:
        """Wrap an existing network (tests, tools)."""
        return cls(model, select_device(device))

    def save_state(self) -> bytes:
        payload = {
            "config": self.model.config.to_dict(),
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": to_cpu(self.optimizer.state_dict()),
            "temperature": self.temperature,
            "calib_logits": torch.from_numpy(np.ascontiguousarray(self.calib_logits)),
            "calib_labels": torch.from_numpy(np.ascontiguousarray(self.calib_labels)),
        }
        buf = io.BytesIO()
        torch.save(payload, buf)
        return buf.getvalue()

    @classmethod
    def load_state(cls, data: bytes, device: str | None = None) -> TorchAdapter:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or "model" not in payload:
            raise ValueError("not a builtin-gru state")
        model = RefTrainNet(ModelConfig.from_dict(payload["config"]))
        model.load_state_dict(payload["model"])
        return cls(model, select_device(device), payload["optimizer"], float(payload["temperature"]),
                   payload["calib_logits"].numpy().astype(np.float64),
                   payload["calib_labels"].numpy().astype(np.int64))

    # -- features and prediction ---------------------------------------------------------------
    def norm_params(self, window: Window) -> NormParams:
        return compute_norm_params(window, prev_close=None)

    def features(self, window: Window, norm_params: NormParams) -> npt.NDArray[np.float32]:
        return build_input(window, norm_params)

    def raw_outputs(self, xs: npt.NDArray[np.float32], max_batch: int = 256
                    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """(action logits, candle head, pivot logits) as float64 arrays, without calibration."""
        x_all = np.asarray(xs, dtype=np.float32)
        if x_all.ndim != 3:
            raise ValueError(f"inputs must be [batch, n, features], got shape {x_all.shape}")
        self.model.eval()
        outs: list[tuple[Any, Any, Any]] = []
        with torch.inference_mode(), exact_math(self.device):
            for start in range(0, x_all.shape[0], max_batch):
                lg, cd, pv = self.model.forward_all(to_device(x_all[start:start + max_batch], self.device))
                outs.append((lg.double().cpu().numpy(), cd.double().cpu().numpy(), pv.double().cpu().numpy()))
        if not outs:
            return np.zeros((0, 3)), np.zeros((0, 4)), np.zeros((0, 3))
        return (np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs]),
                np.concatenate([o[2] for o in outs]))

    def predict(self, xs: npt.NDArray[np.float32], norm_params: Sequence[NormParams]) -> list[Prediction]:
        logits, candle, pivot = self.raw_outputs(xs)
        probs = softmax(logits / self.temperature)
        pprobs = softmax(pivot)
        out = []
        for p, c, pv, params in zip(probs, candle, pprobs, norm_params, strict=True):
            heads = {f"pivot_{k.lower()}": float(v) for k, v in zip(PIVOT_CLASSES, pv, strict=True)}
            out.append(Prediction({"buy": float(p[0]), "sell": float(p[1]), "hold": float(p[2])},
                                  decode_candle(c, params), heads))
        return out

    # -- training ------------------------------------------------------------------------------
    def train_candle(self, batch: Sequence[CandleExample]) -> dict[str, float]:
        targets = [SampleTarget(action=e.action, candle=_candle_target(e)) for e in batch]
        labels = np.array([e.action for e in batch], dtype=np.int64)
        stats, logits = self._step(batch, targets)
        self.calib_logits = np.concatenate([self.calib_logits, logits])[-CALIBRATION_TAIL:]
        self.calib_labels = np.concatenate([self.calib_labels, labels])[-CALIBRATION_TAIL:]
        if self.calib_labels.shape[0] >= MIN_CALIBRATION:
            self.temperature = fit_temperature(self.calib_logits, self.calib_labels)
        stats["temperature"] = self.temperature
        return stats

    def train_pivot(self, batch: Sequence[PivotExample]) -> dict[str, float]:
        stats, _ = self._step(batch, [SampleTarget(pivot=e.label) for e in batch])
        return stats

    def train_shared(self, batch: Sequence[CandleExample | PivotExample]) -> dict[str, float]:
        """One update on CANDLE and PIVOT examples together, each distinct input (examples sharing
        one ``x`` array: the jobs of one ref) forwarded once (#16). Multi-head loss: the masked
        means of ``compute_losses`` make it exactly the CANDLE step's loss of the CANDLE examples
        plus the PIVOT step's loss of the PIVOT examples, so its gradient is the sum of theirs at
        these weights. Calibration as in ``train_candle`` (held-out logits of the CANDLE examples)."""
        slot: dict[int, int] = {}
        inputs: list[npt.NDArray[np.float32]] = []
        index = np.empty(len(batch), dtype=np.int64)
        targets: list[SampleTarget] = []
        for i, e in enumerate(batch):
            k = slot.setdefault(id(e.x), len(inputs))
            if k == len(inputs):
                inputs.append(e.x)
            index[i] = k
            if isinstance(e, CandleExample):
                targets.append(SampleTarget(action=e.action, candle=_candle_target(e)))
            else:
                targets.append(SampleTarget(pivot=e.label))
        is_candle = np.array([isinstance(e, CandleExample) for e in batch], dtype=bool)
        x = np.stack(inputs).astype(np.float32, copy=False)
        amp = self.amp and amp_dtype(self.device, True) is not None
        stats, logits = training_step(self.model, self.optimizer, x, TargetBatch.stack(targets), self.device,
                                      amp=amp, index=index)
        if is_candle.any():
            labels = np.array([e.action for e in batch if isinstance(e, CandleExample)], dtype=np.int64)
            self.calib_logits = np.concatenate([self.calib_logits, logits[is_candle]])[-CALIBRATION_TAIL:]
            self.calib_labels = np.concatenate([self.calib_labels, labels])[-CALIBRATION_TAIL:]
            if self.calib_labels.shape[0] >= MIN_CALIBRATION:
                self.temperature = fit_temperature(self.calib_logits, self.calib_labels)
            stats["temperature"] = self.temperature
        else:  # the terms of a head with no example are 0, not a loss: leave them out of the means
            stats.pop("action_loss", None)
            stats.pop("candle_loss", None)
        if is_candle.all():
            stats.pop("pivot_loss", None)
        return stats

    def _step(self, batch: Sequence[CandleExample] | Sequence[PivotExample], targets: list[SampleTarget]
              ) -> tuple[dict[str, float], npt.NDArray[np.float64]]:
        x = np.stack([e.x for e in batch]).astype(np.float32, copy=False)
        amp = self.amp and amp_dtype(self.device, True) is not None
        return training_step(self.model, self.optimizer, x, TargetBatch.stack(targets), self.device, amp=amp)


def _candle_target(e: CandleExample) -> npt.NDArray[np.float32]:
    c = e.candle
    z = candle_logrets(e.norm_params, float(c["open"]), float(c["high"]), float(c["low"]), float(c["close"]))
    return z.astype(np.float32)
