"""Shared fixtures of the ingest unit tests: the real candle files of data/, read once."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import pytest

from reftrain.records import Candle
from services.ingest.sources import RowError, read_candles

DATA_DIR = Path(__file__).resolve().parents[3] / "data"


@functools.cache
def _load(name: str) -> tuple[Candle, ...]:
    items = list(read_candles(DATA_DIR / name))
    bad = [i for i in items if isinstance(i, RowError)]
    assert not bad, bad[:3]
    return tuple(i for i in items if not isinstance(i, RowError))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


@pytest.fixture(scope="session")
def load_real() -> Callable[[str], list[Candle]]:
    """Candles of one real file (fresh list of fresh dicts, so tests may mutate them)."""

    def load(name: str) -> list[Candle]:
        return [Candle(**c) for c in _load(name)]

    return load
