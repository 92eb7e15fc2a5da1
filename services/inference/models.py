"""The model registry of one inference instance: which model (key, version, weights) predicts a series.

* One model per series: ``model_key`` is the series (docs/architecture.md).
* A key's first use looks up its newest row in the store's ``model_versions`` table and loads that
  checkpoint; with no row it gets version 0, ``init_model(DEFAULT_SEED)``, the very weights the
  trainer starts from. Version 0 is built once and shared by every key still on it, so many series
  closing at once go through the network in ONE batch.
* Hot reload: a ``ModelVersion`` from ``model-versions`` is applied when it is newer than the
  version in use (older or equal ones are replays or were already loaded from the store: ignored,
  counted). It is applied in stream order: candles consumed before it were already bound to the old
  model, candles after it get the new one, and every ref names the version that made it.
* A checkpoint that cannot be used (missing, unreadable, or its meta names another key/version)
  makes the ModelVersion invalid input: ``InvalidRecordError`` -> dead letter, old model kept.
* The model is a ``reftrain.adapters.TrainingAdapter`` (``MODEL_ADAPTER``). A ModelVersion naming
  another adapter, a checkpoint written by another adapter or feature scheme (``adapter_mismatch``),
  and a file whose sha256 is not the announced ``checkpoint_sha256`` (``checkpoint_sha256_mismatch``,
  checked on the raw bytes before anything is parsed: no torch or adapter loader sees them) are
  refused the same way and counted in ``reftrain_inference_model_loads_total{outcome}``.
  ``checkpoint_path`` is relative to the store's data path and must stay inside it.
* Idempotence (docs/semantics.md, "Repeated ModelVersions"): a ModelVersion is identified by
  (model_key, version, checkpoint): the trainer may announce a committed version more than once
  (it re-announces its partitions' versions on every assignment, e.g. after a kill -9). A repeat
  naming the same checkpoint (same ``checkpoint_path``, and the same ``checkpoint_sha256`` where
  both are known) is one version: ignored, counted ``stale``, never reloaded. A message that names
  ANOTHER checkpoint for a version this instance has already seen is refused: counted
  ``conflict``, ``InvalidRecordError("model_version_conflict")`` -> dead letter, model kept.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from reftrain.adapters import (
    AdapterMismatchError,
    ChecksumMismatchError,
    TrainingAdapter,
    load_adapter,
    load_checkpoint_bytes,
)
from reftrain.blobs import BlobPathError, LocalBlobs, S3Blobs, blobs_of, check_relpath
from reftrain.errors import InvalidRecordError, StoreError
from reftrain.records import ModelVersion
from services.inference import metrics

log = logging.getLogger(__name__)


class ModelStore(Protocol):
    """What the registry needs of ``reftrain.store.Store``."""

    data_path: str

    def latest_model_version(self, model_key: str) -> dict[str, Any] | None: ...


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model in use; identity matters: refs of one predict batch share one LoadedModel.adapter."""

    key: str
    version: int
    adapter: TrainingAdapter
    checkpoint_path: str | None = None
    checkpoint_sha256: str | None = None


#: Versions remembered per key for the conflict check (the newest ones; older repeats are stale).
SEEN_PER_KEY = 256


@dataclass(frozen=True)
class VersionIdentity:
    """What makes two ModelVersions of one (model_key, version) the same version."""

    checkpoint_path: str
    checkpoint_sha256: str | None

    def same(self, other: VersionIdentity) -> bool:
        """Same checkpoint: the paths agree and, where both messages carry one, the checksums."""
        if self.checkpoint_path != other.checkpoint_path:
            return False
        a, b = self.checkpoint_sha256, other.checkpoint_sha256
        return a is None or b is None or a.lower() == b.lower()


class ModelRegistry:
    def __init__(self, store: ModelStore, device: Any = None, adapter: type[TrainingAdapter] | None = None) -> None:
        self._store = store
        self.device = None if device is None else str(device)
        self.adapter_cls = adapter or load_adapter()
        self._seed_net: TrainingAdapter | None = None
        self._current: dict[str, LoadedModel] = {}
        #: model key -> version -> the checkpoint it named (loaded or announced), for the conflict check
        self._seen: dict[str, dict[int, VersionIdentity]] = {}
        #: where checkpoints are read: files under a local data path, objects under an s3:// one
        self._blobs = blobs_of(store)

    # -- lookups -------------------------------------------------------------------------------
    def seed_model(self) -> TrainingAdapter:
        """Version 0, built once per process and shared by every key without a trained version."""
        if self._seed_net is None:
            self._seed_net = self.adapter_cls.create(0, self.device)  # DEFAULT_SEED, as the trainer
        return self._seed_net

    def current(self, key: str) -> LoadedModel:
        """The model in use for ``key``; the first call asks the store (StoreError propagates)."""
        model = self._current.get(key)
        if model is None:
            model = self._initial(key)
            self._set(model)
        return model

    def _initial(self, key: str) -> LoadedModel:
        row = self._store.latest_model_version(key)
        if row is None:
            metrics.MODEL_LOADS.labels("seed").inc()
            return LoadedModel(key, 0, self.seed_model())
        try:
            model = self._load(key, int(row["version"]), str(row["checkpoint_path"]))
        except InvalidRecordError as exc:
            # The store names a checkpoint we cannot use: predicting with version 0 (named so in
            # every ref) keeps the series served; the error is logged and counted for operators.
            metrics.MODEL_LOADS.labels("failed").inc()
            log.error("newest model version unusable; using version 0",
                      extra={"model_key": key, "version": row["version"], "error": str(exc)[:300]})
            return LoadedModel(key, 0, self.seed_model())
        metrics.MODEL_LOADS.labels("store").inc()
        return model

    # -- changes -------------------------------------------------------------------------------
    def apply(self, mv: ModelVersion) -> bool:
        """Switch ``mv.model_key`` to ``mv`` if it is newer; False if ignored as stale.

        Raises InvalidRecordError when the checkpoint cannot be used (the old model stays).
        """
        key, version = mv["model_key"], int(mv["version"])
        in_use = self.current(key)
        ident = VersionIdentity(str(mv["checkpoint_path"]), mv.get("checkpoint_sha256") or None)
        known = self._seen.get(key, {}).get(version)
        if known is not None and not known.same(ident):
            metrics.MODEL_LOADS.labels("conflict").inc()
            log.error("ModelVersion repeats a known version with another checkpoint; refused",
                      extra={"model_key": key, "version": version, "checkpoint": ident.checkpoint_path,
                             "sha256": ident.checkpoint_sha256, "known_checkpoint": known.checkpoint_path,
                             "known_sha256": known.checkpoint_sha256})
            raise InvalidRecordError(
                "model_version_conflict",
                f"{key} v{version}: {ident.checkpoint_path} (sha256 {ident.checkpoint_sha256}) but this version "
                f"was {known.checkpoint_path} (sha256 {known.checkpoint_sha256})")
        if version <= in_use.version:
            metrics.MODEL_LOADS.labels("stale").inc()  # older, or the same version again (one version)
            return False
        kind = mv.get("adapter")
        if kind and kind != self.adapter_cls.kind():
            metrics.MODEL_LOADS.labels("adapter_mismatch").inc()
            raise InvalidRecordError("adapter_mismatch", f"{key} v{version} was trained by {kind!r}; this "
                                                         f"instance runs {self.adapter_cls.kind()!r}")
        model = self._load(key, version, mv["checkpoint_path"], mv.get("checkpoint_sha256"))
        self._set(model)
        metrics.MODEL_LOADS.labels("hot_reload").inc()
        log.info("model hot-reloaded", extra={"model_key": key, "version": version, "previous": in_use.version,
                                              "checkpoint": mv["checkpoint_path"]})
        return True

    def _remember(self, key: str, version: int, ident: VersionIdentity) -> None:
        seen = self._seen.setdefault(key, {})
        seen[version] = ident
        if len(seen) > SEEN_PER_KEY:
            del seen[min(seen)]

    def forget(self, key: str) -> None:
        """Partition revoked: drop the key (a new owner, or a new session, starts from the store)."""
        self._seen.pop(key, None)
        if self._current.pop(key, None) is not None:
            metrics.MODEL_VERSION.remove(key)

    def versions(self) -> dict[str, int]:
        """Model key -> version in use, for the keys this instance has seen."""
        return {key: model.version for key, model in self._current.items()}

    def _set(self, model: LoadedModel) -> None:
        self._current[model.key] = model
        if model.checkpoint_path is not None:
            self._remember(model.key, model.version, VersionIdentity(model.checkpoint_path, model.checkpoint_sha256))
        metrics.MODEL_VERSION.labels(model.key).set(model.version)

    def resolve(self, checkpoint_path: str) -> Path:
        """Absolute path of a checkpoint named relative to the store's data path (never outside it)."""
        root = Path(self._blobs.root if isinstance(self._blobs, LocalBlobs) else self._store.data_path).resolve()
        rel = Path(checkpoint_path)
        if rel.is_absolute():
            raise InvalidRecordError("checkpoint_path_absolute", checkpoint_path)
        path = (root / rel).resolve()
        if not path.is_relative_to(root):
            raise InvalidRecordError("checkpoint_path_outside_store", checkpoint_path)
        return path

    def _load(self, key: str, version: int, checkpoint_path: str, sha256: str | None = None) -> LoadedModel:
        read: Callable[[], bytes]
        if isinstance(self._blobs, S3Blobs):  # no local folder: the same containment rule on the key
            try:
                rel = check_relpath(checkpoint_path)
            except BlobPathError as exc:
                raise InvalidRecordError(exc.reason, checkpoint_path) from exc
            path: Path | str = self._blobs.describe(rel)
            read = functools.partial(self._blobs.read, rel)
        else:
            path = self.resolve(checkpoint_path)
            read = path.read_bytes
        data = b""
        try:
            data = read()
            net, meta = load_checkpoint_bytes(data, self.adapter_cls, self.device, expected_sha256=sha256,
                                              path=str(path))
        except StoreError:  # the object store unreachable past its retries: transient, not the record's fault
            raise
        except ChecksumMismatchError as exc:
            metrics.MODEL_LOADS.labels("sha256_mismatch").inc()
            raise InvalidRecordError("checkpoint_sha256_mismatch", str(exc)) from exc
        except AdapterMismatchError as exc:
            metrics.MODEL_LOADS.labels("adapter_mismatch").inc()
            raise InvalidRecordError("adapter_mismatch", str(exc)) from exc
        except FileNotFoundError as exc:
            raise InvalidRecordError("checkpoint_missing", str(path)) from exc
        except Exception as exc:  # torch/pickle/format errors: the file is not a usable checkpoint
            raise InvalidRecordError("checkpoint_unreadable", f"{path}: {type(exc).__name__}: {exc}") from exc
        if meta.get("model_key") != key or int(meta.get("version", -1)) != version:
            raise InvalidRecordError(
                "checkpoint_mismatch",
                f"{path} holds {meta.get('model_key')!r} v{meta.get('version')}, expected {key!r} v{version}")
        if not sha256:  # loaded from the store's row (no checksum there): the file's own, for the repeat check
            sha256 = hashlib.sha256(data).hexdigest()
        return LoadedModel(key, version, net, checkpoint_path, sha256 or None)
