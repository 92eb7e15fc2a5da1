"""Fixtures of the trainer unit tests: real candles, an in-memory store with the Store's read and
model-version API, and one torch thread (on a busy 2-core box more threads only spin)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch

from reftrain.records import Candle
from tests.support import real_candles
from tests.unit.trainer.trainer_synth import BTC_1M, ETH_1H, MemStore


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture(scope="session")
def btc() -> Sequence[Candle]:
    """1000 real Binance BTCUSDT 1m candles (no gaps)."""
    return real_candles(BTC_1M, limit=1000)


@pytest.fixture(scope="session")
def eth_1h() -> Sequence[Candle]:
    """700 real Binance ETHUSDT 1h candles from Aug 2017 (one 8-hour exchange gap after row 399)."""
    return real_candles(ETH_1H, limit=700)


@pytest.fixture
def mem_store(tmp_path: Path, btc: Sequence[Candle], eth_1h: Sequence[Candle]) -> MemStore:
    return MemStore(tmp_path / "lake", [*btc, *eth_1h])
