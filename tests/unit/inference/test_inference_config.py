"""INFERENCE_* settings: defaults (docs/semantics.md, Records), parsing, and refusal of values that would break the
no-look-ahead rule or make refs the trainer cannot use."""

from __future__ import annotations

import pytest

from reftrain.errors import ConfigError
from services.inference import settings as config
from services.inference.spec import SPEC as INFERENCE_SPEC


def test_defaults_and_environment() -> None:
    s = config.load({})
    assert (s.window, s.horizon, s.device, s.torch_threads, s.series) == (600, 1, "", 1, ())
    s = config.load({"INFERENCE_WINDOW": "300", "INFERENCE_HORIZON": "3", "INFERENCE_DEVICE": "cpu",
                     "INFERENCE_TORCH_THREADS": "2", "INFERENCE_SERIES": "BTCUSDT:1m, ETHUSDT:1h"})
    assert (s.window, s.horizon, s.device, s.torch_threads, s.series) == (
        300, 3, "cpu", 2, ("BTCUSDT:1m", "ETHUSDT:1h"))
    assert INFERENCE_SPEC.group("t1-") == "t1-inference"


@pytest.mark.parametrize("env", [
    {"INFERENCE_HORIZON": "0"},  # the target would be the window's own last candle
    {"INFERENCE_WINDOW": "1"},
    {"INFERENCE_TORCH_THREADS": "0"},
    {"INFERENCE_SERIES": "BTCUSDT"},
    {"INFERENCE_SERIES": "BTCUSDT:2m"},
    {"INFERENCE_WINDOW": "many"},
])
def test_bad_settings_stop_the_service(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        config.load(env)
