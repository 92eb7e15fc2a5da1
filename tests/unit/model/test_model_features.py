"""Normalisation scheme logret-v1: reproducible input, small params, exact inverse mapping."""

from __future__ import annotations

import hashlib
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import fastavro
import numpy as np
import pytest

from reftrain.model.features import (
    CLIP,
    N_FEATURES,
    PARAM_KEYS,
    SCHEME,
    VOLUME_EPS,
    build_input,
    candle_logrets,
    compute_norm_params,
    decode_candle,
)
from reftrain.records import NormParams
from reftrain.window import Window

ROOT = Path(__file__).resolve().parents[3]


def _window(w: Window, end: int, n: int = 600) -> Window:
    return Window(w.symbol, w.timeframe, w.open_time[end - n : end], w.values[end - n : end])


def test_norm_params_are_small_finite_and_named(btc_1m: Window) -> None:
    win = _window(btc_1m, 1000)
    np_ = compute_norm_params(win)
    assert np_["scheme"] == SCHEME
    assert tuple(sorted(np_["params"])) == tuple(sorted(PARAM_KEYS))
    assert len(np_["params"]) == 5
    assert all(type(v) is float and math.isfinite(v) for v in np_["params"].values())
    assert np_["params"]["last_close"] == win.values[-1, 3]
    assert np_["params"]["first_ref_close"] == win.values[0, 0]
    with_prev = compute_norm_params(win, prev_close=float(btc_1m.values[399, 3]))
    assert with_prev["params"]["first_ref_close"] == btc_1m.values[399, 3]


def test_a_whole_ref_with_these_params_stays_a_few_hundred_bytes(btc_1m: Window) -> None:
    schema = fastavro.parse_schema(json.loads((ROOT / "schemas" / "inference_ref.avsc").read_text()))
    win = _window(btc_1m, 1000)
    ref = {
        "inference_id": "0" * 32,
        "model_key": "BTCUSDT:1m",
        "model_version": 0,
        "symbol": "BTCUSDT",
        "timeframe": "1m",
        "data_range_start": win.start,
        "data_range_end": win.end,
        "window_size": len(win),
        "window_checksum": win.checksum(),
        "norm_params": compute_norm_params(win),
        "predicted_action": "HOLD",
        "action_probs": {"buy": 0.25, "sell": 0.25, "hold": 0.5},
        "predicted_candle": {"open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5},
        "confidence": 0.5,
        "target_timestamp": win.end + 60_000,
        "created_at": 0,
    }
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, ref)
    assert len(buf.getvalue()) < 512
    buf.seek(0)
    decoded = fastavro.schemaless_reader(buf, schema)
    assert isinstance(decoded, dict) and decoded["norm_params"] == ref["norm_params"]


def test_build_input_matches_the_documented_formula(btc_1m: Window) -> None:
    win = _window(btc_1m, 2000)
    params = compute_norm_params(win, prev_close=float(btc_1m.values[1399, 3]))
    x = build_input(win, params)
    assert x.dtype == np.float32 and x.shape == (600, N_FEATURES) and x.flags.c_contiguous
    assert np.all(np.isfinite(x)) and np.all(np.abs(x) <= CLIP)
    p = params["params"]
    v = win.values
    i = 123
    expect = [math.log(v[i, k] / v[i - 1, 3]) / p["ret_scale"] for k in range(4)]
    expect.append((math.log(v[i, 4] + VOLUME_EPS) - p["logvol_mean"]) / p["logvol_std"])
    np.testing.assert_allclose(x[i], np.array(expect, dtype=np.float32), rtol=1e-6, atol=1e-6)
    first = [math.log(v[0, k] / p["first_ref_close"]) / p["ret_scale"] for k in range(4)]
    np.testing.assert_allclose(x[0, :4], first, rtol=1e-6, atol=1e-6)
    # Standardised: close returns have unit std, log volume zero mean (before clipping).
    assert abs(float(np.std(x[1:, 3])) - 1.0) < 0.05
    assert abs(float(np.mean(x[:, 4]))) < 0.05


def test_build_input_is_bit_for_bit_reproducible_in_process(btc_1m: Window) -> None:
    win = _window(btc_1m, 3000)
    params = compute_norm_params(win)
    a = build_input(win, params).tobytes()
    copy = Window(win.symbol, win.timeframe, win.open_time.copy(), win.values.copy())
    b = build_input(copy, compute_norm_params(copy)).tobytes()
    assert a == b


_CHILD = """
import hashlib, json, sys
import numpy as np
from reftrain.model.features import build_input, compute_norm_params
from reftrain.window import Window
d = np.load(sys.argv[1])
w = Window("BTCUSDT", "1m", d["open_time"], d["values"])
given = json.loads(sys.argv[2])
own = compute_norm_params(w)
digest = hashlib.sha256(build_input(w, given).tobytes()).hexdigest()
print(json.dumps({"own_params": own, "from_given": digest, "torch_loaded": "torch" in sys.modules}))
"""


def test_build_input_is_bit_for_bit_reproducible_in_another_process(btc_1m: Window, tmp_path: Path) -> None:
    """The trainer's process must rebuild exactly the bytes inference's process fed the model."""
    win = _window(btc_1m, 3500)
    params = compute_norm_params(win, prev_close=float(btc_1m.values[2899, 3]))
    np.savez(tmp_path / "w.npz", open_time=win.open_time, values=win.values)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "w.npz"), json.dumps(params)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=60,
    )
    child = json.loads(out.stdout)
    assert child["from_given"] == hashlib.sha256(build_input(win, params).tobytes()).hexdigest()
    assert child["own_params"] == compute_norm_params(win)
    assert child["torch_loaded"] is False, "normalising a window must not import torch"


def test_build_input_refuses_params_of_another_window_or_scheme(btc_1m: Window) -> None:
    win = _window(btc_1m, 1000)
    other = compute_norm_params(_window(btc_1m, 1001))
    with pytest.raises(ValueError, match="last_close"):
        build_input(win, other)
    good = compute_norm_params(win)
    with pytest.raises(ValueError, match="scheme"):
        build_input(win, {"scheme": "zscore-v9", "params": good["params"]})
    bad: NormParams = {"scheme": SCHEME, "params": {**good["params"], "ret_scale": float("nan")}}
    with pytest.raises(ValueError, match="finite"):
        build_input(win, bad)
    missing: NormParams = {"scheme": SCHEME, "params": {"last_close": good["params"]["last_close"]}}
    with pytest.raises(ValueError, match="lacks"):
        build_input(win, missing)


def test_flat_window_with_zero_volume_stays_finite() -> None:
    n = 50
    values = np.tile(np.array([100.0, 100.0, 100.0, 100.0, 0.0]), (n, 1))
    win = Window("X", "1h", np.arange(n, dtype=np.int64) * 3_600_000, values)
    params = compute_norm_params(win)
    assert all(math.isfinite(v) and abs(v) < 1e3 for v in params["params"].values())
    x = build_input(win, params)
    assert np.all(x[:, :4] == 0.0) and np.all(np.abs(x[:, 4]) < 1e-6)
    one = Window("X", "1h", np.array([0], dtype=np.int64), np.array([[10.0, 11.0, 9.0, 10.5, 3.0]]))
    assert np.all(np.isfinite(build_input(one, compute_norm_params(one))))


def test_non_positive_or_non_finite_window_is_refused() -> None:
    values = np.array([[1.0, 2.0, 0.5, 1.5, 1.0], [1.5, 2.0, 0.0, 1.0, 1.0]])
    win = Window("X", "1m", np.array([0, 60_000], dtype=np.int64), values)
    with pytest.raises(ValueError):
        compute_norm_params(win)


def test_predicted_candle_inverse_mapping_round_trips(btc_1m: Window) -> None:
    win = _window(btc_1m, 2500)
    params = compute_norm_params(win)
    nxt = btc_1m.values[2500]
    z = candle_logrets(params, *map(float, nxt[:4]))
    back = decode_candle(z, params)
    got = (back["open"], back["high"], back["low"], back["close"])
    for k in range(4):
        assert got[k] == pytest.approx(float(nxt[k]), rel=1e-12)
    # A zero head output means "the next candle is the last close".
    flat = decode_candle(np.zeros(4), params)
    assert set(flat.values()) == {params["params"]["last_close"]}


def test_decoded_candle_is_always_a_valid_candle(btc_1m: Window) -> None:
    params = compute_norm_params(_window(btc_1m, 700))
    rng = np.random.default_rng(3)
    for z in rng.normal(scale=3.0, size=(200, 4)):
        c = decode_candle(z, params)
        assert c["high"] >= max(c["open"], c["close"]) >= min(c["open"], c["close"]) >= c["low"] > 0
    with pytest.raises(ValueError):
        decode_candle(np.zeros(3), params)
