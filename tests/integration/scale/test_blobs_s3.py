"""reftrain.blobs.S3Blobs (the SigV4 client checkpoints and manifests use) against a real S3 API
(S3Proxy with SigV4 auth): objects round-trip byte for byte, a missing one is FileNotFoundError,
keys that need escaping work, a wrong secret is refused without being printed, and an unreachable
store is retried for the budget and then reported as a StoreError."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import replace

import pytest

from reftrain.blobs import BlobPathError, BlobStoreError, S3Blobs, S3Config, S3Target
from reftrain.errors import StoreError
from tests.integration.scale.conftest import S3

pytestmark = pytest.mark.kafka  # a private S3Proxy (started by the fixture)


def _target(s3: S3, prefix: str) -> S3Target:
    e = s3.env
    return S3Target.parse(f"s3://reftrain/{prefix}", S3Config(
        endpoint=e["STORE_S3_ENDPOINT"], key_id=e["STORE_S3_ACCESS_KEY_ID"], secret=e["STORE_S3_SECRET_ACCESS_KEY"],
        region=e["STORE_S3_REGION"], url_style=e["STORE_S3_URL_STYLE"], use_ssl=e["STORE_S3_USE_SSL"] == "true"))


def test_objects_round_trip_over_sigv4(s3: S3) -> None:
    prefix = f"blobs-{uuid.uuid4().hex[:8]}"
    blobs = S3Blobs(_target(s3, prefix))
    data = os.urandom(300_000)
    rel = "checkpoints/models/BTCUSDT%3A1m/v00000001-abc.pt"  # '%' and ':' escaped as the trainer names them
    blobs.write(rel, data)
    assert blobs.read(rel) == data
    # the object is where S3Proxy keeps the bucket's files: the key, unescaped once
    assert (s3.backing / "reftrain" / prefix / rel).read_bytes() == data
    blobs.write(rel, b"second")  # a PUT replaces the whole object
    assert blobs.read(rel) == b"second"
    with pytest.raises(FileNotFoundError):
        blobs.read("checkpoints/none.json")
    with pytest.raises(BlobPathError):
        blobs.read("../other-prefix/x")
    blobs.delete(rel)
    with pytest.raises(FileNotFoundError):
        blobs.read(rel)
    blobs.close()


def test_a_wrong_secret_is_refused_and_never_printed(s3: S3) -> None:
    wrong = "wrong-" + uuid.uuid4().hex
    blobs = S3Blobs(replace(_target(s3, "x"), secret=wrong), retry_seconds=1)
    with pytest.raises(BlobStoreError) as err:
        blobs.write("a", b"b")
    assert "403" in str(err.value)
    assert wrong not in str(err.value) and wrong not in repr(blobs)
    assert s3.env["STORE_S3_SECRET_ACCESS_KEY"] not in str(err.value)


def test_an_unreachable_store_is_retried_then_a_store_error(s3: S3) -> None:
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    # port 1 on loopback: connection refused at once, so the back-off is what takes the time
    blobs = S3Blobs(replace(_target(s3, "x"), endpoint="127.0.0.1:1"), retry_seconds=1.5, sleep=sleep)
    t0 = time.monotonic()
    with pytest.raises(StoreError, match="unavailable"):
        blobs.read("a")
    assert len(sleeps) >= 2 and 0.5 < time.monotonic() - t0 < 10
