"""Training targets, the loss, one optimiser step, and CPU determinism (built-in network).

Targets (one ``SampleTarget`` per training job; the LABELS come from ``reftrain.labels``, the one
rule shared with the report and the backtest):

* CANDLE job: the action head learns the realised action (BUY/SELL/HOLD with a HOLD band relative
  to the window's own volatility, ``labels.action_label``), and the next-candle head learns the
  actual candle's ``[o, h, l, c]`` as log returns vs the window's last close divided by the ref's
  ``ret_scale`` (``features.candle_logrets``).
* PIVOT job: ONLY the pivot head learns, with the 3-class label FUTURE_LOW / FUTURE_HIGH / PAST
  (``labels.pivot_label``: a prediction at the window end; pivots already inside the window are
  the negatives). PIVOT jobs never touch the action head: they carry no next-candle information
  (measured: they agree with the next candle's direction 49-50% of the time).

Loss of a batch (each term is a mean over the samples that have that target, so a batch of one
trigger never dilutes or swamps the other)::

    action_loss = mean_{a_i=1} CE(action_logits_i, action_i)
    candle_loss = mean_{m_i=1} mean_k Huber_1(pred_ik - target_ik)
    pivot_loss  = mean_{p_i=1} CE(pivot_logits_i, pivot_i)
    loss        = action_loss + CANDLE_LOSS_WEIGHT * candle_loss + PIVOT_LOSS_WEIGHT * pivot_loss

PIVOT jobs outnumber CANDLE jobs 2.2-3.2 per ref on the bundled data and the trainer steps each
trigger separately, so PIVOT_LOSS_WEIGHT = 0.35 keeps the pivot head's total pull on the shared
trunk about equal to the action head's. Huber with delta 1 (one window std) keeps a single crash
candle from dominating. Gradients are clipped to norm ``GRAD_CLIP``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from reftrain import labels
from reftrain.model.features import candle_logrets
from reftrain.model.network import RefTrainNet, exact_math, to_device
from reftrain.records import TrainingJob

CANDLE_LOSS_WEIGHT = 1.0
PIVOT_LOSS_WEIGHT = 0.35
HUBER_DELTA = 1.0
GRAD_CLIP = 1.0
DEFAULT_LR = 1e-3


@dataclass(frozen=True, eq=False)
class SampleTarget:
    """Target of one job: CANDLE jobs have ``action`` and ``candle``; PIVOT jobs only ``pivot``."""

    action: int | None = None
    candle: npt.NDArray[np.float32] | None = None
    pivot: int | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SampleTarget):
            return NotImplemented
        if self.candle is None or other.candle is None:
            same_candle = self.candle is None and other.candle is None
        else:
            same_candle = np.array_equal(self.candle, other.candle)
        return self.action == other.action and self.pivot == other.pivot and same_candle

    # unhashable on purpose (__eq__ compares arrays); typeshed declares __hash__ a method, not Optional
    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class TargetBatch:
    """Targets of a batch aligned with the input batch's first axis; a mask per head (1 = has it)."""

    action: npt.NDArray[np.int64]
    action_mask: npt.NDArray[np.float32]
    candle: npt.NDArray[np.float32]
    candle_mask: npt.NDArray[np.float32]
    pivot: npt.NDArray[np.int64]
    pivot_mask: npt.NDArray[np.float32]

    def __post_init__(self) -> None:
        b = self.action.shape[0]
        shapes = (self.action_mask.shape, self.candle_mask.shape, self.pivot.shape, self.pivot_mask.shape)
        if self.candle.shape != (b, 4) or any(s != (b,) for s in shapes):
            raise ValueError("TargetBatch arrays disagree in shape")

    def __len__(self) -> int:
        return int(self.action.shape[0])

    @classmethod
    def stack(cls, targets: Sequence[SampleTarget]) -> TargetBatch:
        b = len(targets)
        out = cls(np.zeros(b, np.int64), np.zeros(b, np.float32), np.zeros((b, 4), np.float32),
                  np.zeros(b, np.float32), np.zeros(b, np.int64), np.zeros(b, np.float32))
        for i, t in enumerate(targets):
            if t.action is not None:
                out.action[i], out.action_mask[i] = t.action, 1.0
            if t.candle is not None:
                out.candle[i], out.candle_mask[i] = t.candle, 1.0
            if t.pivot is not None:
                out.pivot[i], out.pivot_mask[i] = t.pivot, 1.0
        return out


def job_target(job: TrainingJob) -> SampleTarget:
    """The built-in network's target of a TrainingJob, labelled by ``reftrain.labels`` (benches and
    tools; the trainer labels from the verified window, which gives the same result for logret-v1,
    whose ``ret_scale`` IS the window volatility of the label rule)."""
    ref = job["ref"]
    if job["trigger"] == "CANDLE":
        c = job["actual_candle"]
        if c is None:
            raise ValueError(f"CANDLE job {job['job_id']} has no actual_candle")
        p = ref["norm_params"]["params"]
        action = labels.action_label(float(p["last_close"]), float(c["close"]), float(p["ret_scale"]))
        z = candle_logrets(ref["norm_params"], c["open"], c["high"], c["low"], c["close"])
        return SampleTarget(action=labels.ACTION_INDEX[action], candle=z.astype(np.float32))
    if job["trigger"] == "PIVOT":
        if job["pivot"] is None:
            raise ValueError(f"PIVOT job {job['job_id']} has no pivot")
        lab = labels.pivot_label(int(ref["data_range_end"]), job["pivot"])
        return SampleTarget(pivot=None if lab is None else labels.PIVOT_INDEX[lab])
    raise ValueError(f"unknown trigger {job['trigger']!r}")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def compute_losses(
    logits: torch.Tensor, candle: torch.Tensor, pivot_logits: torch.Tensor, targets: TargetBatch,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """{'loss', 'action_loss', 'candle_loss', 'pivot_loss'} in float32 as in the module docstring."""
    t = {k: to_device(getattr(targets, k), device)
         for k in ("action", "action_mask", "candle", "candle_mask", "pivot", "pivot_mask")}
    action_loss = _masked_mean(F.cross_entropy(logits.float(), t["action"], reduction="none"), t["action_mask"])
    huber = F.huber_loss(candle.float(), t["candle"], reduction="none", delta=HUBER_DELTA).mean(dim=1)
    candle_loss = _masked_mean(huber, t["candle_mask"])
    pivot_loss = _masked_mean(F.cross_entropy(pivot_logits.float(), t["pivot"], reduction="none"), t["pivot_mask"])
    loss = action_loss + CANDLE_LOSS_WEIGHT * candle_loss + PIVOT_LOSS_WEIGHT * pivot_loss
    return {"loss": loss, "action_loss": action_loss, "candle_loss": candle_loss, "pivot_loss": pivot_loss}


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
    index: npt.NDArray[np.int64] | None = None,
) -> tuple[dict[str, float], npt.NDArray[np.float64]]:
    """One optimiser step on a batch; returns the loss terms before it and the action logits of
    the forward pass (the model has no dropout or batch norm, so these are exactly what the model
    predicted for these inputs before the step: the held-out logits that calibration uses).

    ``index`` (shared forward pass, #16): target ``i`` belongs to input ``index[i]``; each distinct
    input goes through the network once and its outputs are gathered for every target that uses
    it (the jobs of one ref share one window). The loss, and so the gradient, is that of the batch
    with each input repeated per target, up to float rounding; the logits returned are per target.

    The model must already be on ``device`` (the optimiser's state follows its parameters).
    """
    dev = torch.device(device)
    x_np = np.asarray(batch_inputs, dtype=np.float32)
    rows = x_np.shape[0] if index is None else len(index)
    if x_np.ndim != 3 or rows != len(batch_targets) or (index is not None and len(index) and (
            int(np.min(index)) < 0 or int(np.max(index)) >= x_np.shape[0])):
        raise ValueError(f"inputs {x_np.shape} do not match {len(batch_targets)} targets")
    model.train()
    x = to_device(x_np, dev)
    dtype = amp_dtype(dev, amp)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        logits, candle, pivot = model.forward_all(x)
    if index is not None:
        at = torch.as_tensor(np.asarray(index, dtype=np.int64), device=dev)
        logits, candle, pivot = logits[at], candle[at], pivot[at]
    losses = compute_losses(logits, candle, pivot, batch_targets, dev)
    losses["loss"].backward()  # type: ignore[no-untyped-call]  # torch's Tensor.backward is unannotated
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    return ({k: float(v.detach()) for k, v in losses.items()},
            logits.detach().double().cpu().numpy())


def evaluate(
    model: RefTrainNet,
    inputs: npt.NDArray[np.floating],
    targets: TargetBatch,
    device: torch.device | str,
    max_batch: int = 256,
) -> dict[str, float]:
    """Loss terms, action accuracy (CANDLE samples) and pivot accuracy (PIVOT samples) without
    updating the model. ``direction_acc``: share of CANDLE samples whose predicted close return has
    the sign of the actual one (actual return exactly 0 skipped)."""
    dev = torch.device(device)
    x_all = np.asarray(inputs, dtype=np.float32)
    model.eval()
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    with torch.inference_mode(), exact_math(dev):
        for start in range(0, x_all.shape[0], max_batch):
            lg, cd, pv = model.forward_all(to_device(x_all[start : start + max_batch], dev))
            parts.append((lg.float(), cd.float(), pv.float()))
        logits = torch.cat([p[0] for p in parts])
        candle = torch.cat([p[1] for p in parts])
        pivot = torch.cat([p[2] for p in parts])
        losses = compute_losses(logits, candle, pivot, targets, dev)
    am, pm = targets.action_mask > 0, targets.pivot_mask > 0
    pred = logits.argmax(dim=1).cpu().numpy()
    ppred = pivot.argmax(dim=1).cpu().numpy()
    has = (targets.candle_mask > 0) & (targets.candle[:, 3] != 0)
    pred_close = candle[:, 3].cpu().numpy()
    direction = np.sign(pred_close[has]) == np.sign(targets.candle[has, 3])
    return {
        **{k: float(v) for k, v in losses.items()},
        "action_acc": float((pred[am] == targets.action[am]).mean()) if am.any() else float("nan"),
        "pivot_acc": float((ppred[pm] == targets.pivot[pm]).mean()) if pm.any() else float("nan"),
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
