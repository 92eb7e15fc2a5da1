"""Fixtures of the inference unit tests: real candles as Windows, an in-memory store, a recording
context, and one torch thread (on a busy 2-core box more threads only spin against each other)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from reftrain.errors import StoreError
from reftrain.records import Candle
from reftrain.streams import Record
from reftrain.topics import CANDLES, MODEL_VERSIONS
from reftrain.window import COLUMNS, Window
from tests.support import real_candles

BTC = "BTCUSDT-1m-2025-09-22_2025-09-25.csv"
ETH = "ETHUSDT-1m-2025-09-22_2025-09-25.csv"
LTC_GAP = "LTCUSD-1m-2018-04-05_2018-04-06.csv"  # one missing bar after row 491
BTC_1H = "BTCUSDT-1h-2017-08-17_2024-04-21.csv"  # exchange outages: 28 gaps


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def to_window(candles: Sequence[Candle]) -> Window:
    c0 = candles[0]
    return Window(c0["symbol"], c0["timeframe"], np.array([c["open_time"] for c in candles], dtype=np.int64),
                  np.array([[c[k] for k in COLUMNS] for c in candles], dtype=np.float64))  # type: ignore[literal-required]


class MemStore:
    """``read_last`` / ``latest_model_version`` / ``data_path`` of reftrain.store.Store, in memory.

    ``reads`` records every read_last call; ``fail`` makes reads raise StoreError.
    """

    def __init__(self, data_path: Path, candles: Sequence[Candle] = ()) -> None:
        self.data_path = str(data_path)
        self.rows: dict[tuple[str, str], dict[int, Candle]] = {}
        self.versions: dict[str, dict[str, Any]] = {}
        self.reads: list[tuple[str, str, int, int | None]] = []
        self.fail = False
        self.add(candles)

    def add(self, candles: Sequence[Candle]) -> None:
        for c in candles:
            self.rows.setdefault((c["symbol"], c["timeframe"]), {})[c["open_time"]] = c

    def read_last(self, symbol: str, timeframe: str, n: int, end: int | None = None,
                  start: int | None = None) -> Window:
        self.reads.append((symbol, timeframe, n, end))
        if self.fail:
            raise StoreError("catalog unavailable")
        rows = self.rows.get((symbol, timeframe), {})
        times = sorted(t for t in rows if (end is None or t <= end) and (start is None or t >= start))[-n:]
        if not times:
            return Window(symbol, timeframe, np.empty(0, np.int64), np.empty((0, 5)))
        return to_window([rows[t] for t in times])

    def latest_model_version(self, model_key: str) -> dict[str, Any] | None:
        if self.fail:
            raise StoreError("catalog unavailable")
        return self.versions.get(model_key)


class FakeCtx:
    """Records what a processor emits (topic, key, value)."""

    def __init__(self) -> None:
        self.partition = -1
        self.now_ms = 0
        self.emitted: list[tuple[str, str | None, dict[str, Any]]] = []

    def emit(self, topic: str, key: str | None, value: dict[str, Any], headers: Sequence[Any] = ()) -> None:
        self.emitted.append((topic, key, value))

    def refs(self) -> list[dict[str, Any]]:
        return [v for _, _, v in self.emitted]


def candle_record(c: Candle, offset: int = 0, partition: int = 0, key: str | None = None,
                  timestamp: int | None = None) -> Record:
    series = f"{c['symbol']}:{c['timeframe']}"
    return Record(CANDLES, series if key is None else key, dict(c), partition, offset,
                  c["close_time"] + 1 if timestamp is None else timestamp)


def model_version_record(model_key: str, version: int, path: str, offset: int = 0, partition: int = 0,
                         key: str | None = None, sha256: str | None = None, adapter: str | None = None) -> Record:
    created_at = 1_700_000_000_000 + version
    value = {"model_key": model_key, "version": version, "checkpoint_path": path, "trained_jobs": 10 * version,
             "metrics": {"loss": 1.0}, "created_at": created_at, "checkpoint_sha256": sha256, "adapter": adapter}
    return Record(MODEL_VERSIONS, model_key if key is None else key, value, partition, offset, created_at)


@pytest.fixture(scope="session")
def btc() -> list[Candle]:
    return real_candles(BTC, limit=1000)


@pytest.fixture(scope="session")
def eth() -> list[Candle]:
    return real_candles(ETH, limit=1000)


@pytest.fixture(scope="session")
def ltc() -> list[Candle]:
    return real_candles(LTC_GAP, limit=1200)
