"""A window of candles as columnar numpy arrays, and THE window checksum.

One definition, used by inference (when it logs a reference) and by the trainer (when it
re-reads the referenced range): sha256 over the little-endian int64 open times followed by the
little-endian float64 OHLCV matrix in row-major order. Any changed, missing or extra row changes it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

COLUMNS = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True)
class Window:
    """Candles of one series, sorted by open_time: ``values[:, i]`` is COLUMNS[i]."""

    symbol: str
    timeframe: str
    open_time: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape[1] != len(COLUMNS):
            raise ValueError(f"values must be (n, {len(COLUMNS)}), got {self.values.shape}")
        if self.open_time.shape[0] != self.values.shape[0]:
            raise ValueError("open_time and values differ in length")

    def __len__(self) -> int:
        return int(self.open_time.shape[0])

    @property
    def start(self) -> int:
        return int(self.open_time[0])

    @property
    def end(self) -> int:
        return int(self.open_time[-1])

    def checksum(self) -> str:
        return window_checksum(self.open_time, self.values)

    def slice_range(self, start: int, end: int) -> Window:
        """Rows with start <= open_time <= end (binary search; no copy of the arrays)."""
        lo = int(np.searchsorted(self.open_time, start, side="left"))
        hi = int(np.searchsorted(self.open_time, end, side="right"))
        return Window(self.symbol, self.timeframe, self.open_time[lo:hi], self.values[lo:hi])

    def tail(self, n: int) -> Window:
        return Window(self.symbol, self.timeframe, self.open_time[-n:], self.values[-n:])


def window_checksum(open_time: npt.NDArray[np.int64], values: npt.NDArray[np.float64]) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(open_time, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(values, dtype="<f8").tobytes())
    return h.hexdigest()
