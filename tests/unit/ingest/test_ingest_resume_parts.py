"""The pure pieces resume relies on: row numbers that name a row across restarts, Indicators
restored from stored values equal to an uninterrupted run, and Kafka's murmur2 partitioner."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from reftrain.records import Candle
from services.ingest.indicators import Indicators
from services.ingest.kafka_io import murmur2, partition_of
from services.ingest.sources import (
    RowError,
    merge_numbered,
    merge_sources,
    read_candles,
    read_numbered,
)

Loader = Callable[[str], list[Candle]]
BTC = "BTCUSDT-1m-2025-09-22_2025-09-25.csv"
ETH = "ETHUSDT-1m-2025-09-22_2025-09-25.csv"


def test_numbered_rows_are_physical_lines_and_items_match_read_candles(tmp_path: Path, data_dir: Path) -> None:
    lines = (data_dir / BTC).read_text().splitlines()[:21]
    # a blank line and a DELIBERATELY broken copy of a real row shift nothing but their own numbers
    text = [*lines[:5], "", lines[5].replace(",", ";", 1), *lines[5:]]
    path = tmp_path / "BTCUSDT-1m-x.csv"
    path.write_text("\n".join(text) + "\n")
    numbered = list(read_numbered(path))
    assert [item for _, item in numbered] == list(read_candles(path))
    bad = [(row, item) for row, item in numbered if isinstance(item, RowError)]
    assert [(row, item.row) for row, item in bad] == [(7, 7)]
    for row, item in numbered:
        if not isinstance(item, RowError):
            assert text[row - 1].startswith(str(item["open_time"]))


def test_merge_numbered_keeps_rows_and_the_order_of_merge_sources(data_dir: Path) -> None:
    files = [data_dir / BTC, data_dir / ETH]
    merged = list(merge_numbered(read_numbered(f) for f in files))
    assert [item for _, item in merged] == list(merge_sources(read_candles(f) for f in files))
    for f in files:
        rows = [row for row, item in merged if not isinstance(item, RowError) and item["source"] == f.name]
        assert rows == list(range(2, 2 + len(rows)))


@pytest.mark.parametrize("cut", [1, 19, 20, 21, 199, 200, 777])
def test_indicators_seeded_from_stored_values_continue_exactly(load_real: Loader, cut: int) -> None:
    candles = load_real(BTC)[:1200]
    whole = Indicators()
    want = [whole.update(c) for c in candles]
    first = Indicators()
    got = [first.update(c) for c in candles[:cut]]
    resumed = Indicators()  # what a restarted process knows: the store's last closes, count and EMAs
    last = got[-1]
    resumed.seed("BTCUSDT", "1m", closes=[c["close"] for c in candles[:cut]][-resumed.window:], count=cut,
                 last_open_time=candles[cut - 1]["open_time"],
                 ema={p: last[f"ema_{p}"] for p in resumed.ema_periods})
    got += [resumed.update(c) for c in candles[cut:]]
    assert got == want  # bit for bit


def test_seed_refuses_what_it_cannot_restore() -> None:
    ind = Indicators((5,), (5,))
    with pytest.raises(ValueError, match="ema_5 missing"):
        ind.seed("X", "1m", closes=[1.0] * 5, count=9, last_open_time=0, ema={5: None})
    with pytest.raises(ValueError, match="needs the last 5"):
        ind.seed("X", "1m", closes=[1.0] * 3, count=9, last_open_time=0, ema={5: 1.0})


def test_murmur2_matches_kafka() -> None:
    # org.apache.kafka.common.utils.UtilsTest#testMurmur2 (signed Java ints)
    cases = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
             b"a-little-bit-longer-string": -1486304829,
             b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971, b"abc": 479470107}
    for data, want in cases.items():
        h = murmur2(data)
        assert (h - (1 << 32) if h >= 1 << 31 else h) == want, data
    assert {partition_of(k, 6) for k in ("BTCUSDT:1m", "ETHUSDT:1m", "BTCUSDT:5m")} <= set(range(6))
