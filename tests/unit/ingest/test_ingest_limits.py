"""Ingest input limits (services/ingest/limits.py) on real data files with one property changed:
a line longer than the limit is one quarantined row and the file goes on; a zip whose CSV declares
more than the uncompressed-size limit is refused before the first row; symbols must be
[A-Z0-9]{2,20} and distinct series are capped."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from services.ingest import limits
from services.ingest.sources import RowError, SourceFormatError, read_candles

DATA = Path(__file__).resolve().parents[3] / "data"
BTC = "BTCUSDT-1m-2025-10-29_2025-11-01.csv"


def test_overlong_line_is_one_row_error_and_the_file_goes_on(tmp_path: Path) -> None:
    header, *rows = (DATA / BTC).read_text().splitlines()[:21]
    src = tmp_path / BTC
    # synthetic: a 2 MB line (no real file has one) between real rows
    src.write_text("\n".join([header, *rows[:10], "9" * 2_000_000, *rows[10:]]) + "\n")
    items = list(read_candles(src))
    errors = [i for i in items if isinstance(i, RowError)]
    assert [(e.row, e.reason) for e in errors] == [(12, "line_too_long")]
    assert "2000000 characters" in errors[0].detail and len(errors[0].raw) <= 200
    assert len(items) - 1 == len(rows)  # every real row still read


def test_bounded_lines_never_returns_more_than_the_limit() -> None:
    out = list(limits.bounded_lines(io.StringIO("ab\n" + "x" * 50 + "\ncd"), max_chars=10))
    assert out == ["ab\n", "x" * 10, "cd"]
    assert isinstance(out[1], limits.OverlongLine) and out[1].length == 50


def test_zip_declaring_more_than_the_limit_is_refused_before_any_row(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGEST_MAX_ZIP_UNCOMPRESSED_BYTES", "1000000")
    z = tmp_path / "BTCUSDT-1m-2025-10.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        # 5 MB of one byte compress to ~5 kB: a small zip bomb (synthetic by nature)
        zf.writestr("BTCUSDT-1m-2025-10.csv", (DATA / BTC).read_text() + "0" * 5_000_000)
    assert z.stat().st_size < 200_000
    with pytest.raises(SourceFormatError, match="INGEST_MAX_ZIP_UNCOMPRESSED_BYTES"):
        next(iter(read_candles(z)))
    monkeypatch.setenv("INGEST_MAX_ZIP_UNCOMPRESSED_BYTES", str(10_000_000))
    assert sum(1 for _ in read_candles(z)) > 4000  # under the limit it reads


@pytest.mark.parametrize("symbol,ok", [("BTCUSDT", True), ("1000SHIBUSDT", True), ("btcusdt", False),
                                       ("BTC-USD", False), ("X", False), ("A" * 21, False), ("", False),
                                       ("BTC\u00a0USDT", False), (None, False)])
def test_symbol_format(symbol: object, ok: bool) -> None:
    gate = limits.SymbolGate(max_series=10)
    refused = gate.refuse(symbol, "1m")
    assert (refused is None) == ok
    if not ok:
        assert refused is not None and refused[0] == "bad_symbol"


def test_series_count_is_capped() -> None:
    gate = limits.SymbolGate(max_series=2)
    assert gate.refuse("BTCUSDT", "1m") is None and gate.refuse("ETHUSDT", "1m") is None
    assert gate.refuse("BTCUSDT", "1m") is None  # known series stay admitted
    refused = gate.refuse("LTCUSDT", "1m")
    assert refused is not None and refused[0] == "too_many_series"
