"""reftrain.candlefiles.load_candles, the one candle-CSV reader, on the REAL bundled files (data/):
every row, checked against the standard library's csv module as an independent oracle."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from reftrain.candlefiles import SourceFormatError, load_candles
from reftrain.records import TIMEFRAME_MS

DATA = Path(__file__).resolve().parents[3] / "data"
FILES = sorted(p.name for p in DATA.glob("*.csv"))


def test_the_bundled_files_are_all_there() -> None:
    assert len(FILES) == 9, FILES  # data/PROVENANCE.md lists nine files


@pytest.mark.parametrize("name", FILES)
def test_every_row_of_a_real_file_equals_the_csv_module(name: str) -> None:
    symbol, tf = name.split("-")[:2]
    bar = TIMEFRAME_MS[tf]
    with open(DATA / name, newline="") as fh:
        rows = list(csv.DictReader(fh))
    got = load_candles(DATA / name)
    assert len(got) == len(rows) > 1000
    for c, r in zip(got, rows, strict=True):
        assert (c["symbol"], c["timeframe"], c["source"]) == (symbol, tf, name)
        assert c["open_time"] == int(r["open_time_ms"]) and c["close_time"] == c["open_time"] + bar - 1
        assert (c["open"], c["high"], c["low"], c["close"], c["volume"]) == tuple(
            float(r[k]) for k in ("open", "high", "low", "close", "volume"))
        assert c["trades"] == (int(r["trades"]) if r.get("trades") else None)
    times = [c["open_time"] for c in got]
    assert times == sorted(set(times))  # file order is time order, no repeated bar


def test_overrides_and_limit() -> None:
    name = "LTCUSD-1m-2018-04-05_2018-04-06.csv"
    got = load_candles(DATA / name, symbol="LTC", source="csv:x", limit=5)
    assert len(got) == 5 and {(c["symbol"], c["timeframe"], c["source"]) for c in got} == {("LTC", "1m", "csv:x")}
    assert got == load_candles(DATA / name, symbol="LTC", source="csv:x")[:5]
    assert load_candles(DATA / name, limit=0) == []


def test_a_bad_row_in_a_copy_of_a_real_file_names_the_file_and_line(tmp_path: Path) -> None:
    name = "BTCUSD-1m-2017-09-03_2017-09-04.csv"
    lines = (DATA / name).read_text().splitlines()
    lines[10] = lines[10].replace(",", ";", 1)  # line 11: one column short
    (tmp_path / name).write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceFormatError, match=rf"{name} line 11: wrong_column_count"):
        load_candles(tmp_path / name)
    with pytest.raises(SourceFormatError, match="does not match SYMBOL-TF"):
        load_candles(tmp_path / "candles.csv")
