"""File readers: the simple layout of data/, Binance kline dumps (ms and us), Parquet, zip, bad rows."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reftrain.errors import InvalidRecordError
from reftrain.records import TIMEFRAME_MS, Candle
from reftrain.validation import validate_candle
from services.ingest.sources import (
    RowError,
    SourceFormatError,
    iter_csv_rows,
    merge_sources,
    parse_file_name,
    read_candles,
)

DATA = Path(__file__).resolve().parents[3] / "data"
ALL_FILES = sorted(p.name for p in DATA.glob("*.csv"))
# rows per file, from data/PROVENANCE.md
ROWS = {
    "BTCUSDT-1m-2025-09-22_2025-09-25.csv": 4319,
    "ETHUSDT-1m-2025-09-22_2025-09-25.csv": 4319,
    "BTCUSDT-1m-2025-10-29_2025-11-01.csv": 4357,
    "ETHUSDT-1m-2025-10-29_2025-11-01.csv": 4357,
    "BTCUSDT-1h-2017-08-17_2024-04-21.csv": 58419,
    "ETHUSDT-1h-2017-08-21_2020-09-08.csv": 26605,
    "BTCUSD-1m-2017-09-03_2017-09-04.csv": 2880,
    "ETHUSD-1m-2017-09-03_2017-09-04.csv": 2880,
    "LTCUSD-1m-2018-04-05_2018-04-06.csv": 2879,
}
SEP_BTC = "BTCUSDT-1m-2025-09-22_2025-09-25.csv"
Loader = Callable[[str], list[Candle]]


def without_source(cs: list[Candle]) -> list[tuple[object, ...]]:
    return [tuple(v for k, v in c.items() if k != "source") for c in cs]


def candles_only(items: list[Candle | RowError]) -> list[Candle]:
    assert not [i for i in items if isinstance(i, RowError)]
    return [i for i in items if not isinstance(i, RowError)]


def test_every_real_file_reads_completely(load_real: Loader) -> None:
    assert sorted(ROWS) == ALL_FILES
    for name in ALL_FILES:
        cs = load_real(name)
        symbol, tf = name.split("-")[:2]
        assert len(cs) == ROWS[name], name
        bar = TIMEFRAME_MS[tf]
        has_trades = "trades" in (DATA / name).open().readline()
        for c in cs:
            assert (c["symbol"], c["timeframe"], c["source"]) == (symbol, tf, name)
            assert c["close_time"] == c["open_time"] + bar - 1
            assert (c["trades"] is not None) == has_trades
            validate_candle(dict(c))
        assert [c["open_time"] for c in cs] == sorted({c["open_time"] for c in cs})


def test_values_are_the_files_text(load_real: Loader) -> None:
    first = load_real(SEP_BTC)[0]
    assert first == {
        "symbol": "BTCUSDT",
        "timeframe": "1m",
        "open_time": 1758503700000,
        "close_time": 1758503759999,
        "open": 114623.68,
        "high": 114660.0,
        "low": 114584.0,
        "close": 114660.0,
        "volume": 26.19202,
        "trades": 5151,
        "source": SEP_BTC,
    }


def binance_line(c: Candle, unit: int) -> str:
    """A data.binance.vision kline row; unit 1 = ms, 1000 = us (spot dumps since 2025)."""
    close_time = c["open_time"] * unit + 60_000 * unit - 1
    quote = c["volume"] * c["close"]
    return (
        f"{c['open_time'] * unit},{c['open']:.8f},{c['high']:.8f},{c['low']:.8f},{c['close']:.8f},"
        f"{c['volume']:.8f},{close_time},{quote:.8f},{c['trades']},{c['volume'] / 2:.8f},{quote / 2:.8f},0"
    )


BINANCE_HEADER = (
    "open_time,open,high,low,close,volume,close_time,quote_volume,count,"
    "taker_buy_volume,taker_buy_quote_volume,ignore"
)


@pytest.mark.parametrize("unit", [1, 1000], ids=["ms", "us"])
@pytest.mark.parametrize("header", [False, True], ids=["no-header", "futures-header"])
def test_binance_layout_equals_simple_layout(
    tmp_path: Path, load_real: Loader, unit: int, header: bool
) -> None:
    real = load_real(SEP_BTC)
    lines = [binance_line(c, unit) for c in real]
    if header:
        lines.insert(0, BINANCE_HEADER)
    path = tmp_path / "BTCUSDT-1m-2025-09.csv"
    path.write_text("\n".join(lines) + "\n")
    got = candles_only(list(read_candles(path)))
    assert without_source(got) == without_source(real)
    assert {c["source"] for c in got} == {path.name}


def test_binance_zip_dump(tmp_path: Path, load_real: Loader) -> None:
    real = load_real(SEP_BTC)[:500]
    path = tmp_path / "BTCUSDT-1m-2025-09-22.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("BTCUSDT-1m-2025-09-22.csv", "\n".join(binance_line(c, 1000) for c in real) + "\n")
    got = candles_only(list(read_candles(path)))
    assert without_source(got) == without_source(real)
    assert got[0]["source"] == path.name


def test_parquet_simple_and_binance_layouts(tmp_path: Path, load_real: Loader) -> None:
    real = load_real(SEP_BTC)
    con = duckdb.connect()
    simple = tmp_path / "BTCUSDT-1m-simple.parquet"
    con.execute(f"COPY (SELECT * FROM read_csv('{DATA / SEP_BTC}')) TO '{simple}' (FORMAT parquet)")
    assert without_source(candles_only(list(read_candles(simple)))) == without_source(real)

    # a Binance layout written by a dataframe without names (columns "0".."11"), in microseconds
    csv_path = tmp_path / "b.csv"
    csv_path.write_text("\n".join(binance_line(c, 1000) for c in real) + "\n")
    binance = tmp_path / "BTCUSDT-1m-binance.parquet"
    cols = ", ".join(f'column{i:02d} AS "{i}"' for i in range(12))
    con.execute(
        f"COPY (SELECT {cols} FROM read_csv('{csv_path}', header=false)) TO '{binance}' (FORMAT parquet)"
    )
    assert without_source(candles_only(list(read_candles(binance)))) == without_source(real)

    # open_time as a Parquet TIMESTAMP (UTC), trades missing in one row
    typed = tmp_path / "BTCUSDT-1m-typed.parquet"
    con.execute(
        f"COPY (SELECT make_timestamp(open_time_ms * 1000) AS open_time, open, high, low, close, volume, "
        f"CASE WHEN open_time_ms = {real[3]['open_time']} THEN NULL ELSE trades END AS trades "
        f"FROM read_csv('{DATA / SEP_BTC}')) TO '{typed}' (FORMAT parquet)"
    )
    got = candles_only(list(read_candles(typed)))
    real[3]["trades"] = None
    assert without_source(got) == without_source(real)


def test_parquet_bad_row_is_a_row_error(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-1m-x.parquet"
    duckdb.connect().execute(
        f"COPY (SELECT * FROM (VALUES (60000, 1.0, 2.0, 0.5, 1.5, 3.0), (120000, NULL, 2.0, 0.5, 1.5, 3.0)) "
        f"t(open_time_ms, open, high, low, close, volume)) TO '{path}' (FORMAT parquet)"
    )
    items = list(read_candles(path))
    assert not isinstance(items[0], RowError)
    assert isinstance(items[1], RowError)
    assert (items[1].row, items[1].reason, items[1].detail) == (2, "missing_value", "open")


MALFORMED = """open_time_ms,open,high,low,close,volume,trades
60000,1.0,2.0,0.5,1.5,3.0,10
120000,1.0,2.0,0.5,1.5
180000,1.0,abc,0.5,1.5,3.0,10
240000,1.0,2.0,0.5,1.5,,10

300000.5,1.0,2.0,0.5,1.5,3.0,10
-60000,1.0,2.0,0.5,1.5,3.0,10
360000,1.0,2.0,0.5,1.5,3.0,x
420000000001,1.0,2.0,0.5,1.5,3.0,10
420000000000000,1.0,2.0,0.5,1.5,3.0,
480000,nan,2.0,0.5,1.5,3.0,10
540000,1.0,0.4,0.5,1.5,3.0,10
6.0e5,1.0,2.0,0.5,1.5,3.0,10
"""


def test_malformed_rows_yield_errors_and_the_file_goes_on() -> None:
    items = list(iter_csv_rows(MALFORMED.splitlines(), symbol="X", timeframe="1m", source="x.csv"))
    errors = {i.row: (i.reason, i.detail) for i in items if isinstance(i, RowError)}
    assert errors == {
        3: ("wrong_column_count", "5 columns, expected 7"),
        4: ("bad_number", "high='abc'"),
        5: ("missing_value", "volume"),
        7: ("bad_open_time", "open_time='300000.5'"),
        8: ("bad_open_time", "-60000 is outside the accepted ms/us range"),
        9: ("bad_trades", "trades='x'"),
    }
    err = next(i for i in items if isinstance(i, RowError) and i.row == 4)
    assert err.raw == "180000,1.0,abc,0.5,1.5,3.0,10"
    assert err.source == "x.csv"
    candles = [i for i in items if not isinstance(i, RowError)]
    # a us value that is a whole ms converts; trades blank -> None; NaN and high < low parse fine
    # (they are values, not syntax) and are rejected by validation, in the sequencer
    by_time = {c["open_time"]: c for c in candles}
    assert sorted(by_time) == [60000, 480000, 540000, 600000, 420000000000, 420000000001]
    assert by_time[420000000000]["trades"] is None
    reasons = []
    for t in (420000000001, 480000, 540000):
        with pytest.raises(InvalidRecordError) as exc:
            validate_candle(dict(by_time[t]))
        reasons.append(exc.value.reason)
    assert reasons == ["misaligned_open_time", "non_finite_price", "high_below_low"]


def test_file_level_problems_raise_before_any_row(tmp_path: Path) -> None:
    with pytest.raises(SourceFormatError):
        list(read_candles(tmp_path / "candles.csv"))  # no SYMBOL-TF in the name
    with pytest.raises(SourceFormatError):
        list(read_candles(tmp_path / "BTCUSDT-2h-2020.csv"))  # unknown timeframe
    p = tmp_path / "BTCUSDT-1m-2020.csv"
    p.write_text("1,2,3,4,5\n")
    with pytest.raises(SourceFormatError, match="5 columns"):
        list(read_candles(p))
    p.write_text("open_time,price\n1,2\n")
    with pytest.raises(SourceFormatError, match="lacks"):
        list(read_candles(p))
    z = tmp_path / "BTCUSDT-1m-2020.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("README.txt", "x")
    with pytest.raises(SourceFormatError, match=r"one \.csv"):
        list(read_candles(z))


def test_first_row_malformed_is_not_taken_for_a_header(tmp_path: Path) -> None:
    p = tmp_path / "BTCUSDT-1m-2025.csv"
    rows = ["x" + "1" * 12 + ",1,2,0.5,1.5,3,60059999,0,1,0,0,0", "60000,1,2,0.5,1.5,3,119999,0,1,0,0,0"]
    p.write_text("\n".join(rows) + "\n")
    items = list(read_candles(p))
    assert isinstance(items[0], RowError)
    assert (items[0].row, items[0].reason) == (1, "bad_open_time")
    assert not isinstance(items[1], RowError)
    assert items[1]["open_time"] == 60000


def test_file_name_and_overrides(tmp_path: Path) -> None:
    assert parse_file_name("BTCUSDT-1h-2017-08-17_2024-04-21.csv") == ("BTCUSDT", "1h")
    assert parse_file_name("/x/y/ETHUSDT-1m-2025-01.zip") == ("ETHUSDT", "1m")
    assert parse_file_name("ETHUSDT-15m-2025-01-01.parquet") == ("ETHUSDT", "15m")
    for bad in ("BTCUSDT.csv", "BTCUSDT-1m.csv", "BTC-USDT-1m-2020.csv", "BTCUSDT-1m-2020.txt"):
        with pytest.raises(SourceFormatError):
            parse_file_name(bad)
    p = tmp_path / "whatever.csv"
    p.write_text("open_time_ms,open,high,low,close,volume\n3600000,1,2,0.5,1.5,3\n")
    (c,) = candles_only(list(read_candles(p, symbol="SOLUSDT", timeframe="1h")))
    assert (c["symbol"], c["timeframe"], c["close_time"], c["trades"]) == ("SOLUSDT", "1h", 7_199_999, None)


def test_headerless_simple_rows() -> None:
    lines = ["60000,1,2,0.5,1.5,3,7", "", "120000,1,2,0.5,1.5,3,8", "   "]
    got = candles_only(list(iter_csv_rows(lines, symbol="X", timeframe="1m", source="s")))
    assert [(c["open_time"], c["trades"]) for c in got] == [(60000, 7), (120000, 8)]


def test_merge_sources_orders_by_close_time(load_real: Loader) -> None:
    btc = load_real(SEP_BTC)[:100]
    eth = load_real("ETHUSDT-1m-2025-09-22_2025-09-25.csv")[:100]
    hourly = load_real("BTCUSDT-1h-2017-08-17_2024-04-21.csv")[-3:]
    err = RowError("e.csv", 7, "bad_number", "", "")
    eth_with_error: list[Candle | RowError] = [*eth[:10], err, *eth[10:]]
    merged = list(merge_sources([btc, eth_with_error, hourly]))
    assert len(merged) == 204
    assert merged.index(err) == merged.index(eth[9]) + 1
    candles = [m for m in merged if not isinstance(m, RowError)]
    assert [c["close_time"] for c in candles] == sorted(c["close_time"] for c in candles)
    assert [c["timeframe"] for c in candles[:3]] == ["1h"] * 3  # 2024 comes before 2025
    # equal times: the earlier stream first (BTC before ETH)
    assert [c["symbol"] for c in candles[3:7]] == ["BTCUSDT", "ETHUSDT", "BTCUSDT", "ETHUSDT"]


GARBAGE = st.one_of(
    st.sampled_from(["", "abc", "1e", "--1", "0x10", "1,2", '"', "nan", "-1", "1" * 30, "\x00"]),
    st.text(max_size=6),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupted_rows_never_stop_the_file(load_real: Loader, data: st.DataObject) -> None:
    real = load_real("LTCUSD-1m-2018-04-05_2018-04-06.csv")[:40]
    rows = [
        f"{c['open_time']},{c['open']!r},{c['high']!r},{c['low']!r},{c['close']!r},{c['volume']!r}"
        for c in real
    ]
    bad_rows = data.draw(st.sets(st.integers(0, len(rows) - 1), max_size=8))
    for i in bad_rows:
        cells = rows[i].split(",")
        cells[data.draw(st.integers(0, 5))] = data.draw(GARBAGE)
        rows[i] = ",".join(cells)
    lines = ["open_time_ms,open,high,low,close,volume", *rows]
    items = list(iter_csv_rows(lines, symbol="LTCUSD", timeframe="1m", source="f.csv"))
    for item in items:
        if isinstance(item, RowError):
            assert item.row - 2 in bad_rows, item
    good = [i for i in items if not isinstance(i, RowError)]
    untouched = [real[i]["open_time"] for i in range(len(rows)) if i not in bad_rows]
    assert set(untouched) <= {c["open_time"] for c in good}


@pytest.mark.parametrize("container", ["csv", "zip"])
def test_bytes_that_are_not_utf8_quarantine_only_their_row(tmp_path: Path, container: str) -> None:
    """Real rows with one byte-corrupted row (and a corrupted BOM-less header would be a row too):
    the bad row is a RowError 'bad_encoding' with a printable raw text, every other row reads."""
    src = (DATA / SEP_BTC).read_bytes().splitlines()[:31]
    bad = src[11].split(b",")
    bad[2] = b"11\xff\xfe3.5"
    body = b"\n".join([*src[:11], b",".join(bad), *src[12:]]) + b"\n"
    if container == "csv":
        path = tmp_path / "BTCUSDT-1m-latin1.csv"
        path.write_bytes(body)
    else:
        path = tmp_path / "BTCUSDT-1m-latin1.zip"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("BTCUSDT-1m-latin1.csv", body)
    items = list(read_candles(path))
    errors = [i for i in items if isinstance(i, RowError)]
    assert [(e.row, e.reason) for e in errors] == [(12, "bad_encoding")]
    assert "\\xff\\xfe" in errors[0].raw
    errors[0].raw.encode("utf-8")  # printable: goes into the quarantine table and a Kafka header
    good = [i for i in items if not isinstance(i, RowError)]
    assert len(good) == 29
    assert int(bad[0]) not in {c["open_time"] for c in good}
