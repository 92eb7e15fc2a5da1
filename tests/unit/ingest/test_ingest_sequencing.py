"""SeriesGuard / Sequencer: accept, duplicate, conflicting duplicate, out of order, invalid, gaps, state."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reftrain.records import Candle
from services.ingest.sequencing import (
    ACCEPTED,
    CONFLICTING_DUPLICATE,
    DUPLICATE,
    DUPLICATE_UNVERIFIED,
    OUT_OF_ORDER,
    GuardState,
    Outcome,
    Sequencer,
    SeriesGuard,
    Verdict,
)

DATA = Path(__file__).resolve().parents[3] / "data"
ALL_FILES = sorted(p.name for p in DATA.glob("*.csv"))
# (gaps, missing bars) per file, from data/PROVENANCE.md
GAPS = {
    "BTCUSDT-1h-2017-08-17_2024-04-21.csv": (28, 128),
    "ETHUSDT-1h-2017-08-21_2020-09-08.csv": (18, 151),
    "LTCUSD-1m-2018-04-05_2018-04-06.csv": (1, 1),
}
LTC = "LTCUSD-1m-2018-04-05_2018-04-06.csv"
Loader = Callable[[str], list[Candle]]


def mk(t: int, close: float = 10.0, *, symbol: str = "BTCUSDT", tf: str = "1m", **kw: object) -> Candle:
    bar = {"1m": 60_000, "1h": 3_600_000}[tf]
    c = Candle(
        symbol=symbol,
        timeframe=tf,
        open_time=t * bar,
        close_time=t * bar + bar - 1,
        open=10.0,
        high=max(12.0, close),
        low=min(9.0, close),
        close=close,
        volume=1.5,
        trades=3,
        source="test",
    )
    return cast(Candle, {**c, **kw})  # kw may break the types on purpose (invalid candles)


@pytest.mark.parametrize("name", ALL_FILES)
def test_real_files_are_accepted_and_gaps_counted(load_real: Loader, name: str) -> None:
    seq = Sequencer()
    verdicts = [seq.offer(c) for c in load_real(name)]
    assert {v.outcome for v in verdicts} == {Outcome.ACCEPT}
    gaps = [v for v in verdicts if v.gap_bars]
    assert (len(gaps), sum(v.gap_bars for v in gaps)) == GAPS.get(name, (0, 0))
    # replaying the file's last 2000 rows: identical duplicates (within memory) or unverified ones
    again = [seq.offer(c) for c in load_real(name)[-2000:]]
    assert {v.reason for v in again[:-1440]} <= {DUPLICATE_UNVERIFIED}
    assert [v.reason for v in again[-1440:]] == [DUPLICATE] * 1440


def test_ltc_gap_position(load_real: Loader) -> None:
    guard = SeriesGuard("LTCUSD", "1m")
    (v,) = [v for v in map(guard.offer, load_real(LTC)) if v.gap_bars]
    assert v.gap_bars == 1
    assert v.gap_start == 1_522_915_920_000  # 2018-04-05 08:12 UTC, the missing minute
    assert v.outcome is Outcome.ACCEPT
    assert v.reason == ACCEPTED


def test_each_outcome() -> None:
    g = SeriesGuard("BTCUSDT", "1m")
    assert g.offer(mk(10)) == Verdict(Outcome.ACCEPT, ACCEPTED)
    assert g.offer(mk(11)).gap_bars == 0
    v = g.offer(mk(15))
    assert (v.outcome, v.gap_bars, v.gap_start) == (Outcome.ACCEPT, 3, 12 * 60_000)
    assert g.offer(mk(15)) == Verdict(Outcome.DUPLICATE, DUPLICATE)
    assert g.offer(mk(15, source="other-file.csv")).reason == DUPLICATE  # the source label does not count
    assert g.offer(mk(11, close=11.0)).reason == CONFLICTING_DUPLICATE
    assert g.offer(mk(15, trades=4)).reason == CONFLICTING_DUPLICATE
    assert g.offer(mk(13)).outcome is Outcome.OUT_OF_ORDER  # in the gap: never accepted
    assert g.offer(mk(9)).reason == OUT_OF_ORDER
    bad = mk(16, high=9.5)
    assert g.offer(bad) == Verdict(Outcome.INVALID, "high_below_body", "h=9.5 o=10.0 c=10.0")
    # invalid beats duplicate, and an invalid candle does not advance the guard
    assert g.offer(mk(15, volume=float("nan"))).reason == "non_finite_volume"
    assert g.offer(mk(16, open_time=16 * 60_000 + 1, close_time=17 * 60_000)).reason == "misaligned_open_time"
    assert g.offer(mk(16, close_time=16 * 60_000)).reason == "bad_close_time"
    assert g.last_open_time == 15 * 60_000
    assert g.offer(mk(16)).accepted


def test_check_does_not_change_state_and_commit_checks() -> None:
    g = SeriesGuard("BTCUSDT", "1m")
    assert g.check(mk(1)).accepted
    assert g.check(mk(1)).accepted  # nothing recorded yet: write before publish
    g.commit(mk(1))
    assert g.check(mk(1)).reason == DUPLICATE
    with pytest.raises(ValueError, match="not acceptable"):
        g.commit(mk(1))
    with pytest.raises(ValueError, match="guard of BTCUSDT:1m"):
        g.check(mk(2, symbol="ETHUSDT"))


def test_sequencer_rejects_unknown_series_without_a_guard() -> None:
    seq = Sequencer()
    assert seq.offer(mk(1, timeframe="2h")) == Verdict(Outcome.INVALID, "unknown_timeframe", "'2h'")
    assert seq.offer(mk(1, symbol="")).reason == "empty_symbol"
    bad: dict[str, object] = dict(mk(1))
    del bad["close"]
    assert seq.offer(bad).reason == "malformed_record"  # type: ignore[arg-type]
    assert seq.guards == {}
    assert seq.offer(mk(1)).accepted
    assert seq.offer(mk(1, symbol="ETHUSDT")).accepted  # series are independent
    assert sorted(seq.guards) == ["BTCUSDT:1m", "ETHUSDT:1m"]


def test_memory_eviction_and_run_pruning() -> None:
    g = SeriesGuard("BTCUSDT", "1m", memory=3, max_runs=2)
    for t in (1, 2, 3, 4, 5, 8, 9, 20, 21):
        assert g.offer(mk(t)).accepted
    assert g.offer(mk(9)).reason == DUPLICATE  # still in memory
    assert g.offer(mk(9, close=11.0)).reason == CONFLICTING_DUPLICATE
    assert g.offer(mk(8)).reason == DUPLICATE_UNVERIFIED  # accepted (in a kept run), values forgotten
    assert g.offer(mk(10)).reason == OUT_OF_ORDER  # gap 10..19 is known exactly
    # run 1..5 was pruned (max_runs=2): at or before its end the guard no longer knows exactly
    assert g.state().horizon == 5 * 60_000
    assert g.state().runs == [(8 * 60_000, 9 * 60_000), (20 * 60_000, 21 * 60_000)]
    assert g.offer(mk(3)).reason == DUPLICATE_UNVERIFIED
    assert g.offer(mk(6)).reason == OUT_OF_ORDER


def test_resume_from_the_stores_last_row(load_real: Loader) -> None:
    candles = load_real(LTC)
    last = candles[999]["open_time"]
    # only the last open_time is known (e.g. SELECT max(open_time) FROM candles)
    seq = Sequencer.from_state({"LTCUSD:1m": {"last_open_time": last}})
    verdicts = [seq.offer(c) for c in candles]
    assert {v.reason for v in verdicts[:1000]} == {DUPLICATE_UNVERIFIED}
    assert all(v.accepted for v in verdicts[1000:])
    # with the store's tail, the tail's rows are compared value by value
    g = SeriesGuard.resume("LTCUSD", "1m", candles[990:1000])
    assert g.offer(candles[995]).reason == DUPLICATE
    assert g.offer({**candles[995], "close": 1.0, "low": 1.0}).reason == CONFLICTING_DUPLICATE
    assert g.offer(candles[500]).reason == DUPLICATE_UNVERIFIED
    assert g.offer(candles[1000]).accepted
    assert SeriesGuard.resume("LTCUSD", "1m", []).state() == GuardState()


def verdict_key(v: Verdict) -> tuple[object, ...]:
    reason = DUPLICATE_UNVERIFIED if v.reason in (DUPLICATE, CONFLICTING_DUPLICATE) else v.reason
    return (v.outcome, reason, v.gap_bars, v.gap_start)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(split=st.integers(1, 2878), back=st.integers(0, 50), data=st.data())
def test_state_round_trip_through_json(load_real: Loader, split: int, back: int, data: st.DataObject) -> None:
    """A restart from the JSON state continues exactly like an uninterrupted guard, except that values
    it no longer holds are reported as duplicate_unverified."""
    candles = load_real(LTC)
    tail = candles[max(0, split - back) : split + 30]
    extra = data.draw(st.lists(st.sampled_from(candles[:split]), max_size=5))
    ref = Sequencer()
    for c in candles[:split]:
        ref.offer(c)
    restored = Sequencer.from_state(json.loads(json.dumps(ref.state())))
    assert restored.state() == ref.state()
    for c in [*extra, *tail]:
        assert verdict_key(restored.offer(c)) == verdict_key(ref.offer(c))


EVENTS = st.lists(
    st.tuples(st.integers(0, 30), st.sampled_from([10.0, 10.0, 11.0]), st.booleans()), max_size=60
)


@settings(max_examples=60, deadline=None)
@given(events=EVENTS)
def test_against_a_reference_model(events: list[tuple[int, float, bool]]) -> None:
    """Verdicts equal those of an obviously correct model that remembers every accepted candle."""
    g = SeriesGuard("BTCUSDT", "1m")
    accepted: dict[int, Candle] = {}
    for t, close, valid in events:
        c = mk(t, close) if valid else mk(t, close, low=10.5)
        v = g.offer(c)
        last = max(accepted, default=None)
        if not valid:
            expected = (Outcome.INVALID, "low_above_body", 0)
        elif last is None or t > last:
            expected = (Outcome.ACCEPT, ACCEPTED, 0 if last is None else t - last - 1)
            accepted[t] = c
        elif t in accepted:
            same = accepted[t]["close"] == close
            expected = (Outcome.DUPLICATE, DUPLICATE if same else CONFLICTING_DUPLICATE, 0)
        else:
            expected = (Outcome.OUT_OF_ORDER, OUT_OF_ORDER, 0)
        assert (v.outcome, v.reason, v.gap_bars) == expected
