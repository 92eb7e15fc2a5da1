"""The plot command runs headless (Agg) on a real file and writes a PNG."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.pivots.plot import main

DATA = Path(__file__).resolve().parents[3] / "data"


def test_plot_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "img" / "p.png"
    csv = DATA / "LTCUSD-1m-2018-04-05_2018-04-06.csv"
    assert main(["--csv", str(csv), "--levels", "3", "--out", str(out), "--last", "300"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "300 candles" in capsys.readouterr().out


def test_plot_refuses_more_levels_than_strengths(tmp_path: Path) -> None:
    csv = DATA / "LTCUSD-1m-2018-04-05_2018-04-06.csv"
    with pytest.raises(SystemExit):
        main(["--csv", str(csv), "--levels", "3", "--strengths", "2,2", "--out", str(tmp_path / "x.png")])
