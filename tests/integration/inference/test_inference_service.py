"""``python -m services.inference`` against the real broker, registry and store, on real candles.

Proves: one InferenceRef per completed candle once 600 candles exist (the first 599 wait, counted),
with the right range, row count, target and key, each a few hundred bytes; re-reading every ref's
range from the store in ANOTHER process reproduces the checksum, the norm params, the model input
bit for bit and the prediction; a ModelVersion published mid-stream switches the version of later
refs without dropping or duplicating any; a series with a missing bar gets refs whose range spans
601 bars for 600 rows while the gap is inside the window; many candles are predicted per batch;
SIGTERM exits 0.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reftrain.adapters import save_checkpoint
from reftrain.model import build_input, init_model
from reftrain.model.adapter import TorchAdapter
from reftrain.records import Candle, ModelVersion, inference_id
from reftrain.settings import PlatformSettings
from reftrain.store import Store
from reftrain.topics import CANDLES, INFERENCE_REFS, MODEL_VERSIONS, TopicCatalogue
from reftrain.validation import validate_inference_ref
from reftrain.window import COLUMNS, Window
from tests.support import (
    REPO,
    consume_all,
    decode_all,
    ensure_topics,
    free_port,
    metric,
    produce_records,
    real_candles,
    scrape,
    start_service,
    stop_gracefully,
)

pytestmark = pytest.mark.kafka

BTC = "BTCUSDT-1m-2025-09-22_2025-09-25.csv"
ETH = "ETHUSDT-1m-2025-09-22_2025-09-25.csv"
LTC_GAP = "LTCUSD-1m-2018-04-05_2018-04-06.csv"  # one missing bar between rows 491 and 492
MIN = 60_000
WINDOW = 600


# -- helpers ----------------------------------------------------------------------------------------
WAIT_S = 400.0
"""Generous: on the shared 2-core box (load average 20-30 at times) importing torch alone took 20 s."""


def wait_for(cond: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], log: Path,
             timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError(f"service exited with {proc.returncode} while waiting for {what}:\n"
                                 f"{log.read_text()[-3000:]}")
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}:\n{log.read_text()[-3000:]}")


def start(platform_env: dict[str, str], log: Path, **extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {"HTTP_PORT": str(port), "INSTANCE_ID": "inference-0", "LOG_LEVEL": "INFO", **extra}
    return start_service("services.inference", platform_env, env, log_path=log), port


def interleave(*series: Sequence[Candle]) -> list[tuple[str, dict[str, Any]]]:
    """Candles of several series in event-time order, as ingest publishes them."""
    merged = sorted((c for s in series for c in s), key=lambda c: (c["open_time"], c["symbol"]))
    return [(f"{c['symbol']}:{c['timeframe']}", dict(c)) for c in merged]


def refs_of(port: int, series: str) -> float:
    return metric(port, f'reftrain_inference_refs_total{{series="{series}"}}')


def read_refs(platform: PlatformSettings, expect: int) -> tuple[list[dict[str, Any]], list[Any]]:
    msgs = consume_all(platform, TopicCatalogue(platform).name(INFERENCE_REFS), expect=expect, timeout=300)
    return decode_all(platform, INFERENCE_REFS, msgs), msgs


def csv_window(candles: Sequence[Candle], start: int, end: int) -> Window:
    """The rows of [start, end] taken from the source file itself (not from the store)."""
    rows = [c for c in candles if start <= c["open_time"] <= end]
    return Window(rows[0]["symbol"], rows[0]["timeframe"], np.array([c["open_time"] for c in rows], dtype=np.int64),
                  np.array([[c[k] for k in COLUMNS] for c in rows], dtype=np.float64))  # type: ignore[literal-required]


def reread_elsewhere(platform: PlatformSettings, refs: list[dict[str, Any]], tmp: Path,
                     direct_every: int) -> list[dict[str, Any]]:
    """The re-read done by a fresh Python process (tests/integration/inference/reread_refs.py)."""
    src, dst = tmp / "refs.json", tmp / "reread.json"
    src.write_text(json.dumps({"platform": platform.as_dict(), "refs": refs, "direct_every": direct_every}))
    subprocess.run([sys.executable, "-m", "tests.integration.inference.reread_refs", str(src), str(dst)],
                   cwd=REPO, check=True, timeout=600)
    out: list[dict[str, Any]] = json.loads(dst.read_text())
    return out


def assert_reproducible(platform: PlatformSettings, refs: list[dict[str, Any]], sources: dict[str, list[Candle]],
                        tmp: Path, direct_every: int = 20) -> None:
    again = reread_elsewhere(platform, refs, tmp, direct_every)
    assert [a["inference_id"] for a in again] == [r["inference_id"] for r in refs]
    assert sum(a["direct_checksum"] is not None for a in again) >= len(refs) // direct_every
    for ref, a in zip(refs, again, strict=True):
        assert a["direct_checksum"] in (None, ref["window_checksum"])
        assert a["rows"] == ref["window_size"] == WINDOW
        assert (a["first"], a["last"]) == (ref["data_range_start"], ref["data_range_end"])
        assert a["checksum"] == ref["window_checksum"]
        assert a["norm_params_equal"]
        assert a["input_shape"] == [WINDOW, 5]
        # bit-for-bit: the input rebuilt in another process from the store == the input built here
        # from the source file's rows of the same range with the ref's params
        source = csv_window(sources[ref["model_key"]], ref["data_range_start"], ref["data_range_end"])
        assert source.checksum() == ref["window_checksum"]
        assert hashlib.sha256(build_input(source, ref["norm_params"]).tobytes()).hexdigest() == a["input_sha256"]
        p = ref["action_probs"]
        assert np.max(np.abs(np.array(a["probs"]) - np.array([p["buy"], p["sell"], p["hold"]]))) < 1e-6


def publish_version(platform: PlatformSettings, store: Store, key: str, version: int, seed: int) -> None:
    """What the trainer does: checkpoint file, then the model_versions row, then the message."""
    path = store.checkpoint_dir() / key.replace(":", "_") / f"v{version}.pt"
    sha = save_checkpoint(path, TorchAdapter.from_model(init_model(seed)),
                          {"model_key": key, "version": version, "trained_jobs": 0})
    rel = str(path.relative_to(store.data_path))
    now = int(time.time() * 1000)
    store.record_model_version(key, version, rel, 0, {"loss": 1.0}, now)
    mv: ModelVersion = {"model_key": key, "version": version, "checkpoint_path": rel, "trained_jobs": 0,
                        "metrics": {"loss": 1.0}, "created_at": now, "checkpoint_sha256": sha,
                        "adapter": TorchAdapter.kind()}
    produce_records(platform, MODEL_VERSIONS, [(key, dict(mv))])


# -- tests ------------------------------------------------------------------------------------------
def test_refs_on_real_candles_reproducible_elsewhere_with_a_hot_reload(
        platform: PlatformSettings, platform_env: dict[str, str], tmp_path: Path) -> None:
    ensure_topics(platform)
    btc, eth = real_candles(BTC, limit=800), real_candles(ETH, limit=800)
    store = Store.from_settings(platform)
    try:
        store.append_candles(btc[:700] + eth[:700])  # ingest writes before it publishes
        produce_records(platform, CANDLES, interleave(btc[:700], eth[:700]))
        log = tmp_path / "inference.log"
        proc, port = start(platform_env, log)
        try:
            for s in ("BTCUSDT:1m", "ETHUSDT:1m"):
                wait_for(lambda s=s: refs_of(port, s) >= 101, f"the first 101 refs of {s}", proc, log)  # type: ignore[misc]
            publish_version(platform, store, "BTCUSDT:1m", 1, seed=1)
            wait_for(lambda: metric(port, 'reftrain_inference_model_version{model_key="BTCUSDT:1m"}') == 1,
                     "the hot reload", proc, log)
            store.append_candles(btc[700:] + eth[700:])
            produce_records(platform, CANDLES, interleave(btc[700:], eth[700:]))
            for s in ("BTCUSDT:1m", "ETHUSDT:1m"):
                wait_for(lambda s=s: refs_of(port, s) >= 201, f"all refs of {s}", proc, log)  # type: ignore[misc]
            m = scrape(port)
        finally:
            code = stop_gracefully(proc)
        assert code == 0, log.read_text()[-3000:]
    finally:
        store.close()

    for s in ("BTCUSDT:1m", "ETHUSDT:1m"):
        assert m[f'reftrain_inference_waiting_for_history_total{{series="{s}"}}'] == 599
        assert m[f'reftrain_inference_refs_total{{series="{s}"}}'] == 201
    assert m['reftrain_inference_model_version{model_key="ETHUSDT:1m"}'] == 0
    assert m["reftrain_inference_latency_seconds_count"] == 402
    # the backlog was predicted many windows per forward pass, not one by one
    assert m["reftrain_inference_batch_size_sum"] == 402
    assert m['reftrain_inference_batch_size_bucket{le="32.0"}'] < m["reftrain_inference_batch_size_count"]

    refs, msgs = read_refs(platform, expect=402)
    assert len(refs) == 402 and len({r["inference_id"] for r in refs}) == 402
    sources = {"BTCUSDT:1m": btc, "ETHUSDT:1m": eth}
    by_series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for msg, ref in zip(msgs, refs, strict=True):
        validate_inference_ref(ref)
        assert msg.key().decode() == ref["model_key"] == f"{ref['symbol']}:{ref['timeframe']}"
        assert len(msg.value()) < 500  # vs 600 x 5 float64 = 24 000 bytes of raw window
        by_series[ref["model_key"]].append(ref)
    for key, candles in sources.items():
        got = by_series[key]  # one partition per series: topic order is production order
        # exactly one ref per candle from the 600th on: nothing dropped, nothing twice
        assert [r["data_range_end"] for r in got] == [c["open_time"] for c in candles[599:]]
        for i, r in zip(range(599, 800), got, strict=True):
            assert r["window_size"] == WINDOW and r["data_range_start"] == candles[i - 599]["open_time"]
            assert r["target_timestamp"] == r["data_range_end"] + MIN
            assert r["inference_id"] == inference_id(key, r["data_range_end"], key, r["model_version"])
    # the ModelVersion arrived after candle 699 was predicted and before candle 700
    assert [r["model_version"] for r in by_series["BTCUSDT:1m"]] == [0] * 101 + [1] * 100
    assert {r["model_version"] for r in by_series["ETHUSDT:1m"]} == {0}

    assert_reproducible(platform, refs, sources, tmp_path)


def test_a_series_with_a_missing_bar(platform: PlatformSettings, platform_env: dict[str, str],
                                     tmp_path: Path) -> None:
    """While the missing bar is inside the window, a ref covers 600 rows over 601 bars; the trainer's
    re-read of the range returns exactly those 600 rows. Horizon 2 bars (configurable)."""
    ensure_topics(platform)
    ltc = real_candles(LTC_GAP, limit=1100)
    assert ltc[492]["open_time"] - ltc[491]["open_time"] == 2 * MIN
    store = Store.from_settings(platform)
    try:
        store.append_candles(ltc)
    finally:
        store.close()
    produce_records(platform, CANDLES, interleave(ltc))
    log = tmp_path / "inference.log"
    proc, port = start(platform_env, log, INFERENCE_HORIZON="2")
    try:
        wait_for(lambda: refs_of(port, "LTCUSD:1m") >= 501, "all refs", proc, log)
        m = scrape(port)
    finally:
        code = stop_gracefully(proc)
    assert code == 0, log.read_text()[-3000:]
    assert m['reftrain_inference_waiting_for_history_total{series="LTCUSD:1m"}'] == 599
    assert m['reftrain_inference_gapped_windows_total{series="LTCUSD:1m"}'] == 492  # rows 599..1090

    refs, _ = read_refs(platform, expect=501)
    assert [r["data_range_end"] for r in refs] == [c["open_time"] for c in ltc[599:]]
    for i, r in zip(range(599, 1100), refs, strict=True):
        spanned = (r["data_range_end"] - r["data_range_start"]) // MIN + 1
        assert r["window_size"] == WINDOW
        assert r["data_range_start"] == ltc[i - 599]["open_time"]  # 600 rows back, not 600 bars
        assert spanned == (601 if i <= 1090 else 600)
        assert r["target_timestamp"] == r["data_range_end"] + 2 * MIN
    # the re-read in another process, with and without the gap in the range
    assert_reproducible(platform, refs, {"LTCUSD:1m": ltc}, tmp_path, direct_every=25)
