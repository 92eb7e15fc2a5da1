"""Replay pacing, computed without sleeping."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reftrain.records import Candle
from services.ingest.pacing import ReplayClock, due_time_ms, replay_delays
from services.ingest.sources import merge_sources

Loader = Callable[[str], list[Candle]]


def test_speed_zero_never_waits() -> None:
    assert list(replay_delays([0, 60_000, 10**9], 0)) == [0.0, 0.0, 0.0]
    clock = ReplayClock(0)
    assert [clock.delay(t, 5.0) for t in (0, 60_000, 10**9)] == [0.0, 0.0, 0.0]


def test_real_time_multiples() -> None:
    assert list(replay_delays([0, 60_000, 180_000], 1)) == [0.0, 60.0, 120.0]
    assert list(replay_delays([0, 60_000, 180_000], 60)) == [0.0, 1.0, 2.0]
    # same time (two series) and going back (merge of unsorted inputs) wait 0
    assert list(replay_delays([0, 60_000, 60_000, 0, 120_000], 60)) == [0.0, 1.0, 0.0, 0.0, 1.0]
    assert list(replay_delays([0, 33 * 3_600_000], 3600, max_sleep_s=5)) == [0.0, 5.0]
    with pytest.raises(ValueError, match="speed"):
        list(replay_delays([0], -1))


def test_real_files_at_60x(load_real: Loader) -> None:
    btc = load_real("BTCUSDT-1m-2025-09-22_2025-09-25.csv")[:100]
    eth = load_real("ETHUSDT-1m-2025-09-22_2025-09-25.csv")[:100]
    merged = [c for c in merge_sources([btc, eth]) if isinstance(c, dict)]
    delays = list(replay_delays([due_time_ms(c) for c in merged], 60))
    assert delays[:4] == [0.0, 0.0, 1.0, 0.0]  # BTC and ETH of a minute go out together
    assert sum(delays) == pytest.approx(99.0)  # 99 minutes of market time in 99 s
    hourly = load_real("BTCUSDT-1h-2017-08-17_2024-04-21.csv")
    capped = list(replay_delays([c["close_time"] for c in hourly], 3600, max_sleep_s=2.0))
    assert max(capped) == 2.0  # the 33 h outage of Feb 2018 does not stall the replay


def test_clock_does_not_drift() -> None:
    """Processing time is absorbed: the due times follow market time, not sleep + work."""
    clock = ReplayClock(60)
    now = 100.0
    assert clock.delay(0, now) == 0.0
    now += 0.25  # work took 0.25 s
    assert clock.delay(60_000, now) == pytest.approx(0.75)
    now += 0.75 + 3.0  # slept, then a 3 s stall
    assert clock.delay(120_000, now) == 0.0  # behind: publish at once
    assert clock.delay(180_000, now) == pytest.approx(0.0)  # still catching up (due at 103.0)
    assert clock.delay(240_000, now) == pytest.approx(0.0)  # due at 104.0: on time again
    assert clock.delay(300_000, now) == pytest.approx(1.0)


@settings(max_examples=50, deadline=None)
@given(
    steps=st.lists(st.integers(-120_000, 7_200_000), max_size=30),
    speed=st.sampled_from([0.5, 1, 60, 3600]),
    cap=st.one_of(st.none(), st.floats(0, 100)),
)
def test_clock_matches_delays_when_work_is_free(steps: list[int], speed: float, cap: float | None) -> None:
    times = [1_000_000_000]
    for s in steps:
        times.append(times[-1] + s)
    clock = ReplayClock(speed, max_sleep_s=cap)
    now = 0.0
    for t, d in zip(times, replay_delays(times, speed, max_sleep_s=cap), strict=True):
        got = clock.delay(t, now)
        assert got >= 0.0
        assert got == pytest.approx(d, abs=1e-6)
        now += got
