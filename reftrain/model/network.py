"""The network shared by inference and trainer, its seeded version 0, and batched prediction.

Architecture (``RefTrainNet``, ~20k parameters): two strided causal 1-D convolutions shorten the
600-row window 4x (a GRU over 600 steps is slow on CPU), a GRU summarises the sequence, and the
summary is concatenated with the raw features of the last ``tail`` candles (the most recent bars
matter most for the next one and the strided convs blur them). Three heads:

* action head: 3 logits in ``ACTIONS`` order (BUY, SELL, HOLD);
* pivot head: 3 logits FUTURE_LOW / FUTURE_HIGH / PAST (``reftrain.labels.pivot_label``);
* next-candle head: ``[o, h, l, c]`` of the next candle as log returns vs the window's last close,
  in units of ``ret_scale`` (see ``features``). It is built so that ``h >= max(o, c)`` and
  ``l <= min(o, c)`` always hold (softplus offsets), so a decoded prediction is a valid candle.

The GRU always runs in float32, also under autocast: recurrences accumulate rounding error and
cuDNN's RNN kernels do not all take bfloat16. Prediction disables TF32 so CUDA matches CPU within
float32 tolerance.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import nn

from reftrain.model.features import N_FEATURES
from reftrain.records import ActionProbs

DEFAULT_SEED = 0
"""Seed of version 0. Inference and trainer must agree on it (and on ModelConfig) so that a ref
made with version 0 is trained from the very weights that made it."""


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the network; stored in checkpoints so a loader rebuilds the same module."""

    n_features: int = N_FEATURES
    conv_channels: int = 32
    hidden: int = 48
    tail: int = 4
    kernel: int = 4
    stride: int = 2

    def to_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> ModelConfig:
        return cls(**{k: int(v) for k, v in d.items()})


class RefTrainNet(nn.Module):
    """Sequence model over ``[batch, n, n_features]``; returns (action logits [B,3], candle [B,4])."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.conv1 = nn.Conv1d(c.n_features, c.conv_channels, c.kernel, stride=c.stride)
        self.conv2 = nn.Conv1d(c.conv_channels, c.conv_channels, c.kernel, stride=c.stride)
        self.gru = nn.GRU(c.conv_channels, c.hidden, batch_first=True)
        self.trunk = nn.Linear(c.hidden + c.tail * c.n_features, c.hidden)
        self.action_head = nn.Linear(c.hidden, 3)
        self.candle_head = nn.Linear(c.hidden, 4)
        # Created last: the seeded weights of every other layer stay those of the seed's network.
        self.pivot_head = nn.Linear(c.hidden, 3)

    def _causal_conv(self, conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        """Left-pad so the last output position ends exactly at the last input row."""
        k, s = self.config.kernel, self.config.stride
        n = x.shape[-1]
        pad = max(k - n, 0)
        pad += (-(n + pad - k)) % s
        return F.gelu(conv(F.pad(x, (pad, 0))))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(action logits [B,3], candle [B,4]); ``forward_all`` adds the pivot head."""
        logits, candle, _ = self.forward_all(x)
        return logits, candle

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(action logits [B,3], candle [B,4], pivot logits [B,3] in labels.PIVOT_CLASSES order)."""
        if x.dim() != 3 or x.shape[-1] != self.config.n_features:
            raise ValueError(f"expected [batch, n, {self.config.n_features}], got {tuple(x.shape)}")
        tail = self.config.tail
        last = x[:, -tail:, :]
        if last.shape[1] < tail:  # windows shorter than the tail: pad with zeros (neutral features)
            last = F.pad(last, (0, 0, tail - last.shape[1], 0))
        h = self._causal_conv(self.conv1, x.transpose(1, 2))
        h = self._causal_conv(self.conv2, h).transpose(1, 2)
        with torch.autocast(device_type=h.device.type, enabled=False):
            _, h_n = self.gru(h.float())
        summary = torch.cat([h_n[-1], last.flatten(1).to(h_n.dtype)], dim=1)
        z = F.gelu(self.trunk(summary))
        logits = self.action_head(z)
        raw = self.candle_head(z)
        o, c, up, down = raw[:, 0], raw[:, 1], raw[:, 2], raw[:, 3]
        high = torch.maximum(o, c) + F.softplus(up)
        low = torch.minimum(o, c) - F.softplus(down)
        candle = torch.stack([o, high, low, c], dim=1)
        return logits, candle, self.pivot_head(z)


def init_model(seed: int = DEFAULT_SEED, config: ModelConfig | None = None) -> RefTrainNet:
    """Version 0: the same weights for the same seed and config, on any machine, every time.

    The global RNG is forked, so calling this does not disturb the caller's random state.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RefTrainNet(config or ModelConfig())
    return model.eval()


def select_device(prefer: str | None = None) -> torch.device:
    """``prefer`` if given (e.g. 'cpu', 'cuda:1'), else CUDA when available, else CPU."""
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_device(array: npt.NDArray[np.generic], device: torch.device) -> torch.Tensor:
    """Host array -> tensor on ``device``; via pinned memory and a non-blocking copy on CUDA."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@contextmanager
def exact_math(device: torch.device) -> Iterator[None]:
    """No TF32 and deterministic cuDNN on CUDA, so GPU results match CPU to float32 tolerance."""
    if device.type != "cuda":
        yield
        return
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32


def predict_batch(
    model: RefTrainNet,
    inputs: npt.NDArray[np.floating],
    device: torch.device | str,
    max_batch: int = 256,
) -> list[tuple[ActionProbs, npt.NDArray[np.float64]]]:
    """Action probabilities and next-candle head output for each window of ``inputs [B, n, F]``.

    The head output is ``[o, h, l, c]`` in log returns / ret_scale (``features.decode_candle``
    turns it into prices). Windows go through in chunks of ``max_batch`` to bound memory; the
    model is put in eval mode and moved to ``device`` if it is not there already.
    """
    dev = torch.device(device)
    x_all = np.asarray(inputs, dtype=np.float32)
    if x_all.ndim != 3:
        raise ValueError(f"inputs must be [batch, n, features], got shape {x_all.shape}")
    model.eval()
    if next(model.parameters()).device != dev:
        model.to(dev)
    results: list[tuple[ActionProbs, npt.NDArray[np.float64]]] = []
    with torch.inference_mode(), exact_math(dev):
        for start in range(0, x_all.shape[0], max_batch):
            x = to_device(x_all[start : start + max_batch], dev)
            logits, candle = model(x)
            probs = torch.softmax(logits.double(), dim=1).cpu().numpy()
            cand = candle.double().cpu().numpy()
            for p, c in zip(probs, cand, strict=True):
                results.append(({"buy": float(p[0]), "sell": float(p[1]), "hold": float(p[2])}, c.copy()))
    return results
