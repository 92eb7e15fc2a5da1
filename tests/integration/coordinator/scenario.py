"""Coordinator inputs built from REAL candles (data/), shared by the integration tests and the bench.

* candles: real exchange candles from data/ (see data/PROVENANCE.md);
* pivots: ``services.pivots.detector.detect_pivots`` over the same candles (what the pivots service
  emits for them);
* refs: SYNTHESISED, one per candle from the 601st on (a 600-candle window ending at that candle,
  target = the next candle in the file). No model runs here: ``window_checksum`` is a fake
  (a hash of the series and time, not of the window's values), predictions and norm params are
  placeholders. The coordinator never reads either, so the join is tested on real timing.

``interleave`` gives the order a live system would publish them in (candle t, then the pivots
confirmed at t, then the ref made at the close of t), with some refs held back until after their
target candle, as a slow inference replica would produce them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from reftrain.records import Candle, InferenceRef, Pivot, inference_id, series_key, stable_id
from reftrain.topics import CANDLES, INFERENCE_REFS, PIVOTS
from services.pivots.detector import detect_pivots
from tests.support import real_candles

WINDOW = 600

Event = tuple[str, str, dict[str, Any]]  # (logical topic, key, value)


def synthetic_ref(candles: list[Candle], i: int, model_key: str | None = None) -> InferenceRef:
    """The ref a model would log at the close of ``candles[i]`` (needs i >= WINDOW - 1); fake checksum."""
    c = candles[i]
    series = series_key(c["symbol"], c["timeframe"])
    key = model_key or series
    end = c["open_time"]
    bar = c["close_time"] + 1 - c["open_time"]
    target = candles[i + 1]["open_time"] if i + 1 < len(candles) else end + bar
    conf = 0.4 + (i % 7) / 20.0
    return InferenceRef(
        inference_id=inference_id(series, end, key, 0),
        model_key=key,
        model_version=0,
        symbol=c["symbol"],
        timeframe=c["timeframe"],
        data_range_start=candles[i - WINDOW + 1]["open_time"],
        data_range_end=end,
        window_size=WINDOW,
        window_checksum=stable_id("fake-window-checksum", series, end),  # no model ran: not a real checksum
        norm_params={"scheme": "logret-v1", "params": {"mean": 0.0, "std": 1.0}},
        predicted_action=("BUY", "SELL", "HOLD")[i % 3],
        action_probs={"buy": conf, "sell": (1 - conf) / 2, "hold": (1 - conf) / 2},
        predicted_candle=None,
        confidence=conf,
        target_timestamp=target,
        created_at=c["close_time"] + 1,
    )


@dataclass
class Series:
    """One series' inputs and the order they are produced in."""

    candles: list[Candle]
    refs: list[InferenceRef]
    pivots: list[Pivot]
    events: list[Event] = field(default_factory=list)

    @property
    def key(self) -> str:
        return series_key(self.candles[0]["symbol"], self.candles[0]["timeframe"])


def build_series(file: str, n: int, seed: int = 7, delay_share: float = 0.15, max_delay: int = 3) -> Series:
    """Real candles of ``file`` (first ``n``), detected pivots, synthesised refs, interleaved."""
    candles = real_candles(file, limit=n)
    pivots = detect_pivots(candles)
    refs = [synthetic_ref(candles, i) for i in range(WINDOW, len(candles))]
    s = Series(candles, refs, pivots)
    s.events = interleave(s, random.Random(seed), delay_share, max_delay)
    return s


def interleave(s: Series, rng: random.Random, delay_share: float, max_delay: int) -> list[Event]:
    """Per candle: the candle, the pivots it confirmed, the ref made at its close; a share of refs
    is delayed by 1..max_delay candles (so it arrives after its target candle)."""
    by_confirm: dict[int, list[Pivot]] = {}
    for p in s.pivots:
        by_confirm.setdefault(p["confirmed_at"], []).append(p)
    ref_at: dict[int, list[InferenceRef]] = {}
    index = {c["open_time"]: i for i, c in enumerate(s.candles)}
    for r in s.refs:
        i = index[r["data_range_end"]]
        d = rng.randint(1, max_delay) if rng.random() < delay_share else 0
        ref_at.setdefault(min(i + d, len(s.candles) - 1), []).append(r)
    out: list[Event] = []
    for i, c in enumerate(s.candles):
        out.append((CANDLES, s.key, dict(c)))
        out.extend((PIVOTS, s.key, dict(p)) for p in by_confirm.get(c["open_time"], []))
        out.extend((INFERENCE_REFS, s.key, dict(r)) for r in ref_at.get(i, []))
    return out


def merge_round_robin(*streams: list[Event]) -> list[Event]:
    """Several series' event lists merged step by step (as concurrent live series would be)."""
    out: list[Event] = []
    iters = [iter(s) for s in streams]
    pending = list(range(len(iters)))
    while pending:
        for k in list(pending):
            try:
                out.append(next(iters[k]))
            except StopIteration:
                pending.remove(k)
    return out
