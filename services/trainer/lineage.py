"""The bookkeeping of exactly-once training (docs/semantics.md, rule 9): checkpoint paths, the per-partition
manifest that is the protocol's commit point, job digests, and reading a lineage back.

The protocol (services/trainer/README.md has the long form):

* ``training-jobs`` is keyed by model key, so every job of a model is on ONE partition and the
  partition's owner in the consumer group is the only process training that model.
* Each partition ``p`` has a manifest ``checkpoints/trainer/<group>/<topic>/p<p>.json`` holding
  ``next_offset`` (every job of ``p`` below it is in the lineage or was rejected; none at or above it
  is) and, for each model key seen on ``p``, its current checkpoint (version, path, job count,
  digest). One offset per partition covers every model on it, so a model key that appeared after the
  last checkpoint cannot be forgotten: it simply starts from version 0 at ``next_offset``.
* A checkpoint of ``p``: (1) each model of ``p`` that trained since the last checkpoint is written to
  a NEW file ``checkpoints/models/<key>/v<version>-<token>.pt`` (atomic; version = previous + 1; the
  meta holds the offsets, the job count, the digest, the ids of the jobs of this version and the path
  of its parent); (2) the dead letters of rejected jobs are flushed and the offsets are committed to
  Kafka synchronously: this is a FENCE as much as information, because the group coordinator refuses
  the commit of a member that has lost the partition (a zombie stops here); (3) the manifest is
  replaced atomically (temp file, fsync, rename, directory fsync; on an s3:// data path one PUT,
  reftrain.blobs) after checking that its ``seq`` is
  still the one this owner loaded or last wrote: THIS RENAME IS THE COMMIT POINT; (4) a
  ``model_versions`` row per new version; (5) a ModelVersion per new version on ``model-versions``.
* On assignment of ``p`` the owner reads the manifest, loads each model's checkpoint, repairs a
  missing ``model_versions`` row (a crash between 3 and 4), re-publishes each model's current version
  (a crash between 4 and 5; consumers treat (model_key, version) as idempotent) and seeks ``p`` to
  ``next_offset`` (the earliest offset when there is no manifest). Jobs delivered below it are skipped.
* A crash anywhere before 3 leaves the old manifest: the new files are orphans nobody references,
  the jobs after the old ``next_offset`` are consumed again and train the old lineage once.

So every job below ``next_offset`` contributes to exactly one checkpoint of the surviving lineage,
and the chain of ``parent`` links from the manifest's checkpoint lists each of them once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from reftrain.blobs import Blobs, LocalBlobs

MANIFEST_FORMAT = "reftrain-trainer-manifest-v1"
DIGEST_BITS = 128
EMPTY_DIGEST = "0" * (DIGEST_BITS // 4)


class ManifestConflict(Exception):
    """The manifest on disk is not the one this owner loaded or last wrote: another process wrote
    it (the partition moved). The checkpoint is abandoned; the partition's state here is stale."""

    reason = "manifest_conflict"


def _safe(name: str) -> str:
    """A file-name-safe, reversible spelling of a key or topic (``BTCUSDT:1m`` -> ``BTCUSDT%3A1m``)."""
    return quote(name, safe="-_.")


def checkpoint_relpath(model_key: str, version: int, token: str) -> str:
    """Checkpoint file of a model version, relative to the store's data path. ``token`` makes every
    write a new file, so a referenced checkpoint is never overwritten (not even by a zombie)."""
    return f"checkpoints/models/{_safe(model_key)}/v{version:08d}-{token}.pt"


def manifest_relpath(group: str, topic: str, partition: int) -> str:
    return f"checkpoints/trainer/{_safe(group)}/{_safe(topic)}/p{partition:05d}.json"


def job_digest(job_id: str) -> int:
    return int(hashlib.sha256(job_id.encode("utf-8")).hexdigest()[: DIGEST_BITS // 4], 16)


def digest_add(digest: str, job_ids: Iterable[str]) -> str:
    """Order-independent digest of a multiset of job ids: the sum of their sha256 prefixes mod 2^128.
    Two lineages that trained the same jobs (each once) have the same digest whatever the order."""
    total = int(digest, 16)
    for job_id in job_ids:
        total = (total + job_digest(job_id)) % (1 << DIGEST_BITS)
    return f"{total:0{DIGEST_BITS // 4}x}"


def checkpoint_due(consumed_since: int, seconds_since: float, every_jobs: int, every_seconds: float) -> bool:
    """Checkpoint when the partition consumed ``every_jobs`` jobs since its last checkpoint, or has
    unsaved work ``every_seconds`` after it (0 disables the time trigger)."""
    if consumed_since <= 0:
        return False
    if consumed_since >= every_jobs:
        return True
    return every_seconds > 0 and seconds_since >= every_seconds


def already_in_lineage(offset: int, next_offset: int | None) -> bool:
    """A job at ``offset`` is already in the lineage (or was rejected) iff it lies below the
    partition's processed position."""
    return next_offset is not None and offset < next_offset


@dataclass
class ModelEntry:
    """A model's current checkpoint, as the manifest records it."""

    version: int
    checkpoint_path: str
    trained_jobs: int
    jobs_digest: str
    created_at: int
    #: sha256 of the checkpoint file (announced in ModelVersion.checkpoint_sha256, checked on load);
    #: "" in manifests written before it existed
    sha256: str = ""


@dataclass
class PartitionManifest:
    """What is committed for one partition of training-jobs."""

    group: str
    topic: str
    partition: int
    next_offset: int
    seq: int = 0
    models: dict[str, ModelEntry] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    updated_at: int = 0

    def to_json(self) -> bytes:
        body = asdict(self)
        body["format"] = MANIFEST_FORMAT
        return json.dumps(body, sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> PartitionManifest:
        body = json.loads(data)
        if body.pop("format", None) != MANIFEST_FORMAT:
            raise ValueError(f"not a {MANIFEST_FORMAT} manifest")
        body["models"] = {k: ModelEntry(**v) for k, v in body.get("models", {}).items()}
        return cls(**body)


def read_manifest(path: str | os.PathLike[str]) -> PartitionManifest | None:
    target = Path(path)
    return read_manifest_at(LocalBlobs(target.parent), target.name)


def read_manifest_at(blobs: Blobs, rel: str) -> PartitionManifest | None:
    """The manifest at ``rel`` of a data path (a folder or an object store); None if there is none."""
    try:
        data = blobs.read(rel)
    except FileNotFoundError:
        return None
    return PartitionManifest.from_json(data)


def write_manifest(path: str | os.PathLike[str], manifest: PartitionManifest, expected_seq: int) -> None:
    target = Path(path)
    write_manifest_at(LocalBlobs(target.parent), target.name, manifest, expected_seq)


def write_manifest_at(blobs: Blobs, rel: str, manifest: PartitionManifest, expected_seq: int) -> None:
    """Replace the manifest atomically, unless the stored one has another ``seq`` than expected.

    The check and the write are not one atomic step across processes (on a folder: the rename; on
    S3: the PUT, atomic for readers); the Kafka commit fence before it makes a concurrent writer (a
    zombie past its session) very unlikely, and this check turns the remaining window into
    milliseconds."""
    current = read_manifest_at(blobs, rel)
    on_disk = current.seq if current is not None else 0
    if on_disk != expected_seq:
        raise ManifestConflict(f"{blobs.describe(rel)}: seq {on_disk} stored, this owner expected {expected_seq}")
    blobs.write(rel, manifest.to_json())


def _blobs(data_path: Blobs | str | os.PathLike[str]) -> Blobs:
    if isinstance(data_path, (str, os.PathLike)):
        return LocalBlobs(data_path)
    return data_path


def read_meta(data_path: Blobs | str | os.PathLike[str], checkpoint_path: str) -> dict[str, Any]:
    """The meta of a checkpoint file (path relative to the store's data path, a folder or the
    ``Blobs`` of an object store); reads only the container's JSON header (``reftrain.adapters``),
    so auditing needs no torch and no adapter."""
    from reftrain.adapters import read_header

    header, _ = read_header(_blobs(data_path).read(checkpoint_path))
    meta: dict[str, Any] = header["meta"]
    return meta


def lineage_metas(data_path: Blobs | str | os.PathLike[str], checkpoint_path: str) -> list[dict[str, Any]]:
    """Metas of a checkpoint and all its ancestors (``parent`` links), oldest first."""
    blobs = _blobs(data_path)
    chain: list[dict[str, Any]] = []
    path: str | None = checkpoint_path
    while path:
        meta = read_meta(blobs, path)
        chain.append(meta)
        path = meta.get("parent")
    chain.reverse()
    return chain


def lineage_job_ids(data_path: Blobs | str | os.PathLike[str], checkpoint_path: str) -> list[str]:
    """Ids of every job in the lineage ending at ``checkpoint_path``, in training order (each
    version's meta lists the jobs it added). A job trained twice would appear twice."""
    return [j for meta in lineage_metas(data_path, checkpoint_path) for j in meta.get("job_ids", [])]
