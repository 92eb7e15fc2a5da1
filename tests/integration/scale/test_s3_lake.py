"""The lake on an S3 API (S3Proxy, DuckDB httpfs): candles written through the store land as
Parquet objects in the bucket, windows read back pass the trainer's own verification
(services.trainer.windows.verify_window), a process that cannot see any lake folder reads the same
window over S3, and a wrong secret fails clearly without printing it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from ops.catalog import fresh_catalog
from ops.stages import STACK
from reftrain.errors import StoreError
from reftrain.records import Candle
from reftrain.settings import PlatformSettings
from reftrain.store import Store
from reftrain.window import window_checksum
from services.trainer.windows import WindowRequest, verify_window
from tests.integration.scale.conftest import S3
from tests.support import real_candles

pytestmark = pytest.mark.kafka  # the session stack's PostgreSQL catalog + a private S3Proxy

BTC = "BTCUSDT-1m-2025-09-22_2025-09-25.csv"
REPO = Path(__file__).resolve().parents[3]


def _request(candles: list[Candle], lo: int, hi: int) -> WindowRequest:
    """The ref a pivot would carry for candles[lo:hi], checksum computed from the source rows."""
    part = candles[lo:hi]
    t = np.array([c["open_time"] for c in part], dtype=np.int64)
    v = np.array([[c["open"], c["high"], c["low"], c["close"], c["volume"]] for c in part], dtype=np.float64)
    return WindowRequest("BTCUSDT", "1m", int(t[0]), int(t[-1]), len(part), window_checksum(t, v))


def _local(platform: PlatformSettings, folder: Path) -> PlatformSettings:
    """The same catalog server, a NEW catalog database (DuckLake keeps the data path in its
    catalog) and a local folder: the local-lake baseline."""
    catalog = fresh_catalog(platform.store_catalog, f"test_{uuid.uuid4().hex[:12]}")
    assert catalog != platform.store_catalog
    return platform.replace(store_catalog=catalog, store_data_path=str(folder))


def _objects(s3: S3, platform: PlatformSettings) -> list[Path]:
    prefix = platform.store_data_path.removeprefix("s3://")
    return sorted((s3.backing / prefix).rglob("*.parquet"))


def test_candles_go_to_the_bucket_and_windows_verify(s3_platform: PlatformSettings, s3: S3,
                                                      tmp_path: Path) -> None:
    candles = real_candles(BTC, limit=2400)
    store = Store.from_settings(s3_platform)
    assert store.remote and store.data_path.startswith("s3://")
    assert store.append_candles(candles[:1500]).inserted == 1500
    assert store.append_candles(candles[1400:]).inserted == 900  # overlapping replay: de-duplicated
    store.compact()
    assert _objects(s3, s3_platform), "no Parquet object in the bucket"
    assert not list(tmp_path.rglob("*.parquet")) and not Path("s3:").exists()  # nothing written locally

    req = _request(candles, 300, 1800)
    verify_window(store.read_range(req.symbol, req.timeframe, req.start, req.end), req)
    # The same rows in a local-folder lake give the same checksum: S3 is a drop-in data path.
    local = Store.from_settings(_local(s3_platform, tmp_path / "local-lake"))
    local.append_candles(candles)
    assert local.read_range(req.symbol, req.timeframe, req.start, req.end).checksum() == req.checksum
    local.close()
    store.close()


READER = """
import json, sys
from reftrain import settings
from reftrain.store import Store
from services.trainer.windows import WindowRequest, verify_window
req = WindowRequest(**json.loads(sys.argv[1]))
store = Store.from_settings(settings.platform(), create=False)
verify_window(store.read_range(req.symbol, req.timeframe, req.start, req.end), req)
print("verified", store.data_path)
"""


def _env(platform: PlatformSettings, s3: S3) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **platform.connection_env(), **s3.env}


def test_a_remote_reader_without_any_lake_folder_reads_over_s3(s3_platform: PlatformSettings, s3: S3,
                                                               tmp_path: Path) -> None:
    """The 'remote trainer' read path: a process in its own mount namespace where the bucket's
    backing folder (the only place the Parquet files exist on this host) is an empty tmpfs, so
    every byte it reads comes over the S3 API; it verifies the window the trainer's way."""
    if not shutil.which("unshare") or subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs a private mount namespace (unshare as root) to hide the lake folder")
    candles = real_candles(BTC, limit=1500)
    store = Store.from_settings(s3_platform)
    store.append_candles(candles)
    store.compact()
    store.close()
    req = _request(candles, 100, 1400)
    hide = f"mount -t tmpfs none {s3.backing} && test -z \"$(ls -A {s3.backing})\" && exec \"$@\""
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", hide, "sh",
           sys.executable, "-c", READER, json.dumps(req.__dict__)]
    out = subprocess.run(cmd, env=_env(s3_platform, s3), cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"verified {s3_platform.store_data_path}" in out.stdout
    # The same reader with the window's checksum one value off fails the verification.
    bad = dict(req.__dict__, checksum="0" * 64)
    out = subprocess.run([*cmd[:-1], json.dumps(bad)], env=_env(s3_platform, s3), cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "checksum_mismatch" in out.stderr


def test_a_wrong_secret_fails_clearly_and_is_never_printed(s3_platform: PlatformSettings) -> None:
    wrong = "not-the-secret-" + "x" * 24
    with pytest.raises(StoreError) as err:
        store = Store.from_settings(s3_platform.replace(store_s3_secret_access_key=wrong))
        store.append_candles(real_candles(BTC, limit=1200))  # > inlining limit: a Parquet PUT
    assert wrong not in str(err.value)
    assert s3_platform.store_s3_secret_access_key not in str(err.value)
    assert wrong not in repr(s3_platform.replace(store_s3_secret_access_key=wrong))


@pytest.mark.slow
def test_window_read_latency_s3_vs_local(s3_platform: PlatformSettings, tmp_path: Path) -> None:
    """Figures for docs/scaling.md (pytest -s): p50/p99 of 600-candle window reads, S3 vs a local
    folder, the same catalog server and the same rows, measured in the same run."""
    candles = real_candles(BTC, limit=4000)
    local = _local(s3_platform, tmp_path / "lake")
    # "s3-uncached": DuckDB's external file cache (on by default) off, so every read goes to S3.
    lakes = {"s3": s3_platform, "s3-uncached": s3_platform, "local": local}
    out = {}
    for name, p in lakes.items():
        store = Store.from_settings(p)
        if name != "s3-uncached":
            store.append_candles(candles)
            store.compact()
        else:
            store.query("SET enable_external_file_cache = false")
        rng = np.random.default_rng(7)
        times = []
        for _ in range(200):
            lo = int(rng.integers(0, len(candles) - 600))
            req = _request(candles, lo, lo + 600)
            t0 = time.perf_counter()
            w = store.read_range(req.symbol, req.timeframe, req.start, req.end)
            times.append((time.perf_counter() - t0) * 1000)
            verify_window(w, req)
        out[name] = (float(np.percentile(times, 50)), float(np.percentile(times, 99)))
        store.close()
    print("window read ms p50/p99: " + ", ".join(f"{k} {v[0]:.1f}/{v[1]:.1f}" for k, v in out.items()))
    assert all(v[0] > 0 for v in out.values())


@pytest.mark.slow  # ~18 s: S3Proxy is stopped and started again
def test_a_short_object_store_outage_is_retried_and_nothing_is_lost(s3_platform: PlatformSettings, s3: S3) -> None:
    """S3Proxy stopped, then started again ~4 s later, while a batch is being written: the store's
    retry (connection errors of httpfs are transient) finishes the write once, with every row.
    Longer outages surface as StoreError, which the services ride out as a catalog outage."""
    candles = real_candles(BTC, limit=3000)
    store = Store.from_settings(s3_platform)
    store.append_candles(candles[:1500])
    env = dict(os.environ, REFTRAIN_STACK_DIR=str(s3.backing.parent), REFTRAIN_S3_PORT=str(s3.port))
    subprocess.run([str(STACK), "s3-down"], env=env, check=True, capture_output=True, timeout=60)

    def back() -> None:
        time.sleep(4)
        subprocess.run([str(STACK), "s3-up"], env=env, check=True, capture_output=True, timeout=120)

    t = threading.Thread(target=back)
    t.start()
    t0 = time.monotonic()
    try:
        res = store.append_candles(candles[1500:])
    finally:
        t.join()
    assert time.monotonic() - t0 > 3, "the write did not meet the outage"
    assert (res.inserted, res.skipped_duplicates) == (1500, 0)
    assert store.count_candles("BTCUSDT", "1m") == 3000
    req = _request(candles, 0, 3000)
    verify_window(store.read_range(req.symbol, req.timeframe, req.start, req.end), req)
    store.close()
