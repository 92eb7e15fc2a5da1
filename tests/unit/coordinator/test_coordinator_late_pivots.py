"""Late pivots of any level (issue #14): a pivot confirmed after the refs near it left the engine's
in-memory (hot) state still joins each of them exactly once, from the compact archive, and the oracle
says the same.

Before this change the join dropped pivots slower than D = 500 bars (a level-4 HIGH took 823 bars in a
month of BTCUSDT 1m data), and the oracle encoded the same rule, so nothing noticed. Now D defaults to
30 days of bars (sized from the measured delays, docs/architecture.md) and a ref waits the part of D
past the hot retention H in a compressed archive.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from typing import Any, cast

from hypothesis import given, settings

from reftrain.records import TIMEFRAME_MS, InferenceRef
from services.coordinator.join import JoinEngine, decode_archive, parse_key
from services.coordinator.join_config import DEFAULT_HOT_RETENTION_BARS, JoinConfig
from services.coordinator.oracle import batch_join
from services.coordinator.settings import CoordinatorSettings
from services.pivots.detector import detect_pivots
from tests.support import real_candles
from tests.unit.coordinator.test_coordinator_join import (
    HYPO,
    KINDS,
    Item,
    Kind,
    Scenario,
    _drain,
    assert_matches_oracle,
    by_id,
    check_accounting,
    in_event_time_order,
    interleave,
    make_candle,
    make_pivot,
    make_ref,
    run,
    scenarios,
    t,
    topic_lists,
)

BAR = TIMEFRAME_MS["1m"]
# pw = 2 bars, D = 60 bars, S = 2 bars, H = 3 bars: refs are hot for 7 bars, archived for 58 more.
CFG = JoinConfig(pivot_window_ms=2 * BAR, max_pivot_confirmation_bars=60, max_lag_bars=2,
                 hot_retention_bars=3, archive_bucket_bars=4)


def test_level4_pivot_confirmed_after_hot_retention_joins_archived_refs_exactly_once() -> None:
    refs = [make_ref("BTCUSDT", "1m", t(i), t(i + 1)) for i in range(0, 30)]
    candles = [make_candle("BTCUSDT", "1m", t(i)) for i in range(0, 100)]
    late = make_pivot("BTCUSDT", "1m", t(10), t(45), level=4, kind="HIGH")  # 35 bars > H = 3
    early = make_pivot("BTCUSDT", "1m", t(20), t(22), level=1, kind="LOW")  # joined while hot
    topics: dict[tuple[str, Kind], list[Item]] = {
        ("BTCUSDT:1m", "candle"): [Item("candle", cast(dict[str, Any], c)) for c in candles],
        ("BTCUSDT:1m", "ref"): [Item("ref", cast(dict[str, Any], r)) for r in refs],
        ("BTCUSDT:1m", "pivot"): [Item("pivot", cast(dict[str, Any], p)) for p in (early, late)],
    }
    arrivals = in_event_time_order(topics)
    # Restore from the compacted changelog after the refs near the late pivot were archived and
    # before the pivot arrives: the archive must come back from the changelog.
    at = next(n for n, a in enumerate(arrivals) if a.kind == "candle" and a.rec["open_time"] == t(40))
    res = run(CFG, arrivals, restore_at=at, compacted=True, rng=random.Random(1))
    assert_matches_oracle(res, refs, candles, [early, late], CFG)
    check_accounting(res, arrivals)
    got = sorted(j["ref"]["data_range_end"] for j in res.jobs if j["pivot"] == late)
    assert got == [t(i) for i in range(8, 13)]  # |t(i) - t(10)| <= 2 bars, each exactly once
    assert res.counts["pivot.archive_joins"] == 5  # all five came from the archive, none was hot
    assert res.counts["ref.archived"] == len(refs)
    # pivot_jobs of an archived ref are kept: the expiry events report the late pivot's job too.
    expired = {e.id: e.detail["pivot_jobs"] for o in res.outputs for e in o.events if e.outcome == "expired"}
    assert len(expired) == len(refs)  # wm t(99) > t(29) + pw + D + S: every ref expired once
    assert expired[refs[10]["inference_id"]] == 1 and expired[refs[20]["inference_id"]] == 1
    assert res.engine is not None and res.engine.pending_refs == 0 and res.engine.state_counts()["archive_bucket"] == 0


def test_archive_changes_memory_not_jobs() -> None:
    """The same inputs with H = D (no archive) and H = 0 (everything archived at once) give the same jobs."""
    refs = [make_ref("BTCUSDT", "1m", t(i), t(i + 1)) for i in range(0, 40)]
    candles = [make_candle("BTCUSDT", "1m", t(i)) for i in range(0, 70)]
    pivots = [make_pivot("BTCUSDT", "1m", t(i), t(i + d), level=1 + d % 5, kind="HIGH" if d % 2 else "LOW")
              for i, d in ((5, 2), (9, 30), (12, 55), (20, 60), (21, 61), (33, 7))]
    pivots.sort(key=lambda p: p["confirmed_at"])
    topics: dict[tuple[str, Kind], list[Item]] = {
        ("BTCUSDT:1m", "candle"): [Item("candle", cast(dict[str, Any], c)) for c in candles],
        ("BTCUSDT:1m", "ref"): [Item("ref", cast(dict[str, Any], r)) for r in refs],
        ("BTCUSDT:1m", "pivot"): [Item("pivot", cast(dict[str, Any], p)) for p in pivots],
    }
    arrivals = in_event_time_order(topics)
    outcomes = []
    for h in (60, 0):
        cfg = dataclasses.replace(CFG, hot_retention_bars=h)
        res = run(cfg, arrivals)
        assert_matches_oracle(res, refs, candles, pivots, cfg)
        check_accounting(res, arrivals)
        outcomes.append((by_id(res.jobs), res.counts["pivot.slow_confirmation"], res.counts["pivot.archive_joins"]))
    assert outcomes[0][:2] == outcomes[1][:2]
    assert outcomes[0][1] == 1  # only the 61-bar pivot is slower than D = 60, in both
    assert outcomes[0][2] == 0 and outcomes[1][2] > 0


def test_oracle_joins_the_823_bar_level4_pivot_of_the_issue_under_the_service_defaults() -> None:
    cfg = CoordinatorSettings().join_config()
    ref = make_ref("BTCUSDT", "1m", t(0), t(1))
    pivot = make_pivot("BTCUSDT", "1m", t(2), t(2 + 823), level=4)
    assert [j["trigger"] for j in batch_join([ref], [], [pivot], cfg)] == ["PIVOT"]
    # The old rule (D = 500 bars) dropped it, in the engine and the oracle alike.
    assert batch_join([ref], [], [pivot], dataclasses.replace(cfg, max_pivot_confirmation_bars=500)) == []
    # The engine, with a level-5 pivot slower than the ref's hot retention (pw + H + S = 1,005 bars).
    slower = make_pivot("BTCUSDT", "1m", t(2), t(2 + 4000), level=5)
    eng = JoinEngine(cfg)
    eng.on_ref(ref, 0)
    for i in range(1, 2 + 4000):  # the watermark moves on: the ref is archived after 1,005 bars
        eng.on_candle(make_candle("BTCUSDT", "1m", t(i)), 0)
    assert eng.state_counts()["archived_ref"] == 1 and eng.pending_refs == 1
    out = eng.on_pivot(slower, 0)
    assert [j["job_id"] for j in out.jobs] == [j["job_id"] for j in batch_join([ref], [], [slower], cfg)]
    assert len(out.jobs) == 1
    assert eng.on_pivot(slower, 0).counts["pivot.duplicate"] == 1  # a re-sent pivot joins nothing twice


@settings(HYPO, max_examples=100)
@given(scenarios())
def test_with_an_archive_any_interleaving_equals_oracle(sc: Scenario) -> None:
    """The hypothesis claim of test_coordinator_join, with H < D so refs move through the archive."""
    d = cast(int, sc.config.max_pivot_confirmation_bars)
    cfg = dataclasses.replace(sc.config, hot_retention_bars=sc.rng.randrange(0, d + 1),
                              archive_bucket_bars=sc.rng.choice([1, 2, 5]))
    lags = {series: cfg.horizons(series.split(":")[1]).max_lag for series, _ in sc.topics}
    arrivals = interleave(sc.topics, sc.rng, lags)
    if sc.drain:
        arrivals += _drain(sc.topics)
    res = run(cfg, arrivals, int(sc.restore_frac * len(arrivals)), sc.compacted, sc.rng)
    assert not res.late, res.late
    refs, candles, pivots = (topic_lists(sc.topics, k) for k in KINDS)
    assert_matches_oracle(res, refs, candles, pivots, cfg)
    check_accounting(res, arrivals)
    if sc.drain:
        assert res.engine is not None and res.engine.pending_refs == 0


def test_real_data_pivot_confirmed_after_the_hot_retention_joins_every_ref_in_its_window_once() -> None:
    """REAL candles (data/BTCUSDT-1m-2025-10-29_2025-11-01.csv) and the pivots service's detector on
    them; refs SYNTHESISED over the real candles (one per candle over 800 candles around the slow
    pivot, target the next candle, placeholder checksum and outputs, as in the other coordinator
    tests: no model runs here; fewer refs only keep the quadratic oracle fast).
    Its level-4 LOW is confirmed 1,443 bars after its pivot time, far past the 500-bar hot retention
    of the service's default settings."""
    cfg = CoordinatorSettings().join_config()
    candles = real_candles("BTCUSDT-1m-2025-10-29_2025-11-01.csv")
    pivots = detect_pivots(candles)
    refs: list[InferenceRef] = [make_ref("BTCUSDT", "1m", candles[i]["open_time"], candles[i + 1]["open_time"])
                                for i in range(1800, 2600)]
    h = cfg.horizons("1m")
    slow = [p for p in pivots if p["confirmed_at"] - p["pivot_time"] > h.pivot_window + h.hot + h.max_lag]
    assert [(p["level"], (p["confirmed_at"] - p["pivot_time"]) // BAR) for p in slow] == [(4, 1443)]
    topics: dict[tuple[str, Kind], list[Item]] = {
        ("BTCUSDT:1m", "candle"): [Item("candle", cast(dict[str, Any], c)) for c in candles],
        ("BTCUSDT:1m", "ref"): [Item("ref", cast(dict[str, Any], r)) for r in refs],
        ("BTCUSDT:1m", "pivot"): [Item("pivot", cast(dict[str, Any], p)) for p in pivots],
    }
    arrivals = in_event_time_order(topics)
    # A crash and restore from the compacted changelog between the archival and the late pivot.
    at = next(n for n, a in enumerate(arrivals) if a.kind == "pivot" and a.rec is slow[0]) - 50
    res = run(cfg, arrivals, restore_at=at, compacted=True, rng=random.Random(3))
    assert_matches_oracle(res, refs, candles, pivots, cfg)
    check_accounting(res, arrivals)
    window = {r["inference_id"] for r in refs if abs(r["data_range_end"] - slow[0]["pivot_time"]) <= h.pivot_window}
    assert len(window) == 11  # ±5 one-minute bars, all present in this stretch of the file
    joined = Counter(j["ref"]["inference_id"] for j in res.jobs if j["pivot"] == slow[0])
    assert set(joined) == window and set(joined.values()) == {1}
    assert res.counts["pivot.archive_joins"] == 11
    assert h.hot == DEFAULT_HOT_RETENTION_BARS * BAR
    # the archive is compact: its changelog values against the refs they hold
    assert res.engine is not None
    snap = res.engine.snapshot()
    archived = [(v, decode_archive(v)) for k, v in snap.items() if parse_key(k)[1] == "arch"]
    n = sum(len(entries) for _, entries in archived)
    assert n == res.engine.state_counts()["archived_ref"] == len(refs)  # wm is ~1,240 bars past the last
    size = sum(len(str(v["z"])) for v, _ in archived)
    print(f"archive: {n} refs in {len(archived)} buckets, {size / n:.0f} bytes per ref")
    assert size / n < 400
