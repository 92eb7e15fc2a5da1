"""The reliability diagram of make backtest and the make-run report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ops import plots
from ops.scoring import reliability


def test_reliability_diagram_is_drawn_from_the_scoring_table(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)  # synthetic confidences: the property is about drawing, not markets
    conf = rng.uniform(0.34, 0.9, 500)
    correct = rng.uniform(0, 1, 500) < conf
    out = plots.reliability(reliability(conf, correct), tmp_path / "rel.png", title="test")
    assert out is not None and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_nothing_to_draw_without_scored_predictions(tmp_path: Path) -> None:
    assert plots.reliability(None, tmp_path / "a.png") is None
    assert plots.reliability(reliability(np.array([]), np.array([], dtype=bool)), tmp_path / "b.png") is None
    assert not list(tmp_path.iterdir())
