"""Fixtures of the model tests: real BTCUSDT 1m candles and a bounded, restored torch setup."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from reftrain.window import Window

DATA = Path(__file__).resolve().parents[3] / "data" / "BTCUSDT-1m-2025-09-22_2025-09-25.csv"


@pytest.fixture(scope="session")
def btc_1m() -> Window:
    """The whole bundled 3-day BTCUSDT 1m file (Binance, no gaps) as one Window."""
    raw = np.loadtxt(DATA, delimiter=",", skiprows=1, dtype=np.float64)
    return Window("BTCUSDT", "1m", raw[:, 0].astype(np.int64), np.ascontiguousarray(raw[:, 1:6]))


@pytest.fixture(autouse=True)
def torch_state() -> Iterator[None]:
    """One intra-op thread; undo process-wide determinism flags after.

    On a 2-core box shared with other processes, 2 torch threads spin against each other and a
    training step gets ~9x slower (measured); 1 thread is fast and as deterministic.
    """
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
