"""Checkpoints: atomic to write, safe to load.

A checkpoint is one ``torch.save`` file holding only plain containers, tensors and Python scalars
(loadable with ``torch.load(weights_only=True)``, so a checkpoint from the shared store cannot run
code)::

    {"format": FORMAT, "config": ModelConfig dict, "model": state_dict, "optimizer": state_dict,
     "meta": meta}

``meta`` is what the trainer needs to resume exactly once (design 6.9): model_key, version,
trained_jobs, offsets {topic: {partition: next offset}}, a digest or count of the trained job ids,
and metrics. Tensors are moved to CPU before saving so a GPU-trained checkpoint loads anywhere.

Writing goes to a temporary file in the same directory, is fsynced, then ``os.replace``d over the
target and the directory is fsynced: a crash at any point leaves either the old file or the new one,
never a torn one.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import torch

from reftrain.adapters import atomic_write
from reftrain.model.network import ModelConfig, RefTrainNet

FORMAT = "reftrain-ckpt-v1"
TMP_SUFFIX = ".tmp"
REQUIRED_META = ("model_key", "version")


class CheckpointMeta(TypedDict):
    """The keys the trainer records; other plain-data keys are allowed too."""

    model_key: str
    version: int
    trained_jobs: NotRequired[int]
    offsets: NotRequired[dict[str, dict[int, int]]]
    jobs_digest: NotRequired[str]
    metrics: NotRequired[dict[str, float]]
    created_at: NotRequired[int]


def save_checkpoint(
    path: str | os.PathLike[str],
    model: RefTrainNet,
    optimizer: torch.optim.Optimizer | None,
    meta: Mapping[str, Any],
) -> str:
    """Write the checkpoint atomically; returns the sha256 hex of the bytes written.

    ``meta``: the keys of ``CheckpointMeta`` (model_key and version required) plus any plain data.

    Raises ValueError if ``meta`` lacks model_key/version or holds anything but plain data.
    """
    for key in REQUIRED_META:
        if key not in meta:
            raise ValueError(f"checkpoint meta lacks {key!r}")
    _check_plain(dict(meta), "meta")
    payload = {
        "format": FORMAT,
        "config": model.config.to_dict(),
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "optimizer": to_cpu(optimizer.state_dict()) if optimizer is not None else {},
        "meta": dict(meta),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    atomic_write(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def load_checkpoint(
    path: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[RefTrainNet, dict[str, Any], dict[str, Any]]:
    """(model on ``device`` in eval mode, optimizer state dict, meta) of a checkpoint file.

    Give the optimizer state to ``make_optimizer(model).load_state_dict`` after moving the model
    (the optimiser moves its state to its parameters' device).
    """
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} checkpoint")
    model = RefTrainNet(ModelConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["model"])
    model.to(torch.device(device)).eval()
    return model, payload["optimizer"], payload["meta"]


def to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_cpu(v) for v in obj)
    return obj


def _check_plain(obj: Any, where: str) -> None:
    """Only what torch.load(weights_only=True) accepts and JSON-like consumers understand."""
    if obj is None or type(obj) in (bool, int, float, str):  # exact: np.float64 would not load
        return
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    if type(obj) is dict:
        for k, v in obj.items():
            if type(k) not in (str, int):
                raise ValueError(f"{where}: key {k!r} is not str or int")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise ValueError(f"{where}: {type(obj).__name__} is not plain data")
