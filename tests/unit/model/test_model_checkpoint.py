"""Checkpoints: exact round trip (training resumes identically), safe load, atomic replace."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from reftrain.model import (
    RefTrainNet,
    SampleTarget,
    TargetBatch,
    init_model,
    load_checkpoint,
    make_optimizer,
    save_checkpoint,
    set_determinism,
    training_step,
)
from reftrain.model import checkpoint as ckpt

META: dict[str, Any] = {
    "model_key": "BTCUSDT:1m",
    "version": 3,
    "trained_jobs": 42,
    "offsets": {"training-jobs": {0: 17, 5: 9}},
    "jobs_digest": "ab" * 16,
    "metrics": {"loss": 1.25},
    "created_at": 1_758_503_700_000,
}


def _batch() -> tuple[np.ndarray, TargetBatch]:
    x = np.random.default_rng(1).standard_normal((4, 40, 5)).astype(np.float32)
    t = TargetBatch.stack(
        [
            SampleTarget(action=0, candle=np.array([0.0, 1.0, -1.0, 0.5], dtype=np.float32)),
            SampleTarget(action=2, candle=np.array([0.1, 0.9, -0.8, -0.2], dtype=np.float32)),
            SampleTarget(pivot=1),
            SampleTarget(pivot=2),
        ]
    )
    return x, t


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_round_trip_resumes_training_exactly(tmp_path: Path) -> None:
    set_determinism(0)
    x, t = _batch()
    model = init_model(0)
    opt = make_optimizer(model)
    for _ in range(3):
        training_step(model, opt, x, t, "cpu")
    path = tmp_path / "ckpt" / "BTCUSDT-1m" / "v3.pt"
    digest = save_checkpoint(path, model, opt, META)
    assert len(digest) == 64

    loaded, opt_state, meta = load_checkpoint(path)
    assert meta == META
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    opt2 = make_optimizer(loaded)
    opt2.load_state_dict(opt_state)
    training_step(model, opt, x, t, "cpu")
    training_step(loaded, opt2, x, t, "cpu")
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    assert not list(path.parent.glob("*.tmp")), "no temp files left behind"


def test_checkpoint_is_loadable_with_weights_only_and_plain(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, init_model(0), None, {"model_key": "k", "version": 0})
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == ckpt.FORMAT and payload["optimizer"] == {}


def test_meta_must_be_plain_data_with_key_and_version(tmp_path: Path) -> None:
    model = init_model(0)
    with pytest.raises(ValueError, match="version"):
        save_checkpoint(tmp_path / "a.pt", model, None, {"model_key": "k"})
    with pytest.raises(ValueError, match="plain"):
        save_checkpoint(tmp_path / "a.pt", model, None, {"model_key": "k", "version": 1, "m": np.float64(1)})
    with pytest.raises(ValueError, match="plain"):
        save_checkpoint(tmp_path / "a.pt", model, None, {"model_key": "k", "version": 1, "m": object()})
    assert not (tmp_path / "a.pt").exists()


def test_a_malicious_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": ckpt.FORMAT, "x": Path("/")}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)


def _save_versions(path: Path) -> tuple[RefTrainNet, RefTrainNet]:
    old, new = init_model(0), init_model(1)
    save_checkpoint(path, old, None, {**META, "version": 1})
    return old, new


def test_crash_before_replace_leaves_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.pt"
    old, new = _save_versions(path)

    def crash(src: Any, dst: Any) -> None:
        raise OSError("simulated crash between fsync and rename")

    monkeypatch.setattr("reftrain.model.checkpoint.os.replace", crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, new, None, {**META, "version": 2})
    monkeypatch.undo()
    model, _, meta = load_checkpoint(path)
    assert meta["version"] == 1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in old.state_dict().items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_crash_mid_write_leaves_the_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process killed mid-write leaves a torn temp file (no cleanup runs) and the old target."""
    path = tmp_path / "m.pt"
    _, new = _save_versions(path)
    real_fdopen = os.fdopen

    class Torn:
        def __init__(self, fd: int, mode: str) -> None:
            self.f = real_fdopen(fd, mode)

        def __enter__(self) -> Torn:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

        def write(self, data: bytes) -> int:
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise KeyboardInterrupt  # stands in for SIGKILL: nothing after this line runs

    monkeypatch.setattr("reftrain.model.checkpoint.os.fdopen", Torn)
    monkeypatch.setattr(
        "reftrain.model.checkpoint.os.unlink", lambda p: None
    )  # a killed process cleans nothing up
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, new, None, {**META, "version": 2})
    monkeypatch.undo()
    torn = [p for p in tmp_path.iterdir() if p.name.endswith(ckpt.TMP_SUFFIX)]
    assert len(torn) == 1 and torn[0].stat().st_size > 0
    _, _, meta = load_checkpoint(path)
    assert meta["version"] == 1
    # The next save still succeeds and replaces the target; the torn temp is only litter.
    save_checkpoint(path, new, None, {**META, "version": 2})
    model, _, meta = load_checkpoint(path)
    assert meta["version"] == 2
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in new.state_dict().items())
