"""The batch oracle on hand-made cases: if it were wrong, the engine tests would prove nothing."""

from __future__ import annotations

import hashlib
from typing import Any

from reftrain.records import Candle, InferenceRef, Pivot, inference_id, pivot_id
from services.coordinator.join_config import JoinConfig
from services.coordinator.oracle import batch_join

BAR = 60_000
T0 = 1_758_499_200_000
CFG = JoinConfig(pivot_window_ms=2 * BAR, max_pivot_confirmation_bars=3)


def t(i: int) -> int:
    return T0 + i * BAR


def ref(i: int, target: int | None = None, symbol: str = "BTCUSDT", **extra: Any) -> InferenceRef:
    series = f"{symbol}:1m"
    r: dict[str, Any] = {
        "inference_id": inference_id(series, t(i), series, 0),
        "model_key": series,
        "model_version": 0,
        "symbol": symbol,
        "timeframe": "1m",
        "data_range_start": t(i - 599),
        "data_range_end": t(i),
        "window_size": 600,
        "window_checksum": "synthetic",
        "norm_params": {"scheme": "none", "params": {}},
        "predicted_action": "HOLD",
        "action_probs": {"buy": 0.2, "sell": 0.2, "hold": 0.6},
        "predicted_candle": None,
        "confidence": 0.6,
        "target_timestamp": t(i + 1) if target is None else target,
        "created_at": 0,
    }
    r.update(extra)
    return r  # type: ignore[return-value]


def candle(i: int, symbol: str = "BTCUSDT", close: float = 100.0) -> Candle:
    return {
        "symbol": symbol,
        "timeframe": "1m",
        "open_time": t(i),
        "close_time": t(i) + BAR - 1,
        "open": 100.0,
        "high": max(100.0, close),
        "low": min(100.0, close),
        "close": close,
        "volume": 1.0,
        "trades": None,
        "source": "test",
    }


def pivot(pt: int, ca: int, symbol: str = "BTCUSDT", price: float = 101.0) -> Pivot:
    return {
        "pivot_id": pivot_id(f"{symbol}:1m", 1, "HIGH", t(pt)),
        "symbol": symbol,
        "timeframe": "1m",
        "level": 1,
        "kind": "HIGH",
        "pivot_time": t(pt),
        "price": price,
        "confirmed_at": t(ca),
        "strength": 2,
    }


def summary(jobs: list[Any]) -> set[tuple[str, int, int | None]]:
    """(trigger, ref time, candle open_time or pivot_time) of each job."""
    out = set()
    for j in jobs:
        other = j["actual_candle"]["open_time"] if j["trigger"] == "CANDLE" else j["pivot"]["pivot_time"]
        out.add((j["trigger"], j["ref"]["data_range_end"], other))
    return out


def test_candle_jobs_need_the_exact_target_candle_of_the_same_series() -> None:
    jobs = batch_join(
        [ref(0), ref(1), ref(2, target=t(4))], [candle(1), candle(3), candle(2, symbol="ETHUSDT")], [], CFG
    )
    assert summary(jobs) == {("CANDLE", t(0), t(1))}


def test_pivot_window_is_inclusive_and_per_series() -> None:
    refs = [ref(i) for i in range(0, 8)] + [ref(5, symbol="ETHUSDT")]
    jobs = batch_join(refs, [], [pivot(5, 7)], CFG)
    assert summary(jobs) == {("PIVOT", t(i), t(5)) for i in (3, 4, 5, 6, 7)}


def test_slow_pivots_are_dropped_and_window_edges_hold() -> None:
    assert batch_join([ref(5)], [], [pivot(5, 9)], CFG) == []  # 4 bars > D = 3
    assert len(batch_join([ref(5)], [], [pivot(5, 8)], CFG)) == 1
    assert batch_join([ref(5)], [], [pivot(5, 4)], CFG) == []  # confirmed before the pivot: invalid


def test_first_valid_occurrence_wins() -> None:
    first, second = ref(0, confidence=0.1), ref(0, confidence=0.9)
    jobs = batch_join([ref(0, target=t(0)), first, second], [candle(1), candle(1, close=120.0)], [], CFG)
    assert len(jobs) == 1
    target = jobs[0]["actual_candle"]
    assert target is not None and target["close"] == 100.0 and jobs[0]["ref"]["confidence"] == 0.1
    jobs = batch_join([ref(0)], [], [pivot(1, 3, price=1.0), pivot(1, 4, price=2.0)], CFG)
    assert [j["pivot"]["price"] for j in jobs] == [1.0]  # type: ignore[index]


def test_ids_content_and_order() -> None:
    r = ref(3)
    p = pivot(4, 6)
    jobs = batch_join([r], [candle(4)], [p], CFG, created_at=42)
    assert [j["job_id"] for j in jobs] == sorted(j["job_id"] for j in jobs)
    by_trigger = {j["trigger"]: j for j in jobs}

    def sha(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    assert by_trigger["CANDLE"]["job_id"] == sha(f"{r['inference_id']}|CANDLE|{t(4)}")
    assert by_trigger["PIVOT"]["job_id"] == sha(f"{r['inference_id']}|PIVOT|{p['pivot_id']}")
    assert by_trigger["PIVOT"]["pivot"] == p and by_trigger["PIVOT"]["actual_candle"] is None
    assert all(j["created_at"] == 42 and j["model_key"] == r["model_key"] and j["ref"] == r for j in jobs)
