"""Window fetch and verification: one store pass per batch, only missing rows read, a stale cache
never rejects a good job, and each mismatch gets its reason."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from reftrain.errors import WindowMismatchError
from reftrain.records import Candle
from services.trainer.windows import WindowFetcher, WindowRequest, verify_window
from tests.unit.trainer.trainer_synth import MemStore, make_ref, window_of

W = 64


def req(candles: Sequence[Candle], end: int, size: int = W, **over: Any) -> WindowRequest:
    ref = dict(make_ref(candles, end, size))
    ref.update(over)
    return WindowRequest.from_ref(ref)


def test_verify_accepts_the_exact_window(btc: Sequence[Candle]) -> None:
    verify_window(window_of(btc[100 - W + 1:101]), req(btc, 100))


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda w, r: (w.slice_range(0, 0), r), "window_missing"),
    (lambda w, r: (w.slice_range(w.start, w.end - 60_000), r), "row_count_mismatch"),
    (lambda w, r: (w, WindowRequest(r.symbol, r.timeframe, r.start, r.end, r.size, "0" * 64)), "checksum_mismatch"),
])
def test_verify_names_each_mismatch(btc: Sequence[Candle], mutate: Any, reason: str) -> None:
    window, request = mutate(window_of(btc[100 - W + 1:101]), req(btc, 100))
    with pytest.raises(WindowMismatchError) as info:
        verify_window(window, request)
    assert info.value.reason == reason


def test_a_changed_value_fails_the_checksum(btc: Sequence[Candle]) -> None:
    w = window_of(btc[100 - W + 1:101])
    values = w.values.copy()
    values[10, 3] = np.nextafter(values[10, 3], np.inf)  # one ulp of one close
    changed = type(w)(w.symbol, w.timeframe, w.open_time, values)
    with pytest.raises(WindowMismatchError, match="checksum_mismatch"):
        verify_window(changed, req(btc, 100))


def test_one_store_pass_per_batch_then_only_new_rows(mem_store: MemStore, btc: Sequence[Candle],
                                                     eth_1h: Sequence[Candle]) -> None:
    fetcher = WindowFetcher(mem_store)
    batch1 = [req(btc, e) for e in range(100, 140)] + [req(eth_1h, e) for e in range(200, 220)]
    out, stats = fetcher.fetch(batch1)
    assert all(not isinstance(w, Exception) for w in out)
    assert mem_store.read_calls == 1 and stats.store_calls == 1  # both series, one pass
    assert stats.rows_read == (139 - (100 - W + 1) + 1) + (219 - (200 - W + 1) + 1)  # each union, once
    for w, r in zip(out, batch1, strict=True):
        assert not isinstance(w, Exception)
        assert w.start == r.start and w.end == r.end and w.checksum() == r.checksum

    out, stats = fetcher.fetch([req(btc, e) for e in range(130, 150)])  # overlaps: read only rows 140..149
    assert all(not isinstance(w, Exception) for w in out)
    assert stats.store_calls == 1 and stats.rows_read == 10
    out, stats = fetcher.fetch([req(btc, e) for e in range(110, 150)])  # all cached: no read at all
    assert stats.store_calls == 0 and stats.rows_read == 0 and mem_store.read_calls == 2


def test_stale_cache_is_reread_before_rejecting(tmp_path: Any, btc: Sequence[Candle]) -> None:
    """A gap in the store when the cache read it, filled later: a ref made after the fill trains."""
    store = MemStore(tmp_path, btc[:300])
    store.remove("BTCUSDT", "1m", btc[150]["open_time"])
    fetcher = WindowFetcher(store)
    out, _ = fetcher.fetch([req(btc, 200)])
    assert isinstance(out[0], WindowMismatchError) and out[0].reason == "row_count_mismatch"
    store.add([btc[150]])  # the late candle arrives
    out, stats = fetcher.fetch([req(btc, 200), req(btc, 201)])
    assert not any(isinstance(w, Exception) for w in out)
    # one pass for the new row 201, then ONE re-read of the series' span (not one per job)
    assert stats.rereads == 1 and stats.store_calls == 2


def test_true_mismatches_survive_the_reread(mem_store: MemStore, btc: Sequence[Candle]) -> None:
    fetcher = WindowFetcher(mem_store)
    far = btc[-1]["open_time"] + 10**9
    out, _ = fetcher.fetch([req(btc, 300), req(btc, 301, window_checksum="ab" * 32),
                            req(btc, 302, data_range_start=far, data_range_end=far + 60_000 * (W - 1)),
                            req(btc, 303, window_size=W + 1)])
    assert not isinstance(out[0], Exception)
    assert [getattr(w, "reason", None) for w in out[1:]] == ["checksum_mismatch", "window_missing",
                                                             "row_count_mismatch"]


def test_cache_is_trimmed_to_its_budget(mem_store: MemStore, btc: Sequence[Candle]) -> None:
    fetcher = WindowFetcher(mem_store, max_rows_per_series=100)
    fetcher.fetch([req(btc, e) for e in range(200, 400, 10)])
    cache = fetcher.caches[("BTCUSDT", "1m")]
    assert cache.rows == 100 and cache.lo == btc[291]["open_time"]  # the newest 100 rows: 291..390
    out, _ = fetcher.fetch([req(btc, 250)])  # before the trimmed cache: read again, still right
    assert not isinstance(out[0], Exception) and out[0].checksum() == req(btc, 250).checksum
