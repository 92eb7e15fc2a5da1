"""Training targets, the loss, one optimiser step, and CPU determinism.

Targets (one ``SampleTarget`` per training job):

* CANDLE job: the next-candle target is the actual candle's ``[o, h, l, c]`` as log returns vs the
  ref window's last close, divided by the ref's ``ret_scale`` (``features.candle_logrets``; both
  numbers are in the ref's norm_params and are re-checked against the window by ``build_input``).
  The action label is the realised move ``r = close / last_close - 1``: BUY if ``r > +threshold``,
  SELL if ``r < -threshold``, else HOLD (a move exactly at the threshold is HOLD). Default
  threshold per timeframe: ``0.0002 * sqrt(bar minutes)`` (2 bp for 1m, ~1.55e-3 for 1h): moves
  scale with the square root of time. Measured on the bundled data, 2 bp gives BUY/SELL/HOLD
  shares of 24/24/52% (BTCUSDT 1m Sep 2025), ~28/29/43% (BTCUSDT 1m Oct 2025) and ~31/32/37%
  (ETHUSDT 1m); 5 bp would make 86% of BTCUSDT 1m labels HOLD, and a model learns only the prior.
  For 1h, 1.55e-3 is about the 33rd percentile of |r| on BTCUSDT 2017-2024. Action weight 1.
* PIVOT job: a LOW pivot -> BUY, a HIGH pivot -> SELL, action weight = the pivot's level (a
  level-3 swing low is a more important turning point than a level-1 one, so it pulls 3x as hard).
  No next-candle target (its mask is 0).

Loss of a batch of B jobs (CANDLE and PIVOT mixed)::

    action_loss = sum_i w_i * CE(logits_i, label_i) / B
    candle_loss = sum_i m_i * mean_k Huber_1(pred_ik - target_ik) / max(sum_i m_i, 1)
    loss        = action_loss + CANDLE_LOSS_WEIGHT * candle_loss

``w`` divides by B, not by sum(w), so the level weight survives batches of one (online training).
Huber with delta 1 (one window std) keeps a single crash candle from dominating. Gradients are
clipped to norm ``GRAD_CLIP``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from reftrain.model.features import candle_logrets
from reftrain.model.network import RefTrainNet, exact_math, to_device
from reftrain.records import ACTIONS, Action, Candle, NormParams, Pivot, TrainingJob, timeframe_ms

BASE_ACTION_THRESHOLD = 0.0002
"""Realised-move threshold of a 1-minute bar; other timeframes scale it by sqrt(minutes)."""
CANDLE_LOSS_WEIGHT = 1.0
HUBER_DELTA = 1.0
GRAD_CLIP = 1.0
DEFAULT_LR = 1e-3

ACTION_INDEX: dict[str, int] = {a: i for i, a in enumerate(ACTIONS)}


def action_threshold(timeframe: str) -> float:
    """Default BUY/SELL threshold on ``close / last_close - 1`` for ``timeframe``."""
    return BASE_ACTION_THRESHOLD * math.sqrt(timeframe_ms(timeframe) / 60_000)


def realised_action(last_close: float, close: float, threshold: float) -> Action:
    """BUY if the move beats +threshold, SELL if below -threshold, else HOLD."""
    move = close / last_close - 1.0
    if move > threshold:
        return "BUY"
    if move < -threshold:
        return "SELL"
    return "HOLD"


@dataclass(frozen=True, eq=False)
class SampleTarget:
    """Target of one job: ``candle`` is None for PIVOT jobs (action loss only)."""

    action: int
    action_weight: float
    candle: npt.NDArray[np.float32] | None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SampleTarget):
            return NotImplemented
        if self.candle is None or other.candle is None:
            same_candle = self.candle is None and other.candle is None
        else:
            same_candle = np.array_equal(self.candle, other.candle)
        return self.action == other.action and self.action_weight == other.action_weight and same_candle

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class TargetBatch:
    """Targets of a batch, aligned with the input batch's first axis; CANDLE and PIVOT mix freely.

    action: int64 [B] index into ACTIONS; action_weight: float32 [B];
    candle: float32 [B, 4] (zeros where masked); candle_mask: float32 [B] (1 = has candle target).
    """

    action: npt.NDArray[np.int64]
    action_weight: npt.NDArray[np.float32]
    candle: npt.NDArray[np.float32]
    candle_mask: npt.NDArray[np.float32]

    def __post_init__(self) -> None:
        b = self.action.shape[0]
        if self.action_weight.shape != (b,) or self.candle.shape != (b, 4) or self.candle_mask.shape != (b,):
            raise ValueError("TargetBatch arrays disagree in shape")

    def __len__(self) -> int:
        return int(self.action.shape[0])

    @classmethod
    def stack(cls, targets: Sequence[SampleTarget]) -> TargetBatch:
        b = len(targets)
        candle = np.zeros((b, 4), dtype=np.float32)
        mask = np.zeros(b, dtype=np.float32)
        for i, t in enumerate(targets):
            if t.candle is not None:
                candle[i] = t.candle
                mask[i] = 1.0
        return cls(
            action=np.array([t.action for t in targets], dtype=np.int64),
            action_weight=np.array([t.action_weight for t in targets], dtype=np.float32),
            candle=candle,
            candle_mask=mask,
        )


def candle_target(
    norm_params: NormParams, candle: Candle | Mapping[str, float], threshold: float
) -> SampleTarget:
    """Target of a CANDLE job: next-candle head target and the realised action, weight 1."""
    z = candle_logrets(norm_params, candle["open"], candle["high"], candle["low"], candle["close"])
    last_close = float(norm_params["params"]["last_close"])
    action = realised_action(last_close, float(candle["close"]), threshold)
    return SampleTarget(ACTION_INDEX[action], 1.0, z.astype(np.float32))


def pivot_target(pivot: Pivot | Mapping[str, object]) -> SampleTarget:
    """Target of a PIVOT job: LOW -> BUY, HIGH -> SELL, weight = level; no candle target."""
    kind = pivot["kind"]
    level = pivot["level"]
    if kind not in ("LOW", "HIGH"):
        raise ValueError(f"pivot kind must be LOW or HIGH, got {kind!r}")
    if not isinstance(level, int) or level < 1:
        raise ValueError(f"pivot level must be an int >= 1, got {level!r}")
    return SampleTarget(ACTION_INDEX["BUY" if kind == "LOW" else "SELL"], float(level), None)


def job_target(job: TrainingJob, threshold: float | None = None) -> SampleTarget:
    """Target of a TrainingJob; ``threshold`` defaults to ``action_threshold(ref timeframe)``."""
    ref = job["ref"]
    if job["trigger"] == "CANDLE":
        if job["actual_candle"] is None:
            raise ValueError(f"CANDLE job {job['job_id']} has no actual_candle")
        thr = action_threshold(ref["timeframe"]) if threshold is None else threshold
        return candle_target(ref["norm_params"], job["actual_candle"], thr)
    if job["trigger"] == "PIVOT":
        if job["pivot"] is None:
            raise ValueError(f"PIVOT job {job['job_id']} has no pivot")
        return pivot_target(job["pivot"])
    raise ValueError(f"unknown trigger {job['trigger']!r}")


def compute_losses(
    logits: torch.Tensor, candle: torch.Tensor, targets: TargetBatch, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, action_loss, candle_loss) in float32 as defined in the module docstring."""
    b = len(targets)
    action = to_device(targets.action, device)
    weight = to_device(targets.action_weight, device)
    cand_t = to_device(targets.candle, device)
    mask = to_device(targets.candle_mask, device)
    ce = F.cross_entropy(logits.float(), action, reduction="none")
    action_loss = (ce * weight).sum() / max(b, 1)
    huber = F.huber_loss(candle.float(), cand_t, reduction="none", delta=HUBER_DELTA).mean(dim=1)
    candle_loss = (huber * mask).sum() / mask.sum().clamp(min=1.0)
    return action_loss + CANDLE_LOSS_WEIGHT * candle_loss, action_loss, candle_loss


def make_optimizer(model: RefTrainNet, lr: float = DEFAULT_LR) -> torch.optim.Optimizer:
    """AdamW; one place so trainer replicas and checkpoints agree on the optimiser's state shape."""
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)


def amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """bfloat16 autocast on CUDA when asked and supported, else None (float32).

    bfloat16 needs no loss scaling; GPUs without it train in float32 rather than fp16 + GradScaler.
    """
    if amp and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def training_step(
    model: RefTrainNet,
    optimizer: torch.optim.Optimizer,
    batch_inputs: npt.NDArray[np.floating],
    batch_targets: TargetBatch,
    device: torch.device | str,
    amp: bool = False,
) -> dict[str, float]:
    """One optimiser step on a batch; returns {'loss', 'action_loss', 'candle_loss'} before it.

    The model must already be on ``device`` (the optimiser's state follows its parameters).
    """
    dev = torch.device(device)
    x_np = np.asarray(batch_inputs, dtype=np.float32)
    if x_np.ndim != 3 or x_np.shape[0] != len(batch_targets):
        raise ValueError(f"inputs {x_np.shape} do not match {len(batch_targets)} targets")
    model.train()
    x = to_device(x_np, dev)
    dtype = amp_dtype(dev, amp)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        logits, candle = model(x)
    loss, action_loss, candle_loss = compute_losses(logits, candle, batch_targets, dev)
    loss.backward()  # type: ignore[no-untyped-call]
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    return {
        "loss": float(loss.detach()),
        "action_loss": float(action_loss.detach()),
        "candle_loss": float(candle_loss.detach()),
    }


def evaluate(
    model: RefTrainNet,
    inputs: npt.NDArray[np.floating],
    targets: TargetBatch,
    device: torch.device | str,
    max_batch: int = 256,
) -> dict[str, float]:
    """Loss terms and action accuracy (weighted by action_weight) without updating the model.

    ``direction_acc`` is the share of CANDLE samples whose predicted close return has the sign of
    the actual one (samples with an actual return of exactly 0 are skipped).
    """
    dev = torch.device(device)
    x_all = np.asarray(inputs, dtype=np.float32)
    model.eval()
    logits_parts: list[torch.Tensor] = []
    candle_parts: list[torch.Tensor] = []
    with torch.inference_mode(), exact_math(dev):
        for start in range(0, x_all.shape[0], max_batch):
            lg, cd = model(to_device(x_all[start : start + max_batch], dev))
            logits_parts.append(lg.float())
            candle_parts.append(cd.float())
        logits = torch.cat(logits_parts)
        candle = torch.cat(candle_parts)
        loss, action_loss, candle_loss = compute_losses(logits, candle, targets, dev)
    pred = logits.argmax(dim=1).cpu().numpy()
    w = targets.action_weight.astype(np.float64)
    correct = (pred == targets.action).astype(np.float64)
    has = (targets.candle_mask > 0) & (targets.candle[:, 3] != 0)
    pred_close = candle[:, 3].cpu().numpy()
    direction = np.sign(pred_close[has]) == np.sign(targets.candle[has, 3])
    return {
        "loss": float(loss),
        "action_loss": float(action_loss),
        "candle_loss": float(candle_loss),
        "action_acc": float((correct * w).sum() / max(w.sum(), 1e-12)),
        "direction_acc": float(direction.mean()) if direction.size else float("nan"),
        "samples": float(len(targets)),
    }


def set_determinism(seed: int, device: torch.device | str = "cpu", strict: bool = False) -> None:
    """Seed torch; on CUDA also pick deterministic kernels (best effort).

    On CPU every kernel this model uses is deterministic for a given build and thread count (the
    tests train twice and compare weights bit for bit, and compare with strict mode), so the
    default does not pay for ``torch.use_deterministic_algorithms``, which makes the GRU's
    backward about 2x slower on CPU. ``strict=True`` turns it on anyway: any later
    non-deterministic op then raises instead of drifting. Call once at process start: the flags
    are process-wide. On CUDA, cuBLAS also needs CUBLAS_WORKSPACE_CONFIG before its first use, so
    it is set here if still unset.
    """
    dev = torch.device(device)
    torch.manual_seed(seed)
    if dev.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=not strict)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif strict:
        torch.use_deterministic_algorithms(True)
