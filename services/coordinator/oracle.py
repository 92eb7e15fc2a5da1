"""The offline batch join: the reference the streaming coordinator is checked against.

Written to be obviously right rather than fast (quadratic in refs x pivots), and independently of
``join.py``: it shares only the config knobs and ``reftrain.records``. The unit tests, the e2e report
and the fault tests compare the coordinator's output with ``batch_join`` over the same topics.

Rules (docs/semantics.md, rules 5-7; nothing here depends on arrival order or time):

* valid inputs only: a known timeframe; refs with target_timestamp > data_range_end; pivots with
  0 <= confirmed_at - pivot_time <= D (max_pivot_confirmation_bars of their timeframe, by default
  30 days of bars: far above the slowest level-5 pivot measured, so a late pivot of any level joins);
* nothing about memory: the engine's hot retention / archive split (hot_retention_bars) is not a
  rule here, so a pivot confirmed after a ref left the engine's in-memory state must still join it;
* per series, the first valid occurrence of each inference_id / candle open_time / pivot_id wins;
* CANDLE job for each ref whose series has a candle at open_time == target_timestamp;
* PIVOT job for each (ref, pivot) of the same series with |data_range_end - pivot_time| <= pivot window.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

from reftrain.records import TIMEFRAME_MS, Candle, InferenceRef, Pivot, TrainingJob, job_id, series_key
from services.coordinator.join_config import JoinConfig


def batch_join(
    refs: Iterable[InferenceRef],
    candles: Iterable[Candle],
    pivots: Iterable[Pivot],
    config: JoinConfig | None = None,
    *,
    created_at: int = 0,
) -> list[TrainingJob]:
    """Every training job the inputs define, sorted by job_id; ``created_at`` stamps them all."""
    config = config or JoinConfig()

    first_ref: dict[tuple[str, str], InferenceRef] = {}
    for r in refs:
        if r["timeframe"] in TIMEFRAME_MS and r["target_timestamp"] > r["data_range_end"]:
            first_ref.setdefault((series_key(r["symbol"], r["timeframe"]), r["inference_id"]), r)

    first_candle: dict[tuple[str, int], Candle] = {}
    for c in candles:
        if c["timeframe"] in TIMEFRAME_MS:
            first_candle.setdefault((series_key(c["symbol"], c["timeframe"]), c["open_time"]), c)

    first_pivot: dict[tuple[str, str], Pivot] = {}
    for p in pivots:
        if p["timeframe"] not in TIMEFRAME_MS:
            continue
        delay = p["confirmed_at"] - p["pivot_time"]
        if 0 <= delay <= config.max_confirmation(p["timeframe"]):
            first_pivot.setdefault((series_key(p["symbol"], p["timeframe"]), p["pivot_id"]), p)

    jobs: list[TrainingJob] = []
    for (series, iid), r in first_ref.items():
        target = first_candle.get((series, r["target_timestamp"]))
        if target is not None:
            jobs.append(
                {
                    "job_id": job_id(iid, "CANDLE", r["target_timestamp"]),
                    "model_key": r["model_key"],
                    "trigger": "CANDLE",
                    "ref": copy.deepcopy(r),
                    "actual_candle": copy.deepcopy(target),
                    "pivot": None,
                    "created_at": created_at,
                }
            )
        window = config.pivot_window(r["timeframe"])
        for (pivot_series, pid), p in first_pivot.items():
            if pivot_series == series and abs(p["pivot_time"] - r["data_range_end"]) <= window:
                jobs.append(
                    {
                        "job_id": job_id(iid, "PIVOT", pid),
                        "model_key": r["model_key"],
                        "trigger": "PIVOT",
                        "ref": copy.deepcopy(r),
                        "actual_candle": None,
                        "pivot": copy.deepcopy(p),
                        "created_at": created_at,
                    }
                )
    jobs.sort(key=lambda j: j["job_id"])
    return jobs
