"""Training adapters: the one interface a model implements to plug into inference and trainer.

The seed asks for a training layer that is a subscriber interface (on candle completion, on pivot
event) so new models plug in without touching the coordinator. ``TrainingAdapter`` is that
interface. The platform keeps everything that must be right for every model: exactly-once
checkpoint offsets, window verification, the dead-letter queue, metrics, and the label rule
(``reftrain.labels``). An adapter owns only the model:

* ``norm_params(window)``: statistics inference stores in the ref (``NormParams.scheme`` is the
  adapter's ``scheme``: refs name the feature scheme that made them);
* ``features(window, norm_params)``: the input, rebuilt by the trainer from the verified window;
* ``predict(xs, norm_params)``: batched; action probabilities, predicted candle, extra heads;
* ``train_candle(batch)`` / ``train_pivot(batch)``: the seed's on_candle_completion /
  on_pivot_event, on examples whose labels the platform already computed;
* ``save_state()`` / ``load_state(data)``: bytes for checkpoints.

Which adapter runs is one setting, ``MODEL_ADAPTER=package.module:Class``, read by inference and
trainer alike (default: ``reftrain.model.adapter:TorchAdapter``, the built-in network).

Checkpoints (``save_checkpoint`` / ``load_checkpoint``) are a torch-free container: a magic line,
a JSON header naming the adapter and feature scheme plus the trainer's meta, then the adapter's
bytes. A checkpoint of another adapter or scheme is refused with ``AdapterMismatchError`` before the
adapter sees a byte, and a file whose sha256 differs from the expected one (``ModelVersion
.checkpoint_sha256``) is refused with ``ChecksumMismatchError`` before anything is parsed.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import struct
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import numpy.typing as npt

from reftrain.errors import ConfigError, ReftrainError
from reftrain.records import ACTIONS, Action, ActionProbs, Candle, NormParams, Pivot, PredictedCandle
from reftrain.window import Window

ADAPTER_ENV = "MODEL_ADAPTER"
DEFAULT_ADAPTER = "reftrain.model.adapter:TorchAdapter"
FORMAT = "reftrain-ckpt-v2"
MAGIC = b"RTCKPT2\n"
MAX_HEADER = 64 * 1024 * 1024

A = TypeVar("A", bound="TrainingAdapter")


class AdapterMismatchError(ReftrainError, ValueError):
    """A checkpoint (or ref) was made by another adapter or feature scheme than the one running."""


class ChecksumMismatchError(ReftrainError, ValueError):
    """A checkpoint file's sha256 is not the one its ModelVersion announced."""


@dataclass(frozen=True)
class Prediction:
    """One window's prediction: action probabilities, the predicted next candle (prices) or None,
    and extra heads by name (e.g. the built-in pivot head's ``pivot_future_low``)."""

    probs: ActionProbs
    candle: PredictedCandle | None = None
    heads: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class CandleExample:
    """A CANDLE job ready to train: the input, the ref's params, the realised candle and its label
    (index into ``reftrain.labels.ACTIONS``, computed by the platform with the one label rule)."""

    job_id: str
    x: npt.NDArray[np.float32]
    norm_params: NormParams
    candle: Candle | Mapping[str, Any]
    action: int


@dataclass(frozen=True, eq=False)
class PivotExample:
    """A PIVOT job ready to train; ``label`` indexes ``reftrain.labels.PIVOT_CLASSES``."""

    job_id: str
    x: npt.NDArray[np.float32]
    norm_params: NormParams
    pivot: Pivot | Mapping[str, Any]
    label: int


class TrainingAdapter(ABC):
    """A model: one instance is one lineage's state (weights, optimiser, calibration).

    ``create`` and ``load_state`` must be deterministic: inference and trainer both build version 0
    with ``create(seed)`` and must get the very same model.
    """

    #: adapter name recorded in every checkpoint (``name`` and ``scheme`` must both match to load)
    name: ClassVar[str]
    #: feature scheme: ``NormParams.scheme`` of every ref this adapter makes
    scheme: ClassVar[str]

    @classmethod
    @abstractmethod
    def create(cls: type[A], seed: int = 0, device: str | None = None) -> A:
        """Version 0 of a lineage."""

    @classmethod
    @abstractmethod
    def load_state(cls: type[A], data: bytes, device: str | None = None) -> A:
        """An instance from ``save_state`` bytes (refuse anything unsafe: the store is shared)."""

    @abstractmethod
    def save_state(self) -> bytes:
        """Everything needed to continue training and to predict, as bytes."""

    @abstractmethod
    def norm_params(self, window: Window) -> NormParams:
        """Statistics of a window that the ref carries (scheme = ``self.scheme``)."""

    @abstractmethod
    def features(self, window: Window, norm_params: NormParams) -> npt.NDArray[np.float32]:
        """The model input; raise ValueError if the params are of another scheme or window."""

    @abstractmethod
    def predict(self, xs: npt.NDArray[np.float32], norm_params: Sequence[NormParams]) -> list[Prediction]:
        """Predictions for a batch of inputs (stacked ``features``)."""

    @abstractmethod
    def train_candle(self, batch: Sequence[CandleExample]) -> dict[str, float]:
        """One update on CANDLE examples; returns loss figures (plain floats)."""

    @abstractmethod
    def train_pivot(self, batch: Sequence[PivotExample]) -> dict[str, float]:
        """One update on PIVOT examples; returns loss figures (plain floats)."""

    @classmethod
    def configure(cls, options: Mapping[str, Any]) -> None:
        """Process-wide options from the trainer (``lr``, ``amp``); ignore what does not apply."""
        return None

    @classmethod
    def kind(cls) -> str:
        """``name/scheme``: what ModelVersion.adapter and checkpoint headers carry."""
        return f"{cls.name}/{cls.scheme}"


def load_adapter(spec: str | None = None) -> type[TrainingAdapter]:
    """The adapter class named by ``spec`` (``package.module:Class``), else by $MODEL_ADAPTER,
    else the built-in one. Raises ConfigError with the reason when it cannot be used."""
    spec = spec or os.environ.get(ADAPTER_ENV) or DEFAULT_ADAPTER
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{ADAPTER_ENV} must be 'package.module:Class', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{ADAPTER_ENV}={spec!r}: cannot import {module_name!r}: {exc}") from exc
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, TrainingAdapter)):
        raise ConfigError(f"{ADAPTER_ENV}={spec!r}: {attr!r} is not a TrainingAdapter subclass")
    for name in ("name", "scheme"):
        if not isinstance(getattr(cls, name, None), str) or not getattr(cls, name):
            raise ConfigError(f"{ADAPTER_ENV}={spec!r}: class attribute {name!r} must be a non-empty str")
    return cls


def choose_action(probs: ActionProbs) -> tuple[Action, float]:
    """The most probable action and its probability (ties go to the earlier of BUY, SELL, HOLD)."""
    values = (probs["buy"], probs["sell"], probs["hold"])
    best = max(range(3), key=lambda i: (values[i], -i))
    return ACTIONS[best], float(values[best])


# -- checkpoints -------------------------------------------------------------------------------------

def checkpoint_bytes(adapter: TrainingAdapter, meta: Mapping[str, Any]) -> bytes:
    """The checkpoint file's bytes: MAGIC, header length (8 bytes, big-endian), JSON header, state."""
    for key in ("model_key", "version"):
        if key not in meta:
            raise ValueError(f"checkpoint meta lacks {key!r}")
    header = {"format": FORMAT, "adapter": type(adapter).name, "scheme": type(adapter).scheme, "meta": dict(meta)}
    head = json.dumps(header, sort_keys=True, allow_nan=False).encode()
    return MAGIC + struct.pack(">Q", len(head)) + head + adapter.save_state()


def save_checkpoint(path: str | os.PathLike[str], adapter: TrainingAdapter, meta: Mapping[str, Any]) -> str:
    """Write the checkpoint atomically (temp file, fsync, rename, fsync dir); returns its sha256."""
    data = checkpoint_bytes(adapter, meta)
    atomic_write(Path(path), data)
    return hashlib.sha256(data).hexdigest()


def read_header(data: bytes) -> tuple[dict[str, Any], bytes]:
    """(header, adapter state bytes) of checkpoint bytes; ValueError if it is not one."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
        raise ValueError(f"not a {FORMAT} checkpoint")
    (n,) = struct.unpack(">Q", data[len(MAGIC):len(MAGIC) + 8])
    start = len(MAGIC) + 8
    if n > MAX_HEADER or start + n > len(data):
        raise ValueError("checkpoint header length out of range")
    header = json.loads(data[start:start + n])
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} checkpoint")
    return header, data[start + n:]


def load_checkpoint(path: str | os.PathLike[str], adapter_cls: type[A], device: str | None = None,
                    expected_sha256: str | None = None) -> tuple[A, dict[str, Any]]:
    """(adapter instance, meta) of a checkpoint file, after every check.

    Order matters: the sha256 is checked on the raw bytes first (nothing parsed), then the header's
    adapter and scheme against ``adapter_cls`` (the adapter's loader never sees another model's
    bytes), then the adapter loads its state.
    """
    return load_checkpoint_bytes(Path(path).read_bytes(), adapter_cls, device, expected_sha256, str(path))


def load_checkpoint_bytes(data: bytes, adapter_cls: type[A], device: str | None = None,
                          expected_sha256: str | None = None, path: str = "checkpoint") -> tuple[A, dict[str, Any]]:
    """``load_checkpoint`` of bytes already read (from a file or an object store); ``path`` names
    them in errors."""
    if expected_sha256:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256.lower():
            raise ChecksumMismatchError(f"{path}: sha256 {actual} != announced {expected_sha256}")
    header, state = read_header(data)
    if header.get("adapter") != adapter_cls.name or header.get("scheme") != adapter_cls.scheme:
        raise AdapterMismatchError(
            f"{path} was written by adapter {header.get('adapter')!r} with feature scheme {header.get('scheme')!r}; "
            f"this process runs {adapter_cls.name!r} with scheme {adapter_cls.scheme!r} "
            f"(set {ADAPTER_ENV} to the adapter that wrote it, or start a new lineage)")
    meta = header.get("meta")
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: checkpoint meta is not a mapping")
    return adapter_cls.load_state(state, device), meta


def atomic_write(path: Path, data: bytes) -> None:
    """Temp file in the same directory, fsync, rename over ``path``, fsync the directory: a crash
    leaves the old file or the new one, never a torn one."""
    directory = path.parent if str(path.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def softmax(z: npt.NDArray[np.float64], axis: int = -1) -> npt.NDArray[np.float64]:
    """Numerically stable softmax (shared by adapters and the calibration fit)."""
    z = z - np.max(z, axis=axis, keepdims=True)
    e = np.exp(z)
    out: npt.NDArray[np.float64] = e / np.sum(e, axis=axis, keepdims=True)
    return out


def fit_temperature(logits: npt.NDArray[np.float64], labels: npt.NDArray[np.int64],
                    lo: float = 0.25, hi: float = 8.0) -> float:
    """Temperature T minimising the log loss of softmax(logits / T) on (logits, labels).

    Used by adapters on a held-out tail of jobs: each job's logits are taken BEFORE the model
    trains on it, so the fit only sees predictions on data the model had not yet learned from, and
    the fitted T only affects predictions made after those jobs' outcomes were known.
    Golden-section search on log T (the loss is unimodal in T for fixed logits); 1.0 when empty.
    """
    if logits.shape[0] < 2:
        return 1.0

    def nll(log_t: float) -> float:
        p = softmax(logits / float(np.exp(log_t)))
        return float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None))))

    a, b = float(np.log(lo)), float(np.log(hi))
    g = (np.sqrt(5.0) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(40):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(d)
    return float(np.exp((a + b) / 2))
