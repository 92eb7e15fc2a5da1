"""The adapter interface: loading by import path, the checkpoint container (adapter/scheme and
sha256 refusals), the torch-free linear adapter, calibration, and the one label rule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reftrain import labels
from reftrain.adapters import (
    DEFAULT_ADAPTER,
    AdapterMismatchError,
    CandleExample,
    ChecksumMismatchError,
    PivotExample,
    fit_temperature,
    load_adapter,
    load_checkpoint,
    save_checkpoint,
    softmax,
)
from reftrain.adapters.linear import LinearAdapter
from reftrain.errors import ConfigError
from reftrain.model.adapter import TorchAdapter
from reftrain.window import Window

LINEAR = "reftrain.adapters.linear:LinearAdapter"


def test_adapters_load_by_import_path_and_a_bad_setting_is_a_clear_config_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL_ADAPTER", raising=False)
    assert load_adapter() is TorchAdapter and DEFAULT_ADAPTER.endswith(":TorchAdapter")
    monkeypatch.setenv("MODEL_ADAPTER", LINEAR)
    assert load_adapter() is LinearAdapter
    for bad, why in (("reftrain.adapters.linear", "package.module:Class"), ("no.such.module:X", "cannot import"),
                     ("reftrain.labels:window_vol", "not a TrainingAdapter")):
        with pytest.raises(ConfigError, match=why):
            load_adapter(bad)


def test_the_linear_adapter_imports_no_torch() -> None:
    code = ("import sys, reftrain.adapters.linear, reftrain.labels; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def _examples(adapter: LinearAdapter | TorchAdapter, w: Window, ts: range) -> list[CandleExample]:
    out = []
    for t in ts:
        win = Window(w.symbol, w.timeframe, w.open_time[t - 600:t], w.values[t - 600:t])
        params = adapter.norm_params(win)
        closes = win.values[:, 3]
        nxt = dict(zip(("open", "high", "low", "close"), map(float, w.values[t, :4]), strict=True))
        action = labels.action_label(float(closes[-1]), nxt["close"], labels.window_vol(closes))
        out.append(CandleExample(str(t), adapter.features(win, params), params, nxt, labels.ACTION_INDEX[action]))
    return out


@pytest.mark.parametrize("cls", [LinearAdapter, TorchAdapter])
def test_checkpoint_round_trip_and_refusals(tmp_path: Path, btc_1m: Window, cls: type) -> None:
    adapter = cls.create(0, "cpu")
    batch = _examples(adapter, btc_1m, range(700, 716))
    adapter.train_candle(batch)
    piv = [PivotExample(e.job_id, e.x, e.norm_params, {"kind": "LOW", "level": 1}, 0) for e in batch[:4]]
    adapter.train_pivot(piv)
    sha = save_checkpoint(tmp_path / "c.ckpt", adapter, {"model_key": "BTCUSDT:1m", "version": 3})
    loaded, meta = load_checkpoint(tmp_path / "c.ckpt", cls, "cpu", expected_sha256=sha)
    assert meta["version"] == 3 and type(loaded) is cls
    x = np.stack([e.x for e in batch])
    params = [e.norm_params for e in batch]
    for a, b in zip(adapter.predict(x, params), loaded.predict(x, params), strict=True):
        assert a.probs == b.probs and a.candle == b.candle and dict(a.heads) == dict(b.heads)
        assert abs(sum(a.probs.values()) - 1) < 1e-9 and a.candle is not None
        assert a.candle["high"] >= max(a.candle["open"], a.candle["close"]) >= a.candle["low"] > 0
        assert set(a.heads) == {"pivot_future_low", "pivot_future_high", "pivot_past"}
    other = TorchAdapter if cls is LinearAdapter else LinearAdapter
    with pytest.raises(AdapterMismatchError, match=f"{cls.name}.*{cls.scheme}.*{other.name}"):
        load_checkpoint(tmp_path / "c.ckpt", other)
    with pytest.raises(ChecksumMismatchError):
        load_checkpoint(tmp_path / "c.ckpt", cls, expected_sha256="ab" * 32)
    # features refuse params of another scheme (a ref made by the other adapter)
    win = Window("BTCUSDT", "1m", btc_1m.open_time[100:700], btc_1m.values[100:700])
    with pytest.raises(ValueError, match="scheme"):
        adapter.features(win, other.create(0, "cpu").norm_params(win))


def test_linear_adapter_learns_on_real_candles_deterministically(btc_1m: Window) -> None:
    def run() -> LinearAdapter:
        a = LinearAdapter.create()
        for i in range(0, len(train), 32):
            a.train_candle(train[i:i + 32])
        return a
    train = _examples(LinearAdapter.create(), btc_1m, range(600, 3000))
    a, b = run(), run()
    assert a.save_state() == b.save_state()
    # held-out later data: lower log loss than the class prior of the training labels
    test = _examples(a, btc_1m, range(3000, len(btc_1m)))
    p = np.array([[q.probs["buy"], q.probs["sell"], q.probs["hold"]]
                  for q in a.predict(np.stack([e.x for e in test]), [e.norm_params for e in test])])
    y = np.array([e.action for e in test])
    ll = -np.mean(np.log(p[np.arange(len(y)), y]))
    prior = np.bincount([e.action for e in train], minlength=3) / len(train)
    print(f"\n[linear] held-out log loss {ll:.4f} vs class prior {-np.mean(np.log(prior[y])):.4f}")
    assert ll < -np.mean(np.log(prior[y]))
    assert 0.25 <= a.temperature <= 8.0


def test_fit_temperature_recovers_an_overconfident_models_temperature() -> None:
    """Synthetic on purpose: real data has no known true temperature."""
    rng = np.random.default_rng(0)
    true = rng.normal(0, 1.0, (4000, 3))
    y = np.array([rng.choice(3, p=p) for p in softmax(true)])
    assert fit_temperature(true * 2.5, y) == pytest.approx(2.5, rel=0.1)
    assert fit_temperature(true, y) == pytest.approx(1.0, rel=0.1)


def test_label_rule_band_is_relative_to_the_windows_volatility() -> None:
    assert labels.window_vol([100.0, 101.0, 100.0]) == pytest.approx(np.std(np.log([1.01, 1 / 1.01])))
    # the same 0.02% move is BUY in a quiet window and HOLD in a wild one
    assert labels.action_label(100.0, 100.02, vol=0.0001) == "BUY"
    assert labels.action_label(100.0, 100.02, vol=0.01) == "HOLD"
    assert labels.action_label(100.0, 99.98, vol=0.0001) == "SELL"
    band = labels.HOLD_BAND * 0.001
    assert labels.action_label(100.0, 100.0 * np.exp(band), vol=0.001) == "HOLD"  # at the band: HOLD
    end = 1_000_000
    assert labels.pivot_label(end, {"kind": "LOW", "level": 2, "pivot_time": end + 60_000}) == "FUTURE_LOW"
    assert labels.pivot_label(end, {"kind": "HIGH", "level": 1, "pivot_time": end + 1}) == "FUTURE_HIGH"
    assert labels.pivot_label(end, {"kind": "HIGH", "level": 3, "pivot_time": end}) == "PAST"  # inside the window
    assert labels.pivot_label(end, {"kind": "LOW", "level": 1, "pivot_time": end - 5}, min_level=2) is None
    with pytest.raises(ValueError):
        labels.pivot_label(end, {"kind": "MID", "level": 1, "pivot_time": end})
