"""The model shared by inference and trainer: features, network, targets/loss, checkpoints.

Inference::

    params = compute_norm_params(window)                  # -> InferenceRef.norm_params
    x = build_input(window, params)                       # float32 [n, 5]
    [(probs, head)] = predict_batch(model, x[None], device)
    action, confidence = choose_action(probs)
    candle = decode_candle(head, params)                  # -> InferenceRef.predicted_candle

Trainer::

    x = build_input(verified_window, job["ref"]["norm_params"])   # the exact input inference saw
    t = SampleTarget(action=..., candle=..., pivot=...)           # labels: reftrain.labels
    training_step(model, opt, xs, TargetBatch.stack(ts), device, amp=True)

Services do not call these directly: they go through ``reftrain.model.adapter.TorchAdapter``, the
built-in ``reftrain.adapters.TrainingAdapter``.

Scheme and params: ``features``; the loss and the CANDLE/PIVOT targets: ``training``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from reftrain.model.features import (
    N_FEATURES,
    PARAM_KEYS,
    SCHEME,
    build_input,
    candle_logrets,
    checked_params,
    choose_action,
    compute_norm_params,
    decode_candle,
)

if TYPE_CHECKING:
    from reftrain.model.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
    from reftrain.model.network import (
        DEFAULT_SEED,
        ModelConfig,
        RefTrainNet,
        init_model,
        predict_batch,
        select_device,
    )
    from reftrain.model.training import (
        SampleTarget,
        TargetBatch,
        evaluate,
        make_optimizer,
        set_determinism,
        training_step,
    )

# torch takes seconds to import: only the names that need it load it, on first use, so a process
# that only normalises windows (``reftrain.model.features``) never pays for it.
_LAZY = {
    "CheckpointMeta": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "DEFAULT_SEED": "network",
    "ModelConfig": "network",
    "RefTrainNet": "network",
    "init_model": "network",
    "predict_batch": "network",
    "select_device": "network",
    "SampleTarget": "training",
    "TargetBatch": "training",
    "evaluate": "training",
    "make_optimizer": "training",
    "set_determinism": "training",
    "training_step": "training",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_SEED",
    "N_FEATURES",
    "PARAM_KEYS",
    "SCHEME",
    "CheckpointMeta",
    "ModelConfig",
    "RefTrainNet",
    "SampleTarget",
    "TargetBatch",
    "build_input",
    "candle_logrets",
    "checked_params",
    "choose_action",
    "compute_norm_params",
    "decode_candle",
    "evaluate",
    "init_model",
    "load_checkpoint",
    "make_optimizer",
    "predict_batch",
    "save_checkpoint",
    "select_device",
    "set_determinism",
    "training_step",
]
