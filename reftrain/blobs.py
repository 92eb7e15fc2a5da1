"""Whole-file objects next to the lake: model checkpoints and trainer manifests (issue #19).

The lake's Parquet files go through DuckDB (httpfs for ``s3://``); checkpoints and manifests are
plain files the trainer writes and the trainer, inference and the fault verdict read. With a local
data path they are files under it (``LocalBlobs``: temp file, fsync, rename). With an ``s3://``
data path they are objects under the same prefix (``S3Blobs``), so a trainer or inference replica
on another host, with no access to any lake folder, reads what any other replica wrote.

Why a PUT replaces the rename: an S3 PUT is atomic (a reader sees the whole old object or the whole
new one, never a torn one), and every checkpoint gets a new key (``lineage.checkpoint_relpath``), so
the only overwritten object is a partition's manifest, guarded as on a folder by its ``seq`` check
after the Kafka commit fence (services/trainer/lineage.py).

``S3Blobs`` is a small SigV4 client over httpx (already a dependency: no boto3), path or virtual-host
style, any S3 API (S3Proxy, MinIO, AWS, GCS interoperability). An unreachable store, HTTP 5xx and
429 are retried with back-off for ``retry_seconds`` (an object store away for 20 s is ridden out);
403/404/400 fail at once. The secret is never in an error, a log line or a repr.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import os
import posixpath
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

import httpx

from reftrain.adapters import atomic_write
from reftrain.errors import ReftrainError, StoreError

if TYPE_CHECKING:
    from reftrain.settings import PlatformSettings

log = logging.getLogger(__name__)

#: How long an S3 request is retried while the store is unreachable or answers 5xx (seconds).
RETRY_SECONDS = 60.0
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class BlobPathError(ReftrainError, ValueError):
    """A relative path that would leave the data path (absolute, or with ``..``)."""

    def __init__(self, reason: str, path: str) -> None:
        super().__init__(f"{reason}: {path}")
        self.reason = reason


class BlobStoreError(StoreError):
    """The object store refused a request or stayed unreachable past the retry budget (a
    StoreError: services ride it out as they ride out a catalog outage)."""


class Blobs(Protocol):
    """Whole-file reads and atomic whole-file writes under one root (the store's data path)."""

    root: str

    def read(self, rel: str) -> bytes:
        """The object's bytes; FileNotFoundError if there is none."""
        ...

    def write(self, rel: str, data: bytes) -> None:
        """Store ``data`` at ``rel``: readers see the old content or the new, never a part."""
        ...

    def describe(self, rel: str) -> str:
        """Where ``rel`` lives, for messages (a path or an s3:// URL)."""
        ...


def check_relpath(rel: str) -> str:
    """``rel`` normalised, or BlobPathError when it is absolute or climbs out of the root."""
    if rel.startswith("/") or Path(rel).is_absolute():
        raise BlobPathError("checkpoint_path_absolute", rel)
    norm = posixpath.normpath(rel)
    if norm == ".." or norm.startswith("../") or norm == ".":
        raise BlobPathError("checkpoint_path_outside_store", rel)
    return norm


class LocalBlobs:
    """Files under a local folder; writes are atomic renames (reftrain.adapters.atomic_write)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = str(Path(root).resolve())

    def path(self, rel: str) -> Path:
        """Absolute path of ``rel``, never outside the root (symlinks resolved)."""
        root = Path(self.root)
        if Path(rel).is_absolute():
            raise BlobPathError("checkpoint_path_absolute", rel)
        path = (root / rel).resolve()
        if not path.is_relative_to(root):
            raise BlobPathError("checkpoint_path_outside_store", rel)
        return path

    def read(self, rel: str) -> bytes:
        return self.path(rel).read_bytes()

    def write(self, rel: str, data: bytes) -> None:
        atomic_write(self.path(rel), data)

    def describe(self, rel: str) -> str:
        return str(Path(self.root) / rel)


@dataclass(frozen=True)
class S3Config:
    """Where and how to reach the bucket of an s3:// data path, shared by DuckDB's httpfs
    (reftrain.store) and ``S3Blobs``. ``endpoint`` is host[:port] of a non-AWS S3 API (empty = AWS).
    The secret never appears in repr()."""

    endpoint: str = ""
    key_id: str = ""
    secret: str = field(default="", repr=False)
    region: str = "us-east-1"
    url_style: str = "vhost"
    use_ssl: bool = True

    @classmethod
    def from_settings(cls, settings: PlatformSettings) -> S3Config:
        from reftrain.settings import s3_secret_access_key

        return cls(settings.store_s3_endpoint, settings.store_s3_access_key_id, s3_secret_access_key(settings),
                   settings.store_s3_region, settings.store_s3_url_style, settings.store_s3_use_ssl)


@dataclass(frozen=True, kw_only=True)
class S3Target(S3Config):
    """A bucket and key prefix plus the connection (``S3Config``) that reaches them."""

    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str, conn: S3Config | None = None) -> S3Target:
        """``s3://bucket/prefix`` plus the connection settings."""
        if not url.startswith("s3://"):
            raise ValueError(f"not an s3:// URL: {url!r}")
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise ValueError(f"no bucket in {url!r}")
        c = conn or S3Config()
        return cls(bucket=bucket, prefix=prefix.strip("/"), endpoint=c.endpoint, key_id=c.key_id, secret=c.secret,
                   region=c.region, url_style=c.url_style, use_ssl=c.use_ssl)


class S3Blobs:
    """Objects under ``s3://bucket/prefix`` through the S3 REST API, signed with SigV4."""

    def __init__(self, target: S3Target, *, retry_seconds: float = RETRY_SECONDS, timeout: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if target.url_style not in ("path", "vhost"):
            raise BlobStoreError(f"STORE_S3_URL_STYLE must be 'path' or 'vhost', not {target.url_style!r}")
        self.target = target
        self.root = f"s3://{target.bucket}/{target.prefix}".rstrip("/")
        self.retry_seconds = retry_seconds
        self._sleep = sleep
        self._client = httpx.Client(timeout=timeout)

    def __repr__(self) -> str:
        return f"S3Blobs({self.root!r}, endpoint={self.target.endpoint!r})"

    def close(self) -> None:
        self._client.close()

    # -- Blobs ---------------------------------------------------------------------------------
    def describe(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def read(self, rel: str) -> bytes:
        resp = self._request("GET", self._key(rel))
        if resp.status_code == 404:
            raise FileNotFoundError(self.describe(rel))
        self._raise_for(resp, "GET", rel)
        return resp.content

    def write(self, rel: str, data: bytes) -> None:
        resp = self._request("PUT", self._key(rel), data)
        self._raise_for(resp, "PUT", rel)

    def delete(self, rel: str) -> None:
        resp = self._request("DELETE", self._key(rel))
        if resp.status_code != 404:
            self._raise_for(resp, "DELETE", rel)

    # -- plumbing ------------------------------------------------------------------------------
    def _key(self, rel: str) -> str:
        rel = check_relpath(rel)
        return f"{self.target.prefix}/{rel}" if self.target.prefix else rel

    def _url(self, key: str) -> tuple[str, str, str]:
        """(url, host, canonical path) of an object key."""
        t = self.target
        scheme = "https" if t.use_ssl else "http"
        endpoint = t.endpoint or f"s3.{t.region}.amazonaws.com"
        if t.url_style == "path":
            host, path = endpoint, f"/{t.bucket}/{key}"
        else:
            host, path = f"{t.bucket}.{endpoint}", f"/{key}"
        canonical = quote(path, safe="/-_.~")
        return f"{scheme}://{host}{canonical}", host, canonical

    def _request(self, method: str, key: str, body: bytes = b"") -> httpx.Response:
        url, host, canonical = self._url(key)
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.2
        while True:
            headers = sign(method, host, canonical, body, self.target, dt.datetime.now(dt.UTC))
            try:
                resp = self._client.request(method, url, content=body, headers=headers)
                if resp.status_code < 500 and resp.status_code != 429:
                    return resp
                problem = f"HTTP {resp.status_code}"
            except httpx.TransportError as exc:
                problem = type(exc).__name__
            if time.monotonic() + delay > deadline:
                raise BlobStoreError(f"{method} {self.root}/…/{key.rsplit('/', 1)[-1]}: object store unavailable "
                                     f"for {self.retry_seconds:.0f} s ({problem})")
            log.warning("object store request failed; retrying",
                        extra={"method": method, "key": key, "problem": problem, "retry_in_s": round(delay, 2)})
            self._sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)

    def _raise_for(self, resp: httpx.Response, method: str, rel: str) -> None:
        if resp.status_code < 300:
            return
        code = ""
        if b"<Code>" in resp.content:
            code = resp.content.split(b"<Code>", 1)[1].split(b"</Code>", 1)[0].decode(errors="replace")[:64]
        raise BlobStoreError(f"{method} {self.describe(rel)}: HTTP {resp.status_code} {code}".rstrip())


def sign(method: str, host: str, canonical_path: str, body: bytes, t: S3Target, now: dt.datetime) -> dict[str, str]:
    """The headers of a SigV4-signed request (no query string; anonymous when no key id)."""
    payload = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    if not t.key_id:
        return headers
    names = sorted(headers)
    canonical_headers = "".join(f"{n}:{headers[n].strip()}\n" for n in names)
    signed = ";".join(names)
    request = "\n".join([method, canonical_path, "", canonical_headers, signed, payload])
    scope = f"{amz_date[:8]}/{t.region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(request.encode()).hexdigest()])
    key = ("AWS4" + t.secret).encode()
    for part in (amz_date[:8], t.region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={t.key_id}/{scope}, SignedHeaders={signed}, "
                                f"Signature={signature}")
    return headers


def blobs_for(data_path: str, s3: S3Config | None = None) -> Blobs:
    """The blobs of a data path: S3 for ``s3://`` (``s3`` carries the connection), files otherwise."""
    if data_path.startswith("s3://"):
        return S3Blobs(S3Target.parse(data_path, s3))
    return LocalBlobs(data_path)


def blobs_from_settings(settings: PlatformSettings) -> Blobs:
    """The blobs of a ``PlatformSettings``' data path (STORE_DATA_PATH and STORE_S3_*)."""
    return blobs_for(settings.store_data_path, S3Config.from_settings(settings))


def blobs_of(store: Any) -> Blobs:
    """The blobs next to a store's lake: ``store.blobs()`` when it has one (reftrain.store.Store),
    else files under its ``data_path`` (test doubles)."""
    make = getattr(store, "blobs", None)
    if callable(make):
        blobs: Blobs = make()
        return blobs
    return LocalBlobs(str(store.data_path))
