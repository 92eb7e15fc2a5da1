"""Which candles a prediction reads: window selection, gap accounting, the read plan and the target.

Pure (numpy only, no Kafka, no store, no torch), so the rules below are unit-tested directly.

Window of a candle ``c`` of series ``s`` (the candle that just closed; its open_time is the
inference time ``T``)::

    window(c) = the last ``window_size`` rows of ``s`` in the store with open_time <= T

* **No look-ahead.** Rows are bounded by ``open_time <= T`` and the last row must BE the candle at
  ``T`` (ingest writes before it publishes, docs/semantics.md rule 1). The target candle, ``T + horizon`` bars, is
  strictly after ``T`` (``horizon >= 1``), so it can never be in its own window.
* **Never padded.** With fewer than ``window_size`` rows at or before ``T`` there is no prediction:
  the service waits for more history (``WAITING``, counted), nothing is filled in.
* **Gaps.** A window is ``window_size`` *rows*, not bars. When the exchange skipped bars inside it,
  the window reaches further back: ``data_range_start`` is the open_time of its first row, so the
  range ``[data_range_start, data_range_end]`` spans ``bars_spanned = (end - start) / bar + 1``
  bars, which is ``window_size + missing_bars``. The ref's ``window_size`` (row count) and range
  therefore tell the truth, and re-reading the range returns exactly those rows (and the same
  checksum) unless a missing bar is later back-filled; the trainer's row-count check (semantics rule 4)
  then rejects the ref. Nothing is interpolated: the model sees the rows as they are.
* **Target across a gap.** ``target_timestamp = T + horizon * bar`` in calendar bars, not "the
  horizon-th next row": the prediction is about a point in time. If the exchange never produces
  that bar, the CANDLE join never fires and the ref expires (semantics rule 7) or joins a pivot.
* **Missing candle.** If the newest row at or before ``T`` is not ``T`` itself, the candle is not in
  the store (an ingest that published before writing): ``NOT_IN_STORE``, counted, no ref, because
  a window ending earlier would claim an inference time the model never saw.

Read plan: a transaction often holds many candles of one series (catch-up after a restart). Instead
of one store query per candle, the candles of a series are grouped so that one ``read_last(n, end)``
per group covers every window of the group (see ``plan_reads`` for why ``n`` is enough).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reftrain.window import Window

DEFAULT_MAX_READ_ROWS = 20_000
"""Largest block one read may fetch; a longer catch-up span is split into several reads."""


class Outcome(enum.Enum):
    OK = "predicted"
    WAITING = "waiting_for_history"
    NOT_IN_STORE = "not_in_store"


@dataclass(frozen=True)
class Selection:
    """Result of ``select_window``: ``window`` is set only when ``outcome`` is OK."""

    outcome: Outcome
    window: Window | None = None
    rows_available: int = 0


@dataclass(frozen=True)
class ReadPlan:
    """One store read: the last ``n`` rows with open_time <= ``end``, serving the candles ``times``."""

    n: int
    end: int
    times: tuple[int, ...]


def target_timestamp(data_range_end: int, bar_ms: int, horizon: int) -> int:
    """open_time of the candle whose close resolves the prediction: ``horizon`` calendar bars on."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1 bar (no look-ahead), got {horizon}")
    return data_range_end + horizon * bar_ms


def bars_spanned(start: int, end: int, bar_ms: int) -> int:
    """Bars from ``start`` to ``end`` inclusive (both aligned open times)."""
    if end < start or (end - start) % bar_ms:
        raise ValueError(f"range [{start}, {end}] is not a whole number of {bar_ms} ms bars")
    return (end - start) // bar_ms + 1


def missing_bars(window: Window, bar_ms: int) -> int:
    """Bars inside the window's range that have no row: ``bars_spanned - rows``."""
    if len(window) == 0:
        return 0
    return bars_spanned(window.start, window.end, bar_ms) - len(window)


def select_window(block: Window, end: int, window_size: int) -> Selection:
    """The window of the candle at ``end`` out of ``block`` (rows sorted by open_time).

    ``block`` must hold, for this ``end``, either at least ``window_size`` rows at or before
    ``end`` or every row of the series at or before ``end`` (``plan_reads`` guarantees one of them);
    then "fewer rows" really means "not enough history yet".
    """
    hi = int(np.searchsorted(block.open_time, end, side="right"))
    if hi == 0 or int(block.open_time[hi - 1]) != end:
        return Selection(Outcome.NOT_IN_STORE, rows_available=hi)
    if hi < window_size:
        return Selection(Outcome.WAITING, rows_available=hi)
    lo = hi - window_size
    window = Window(block.symbol, block.timeframe, block.open_time[lo:hi], block.values[lo:hi])
    return Selection(Outcome.OK, window, rows_available=hi)


def plan_reads(times: Sequence[int], window_size: int, bar_ms: int,
               max_rows: int = DEFAULT_MAX_READ_ROWS) -> list[ReadPlan]:
    """Group the open times of one series' candles into reads of ``read_last(n, end)``.

    For a group with first and last candle ``t1 <= tk``, ``n = window_size + (tk - t1) / bar`` and
    ``end = tk``. Why that is enough for every ``ti`` of the group: at most ``(tk - ti) / bar`` rows
    lie in ``(ti, tk]`` (open times are unique and aligned), so if the read returns all ``n`` rows,
    at least ``n - (tk - ti) / bar >= window_size`` of them are ``<= ti``; if it returns fewer, it
    returned every row ``<= tk`` and so every row ``<= ti``. Groups are cut where ``n`` would exceed
    ``max_rows`` (a long catch-up or a big outage between two candles of one batch).
    """
    ordered = sorted(set(times))
    plans: list[ReadPlan] = []
    group: list[int] = []
    for t in ordered:
        if group and window_size + (t - group[0]) // bar_ms > max(max_rows, window_size):
            plans.append(ReadPlan(window_size + (group[-1] - group[0]) // bar_ms, group[-1], tuple(group)))
            group = []
        group.append(t)
    if group:
        plans.append(ReadPlan(window_size + (group[-1] - group[0]) // bar_ms, group[-1], tuple(group)))
    return plans
