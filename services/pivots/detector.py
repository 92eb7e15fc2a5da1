"""Multi-level Williams swing pivots: a streaming detector and an independent batch reference.

The rule (docs/pivots.md has the long form and a worked example):

* Level 1. With ``s = strengths[0]``, candle ``i`` is a HIGH iff ``high[i] > high[j]`` for every ``j`` in
  ``i-s .. i+s``, ``j != i``; it is a LOW iff ``low[i] < low[j]`` for those ``j``. Both comparisons are
  STRICT: a tie with any neighbour in the window means no pivot (so a flat double top makes no pivot).
  A candle can be both a HIGH and a LOW (an outside bar); these are two pivots.
* Level k+1. Take the level-k HIGHs in time order. With ``s = strengths[k]``, the level-k HIGH number
  ``i`` is a level-(k+1) HIGH iff its price is strictly above the prices of the ``s`` level-k HIGHs
  before it and the ``s`` after it. LOWs likewise with "strictly below", among level-k LOWs only.
* Neighbours are the candles (pivots) actually received, in order: missing bars are not filled.
* Confirmation. A pivot is confirmed when its right-hand neighbours exist. ``confirmed_at`` is the
  ``open_time`` of the candle whose arrival completed that: for level 1 the s-th candle after the pivot,
  for level k+1 the ``confirmed_at`` of the s-th level-k pivot after it.
* Order of emission: ``(confirmed_at, level, pivot_time, kind)`` with kind ``HIGH`` before ``LOW``.

``PivotDetector`` is the streaming form the service runs; ``detect_pivots`` is a separate vectorised
batch form over a whole series. The tests require the two to agree exactly, so each checks the other.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from enum import StrEnum
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from reftrain.records import TIMEFRAME_MS, Candle, Pivot, PivotKind, pivot_id, series_key

DEFAULT_STRENGTHS: tuple[int, ...] = (2, 2, 2, 2, 2)
"""Neighbours required on each side, per level (index 0 = level 1). Five levels by default."""

STATE_VERSION = 1
"""Version of the ``to_dict`` layout; ``from_dict`` refuses any other."""

KINDS: tuple[PivotKind, PivotKind] = ("HIGH", "LOW")


class CandleOutcome(StrEnum):
    """What the streaming detector did with one candle; the service counts each value."""

    ACCEPTED = "accepted"
    """New candle (open_time after the last accepted one): state advanced, pivots may follow."""
    DUPLICATE = "duplicate"
    """Same open_time and same values as the last accepted candle (a redelivery): ignored."""
    CONFLICT = "conflict"
    """Same open_time as the last accepted candle but different values (a late correction): rejected."""
    OUT_OF_ORDER = "out_of_order"
    """open_time before the last accepted candle: rejected, the past is not rewritten."""
    INVALID = "invalid"
    """high or low not finite, or high < low: rejected (validation upstream should catch it first)."""


class FeedResult(NamedTuple):
    """The outcome for one candle and the pivots it confirmed (empty unless ACCEPTED)."""

    outcome: CandleOutcome
    pivots: list[Pivot]


def validate_strengths(strengths: Sequence[int]) -> tuple[int, ...]:
    """Return the strengths as a tuple, or raise ValueError: at least one level, each >= 1."""
    result = tuple(strengths)
    if not result:
        raise ValueError("strengths must name at least one level")
    for s in result:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ValueError(f"every strength must be an int >= 1, got {result!r}")
    return result


def make_pivot(
    symbol: str,
    timeframe: str,
    level: int,
    kind: PivotKind,
    pivot_time: int,
    price: float,
    confirmed_at: int,
    strength: int,
) -> Pivot:
    """Build the Pivot record with its deterministic id (a replay yields the same id)."""
    return Pivot(
        pivot_id=pivot_id(series_key(symbol, timeframe), level, kind, pivot_time),
        symbol=symbol,
        timeframe=timeframe,
        level=level,
        kind=kind,
        pivot_time=pivot_time,
        price=price,
        confirmed_at=confirmed_at,
        strength=strength,
    )


def pivot_order_key(p: Pivot) -> tuple[int, int, int, str]:
    """The total order in which pivots are emitted: confirmed_at, level, pivot_time, kind."""
    return (p["confirmed_at"], p["level"], p["pivot_time"], p["kind"])


# --------------------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------------------

_Fingerprint = tuple[int, float, float, float, float, float, int | None]


def _fingerprint(candle: Candle) -> _Fingerprint:
    """The values that make two deliveries of one open_time 'the same candle' (source is ignored)."""
    trades = candle.get("trades")
    return (
        int(candle["open_time"]),
        float(candle["open"]),
        float(candle["high"]),
        float(candle["low"]),
        float(candle["close"]),
        float(candle["volume"]),
        None if trades is None else int(trades),
    )


class PivotDetector:
    """Streaming multi-level pivot detector for ONE series, with bounded, serialisable state.

    State: the last ``2*s1+1`` candles (open_time, high, low), and per level k >= 2 and kind the last
    ``2*s_k+1`` level-(k-1) pivots (pivot_time, price): exactly the windows that future pivots are
    decided in. Memory is O(sum of strengths) whatever the series length.
    """

    def __init__(self, symbol: str, timeframe: str, strengths: Sequence[int] = DEFAULT_STRENGTHS) -> None:
        if not symbol:
            raise ValueError("symbol must not be empty")
        if timeframe not in TIMEFRAME_MS:
            raise ValueError(f"unknown timeframe {timeframe!r}")
        self.symbol = symbol
        self.timeframe = timeframe
        self.strengths = validate_strengths(strengths)
        self._last: _Fingerprint | None = None
        self._bars: deque[tuple[int, float, float]] = deque(maxlen=2 * self.strengths[0] + 1)
        # _windows[kind][j] holds level-(j+1) pivots, the candidates for level j+2.
        self._windows: dict[str, list[deque[tuple[int, float]]]] = {
            kind: [deque(maxlen=2 * s + 1) for s in self.strengths[1:]] for kind in KINDS
        }
        self.counts: dict[CandleOutcome, int] = {o: 0 for o in CandleOutcome}

    @property
    def levels(self) -> int:
        return len(self.strengths)

    @property
    def last_open_time(self) -> int | None:
        """open_time of the last accepted candle (None before the first)."""
        return None if self._last is None else self._last[0]

    def on_candle(self, candle: Candle) -> list[Pivot]:
        """Feed one completed candle; return the pivots it confirmed (see ``feed`` for the outcome)."""
        return self.feed(candle).pivots

    def feed(self, candle: Candle) -> FeedResult:
        """Feed one completed candle of this series; classify it and return the pivots it confirmed.

        Only ACCEPTED changes the detection state; every outcome increments ``counts[outcome]``.
        Raises ValueError for a candle of another series: that is a routing bug, not bad data.
        """
        if candle["symbol"] != self.symbol or candle["timeframe"] != self.timeframe:
            raise ValueError(
                f"candle of {candle['symbol']}:{candle['timeframe']} fed to the detector of "
                f"{self.symbol}:{self.timeframe}"
            )
        outcome = self._classify(candle)
        self.counts[outcome] += 1
        if outcome is not CandleOutcome.ACCEPTED:
            return FeedResult(outcome, [])
        fp = _fingerprint(candle)
        self._last = fp
        return FeedResult(outcome, self._advance(fp[0], fp[2], fp[3]))

    def _classify(self, candle: Candle) -> CandleOutcome:
        high, low = float(candle["high"]), float(candle["low"])
        if not (math.isfinite(high) and math.isfinite(low)) or high < low:
            return CandleOutcome.INVALID
        last = self._last
        if last is None or candle["open_time"] > last[0]:
            return CandleOutcome.ACCEPTED
        if candle["open_time"] < last[0]:
            return CandleOutcome.OUT_OF_ORDER
        return CandleOutcome.DUPLICATE if _fingerprint(candle) == last else CandleOutcome.CONFLICT

    def _advance(self, open_time: int, high: float, low: float) -> list[Pivot]:
        bars = self._bars
        bars.append((open_time, high, low))
        out: list[Pivot] = []
        if len(bars) == bars.maxlen:
            s = self.strengths[0]
            ct, ch, cl = bars[s]
            if all(ch > b[1] for i, b in enumerate(bars) if i != s):
                self._confirm(1, "HIGH", ct, ch, open_time, out)
            if all(cl < b[2] for i, b in enumerate(bars) if i != s):
                self._confirm(1, "LOW", ct, cl, open_time, out)
        out.sort(key=pivot_order_key)
        return out

    def _confirm(
        self, level: int, kind: PivotKind, pivot_time: int, price: float, confirmed_at: int, out: list[Pivot]
    ) -> None:
        """Emit a level-``level`` pivot and offer it to the next level's window."""
        out.append(
            make_pivot(
                self.symbol,
                self.timeframe,
                level,
                kind,
                pivot_time,
                price,
                confirmed_at,
                self.strengths[level - 1],
            )
        )
        if level >= self.levels:
            return
        window = self._windows[kind][level - 1]
        window.append((pivot_time, price))
        if len(window) < (window.maxlen or 0):
            return
        s = self.strengths[level]
        ct, cp = window[s]
        if kind == "HIGH":
            promoted = all(cp > w[1] for i, w in enumerate(window) if i != s)
        else:
            promoted = all(cp < w[1] for i, w in enumerate(window) if i != s)
        if promoted:
            self._confirm(level + 1, kind, ct, cp, confirmed_at, out)

    # ---- checkpointing ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The whole state as plain JSON-able data (lists, ints, floats, str, None) for a changelog."""
        return {
            "version": STATE_VERSION,
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "strengths": list(self.strengths),
            "last": None if self._last is None else list(self._last),
            "bars": [list(b) for b in self._bars],
            "windows": {kind: [[list(w) for w in dq] for dq in self._windows[kind]] for kind in KINDS},
            "counts": {o.value: n for o, n in self.counts.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PivotDetector:
        """Restore a detector from ``to_dict`` output; it continues exactly where the original was.

        Raises ValueError on an unknown version or a malformed/oversized state.
        """
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported pivot state version {data.get('version')!r}")
        det = cls(str(data["symbol"]), str(data["timeframe"]), [int(s) for s in data["strengths"]])
        last = data["last"]
        if last is not None:
            if len(last) != 7:
                raise ValueError("malformed 'last' in pivot state")
            trades = last[6]
            det._last = (
                int(last[0]),
                float(last[1]),
                float(last[2]),
                float(last[3]),
                float(last[4]),
                float(last[5]),
                None if trades is None else int(trades),
            )
        bars = data["bars"]
        if len(bars) > (det._bars.maxlen or 0):
            raise ValueError("pivot state holds more candles than its strength allows")
        det._bars.extend((int(t), float(h), float(lo)) for t, h, lo in bars)
        windows = data["windows"]
        for kind in KINDS:
            saved = windows[kind]
            if len(saved) != det.levels - 1:
                raise ValueError(f"pivot state has {len(saved)} {kind} windows, expected {det.levels - 1}")
            for dq, items in zip(det._windows[kind], saved, strict=True):
                if len(items) > (dq.maxlen or 0):
                    raise ValueError("pivot state holds more pivots than its strength allows")
                dq.extend((int(t), float(p)) for t, p in items)
        counts = data.get("counts", {})
        for o in CandleOutcome:
            det.counts[o] = int(counts.get(o.value, 0))
        return det


# --------------------------------------------------------------------------------------------------
# Batch reference (independent of the streaming code on purpose)
# --------------------------------------------------------------------------------------------------


def _strict_extrema(values: npt.NDArray[np.float64], s: int, above: bool) -> npt.NDArray[np.intp]:
    """Indices i with values[i] strictly above (below) values[i-s..i+s] except itself; edges excluded."""
    n = len(values)
    if n < 2 * s + 1:
        return np.empty(0, dtype=np.intp)
    centre = values[s : n - s]
    ok = np.ones(n - 2 * s, dtype=bool)
    for d in range(1, s + 1):
        left = values[s - d : n - s - d]
        right = values[s + d : n - s + d]
        if above:
            ok &= (centre > left) & (centre > right)
        else:
            ok &= (centre < left) & (centre < right)
    return np.flatnonzero(ok) + s


def detect_pivots_arrays(
    open_time: npt.ArrayLike,
    high: npt.ArrayLike,
    low: npt.ArrayLike,
    *,
    symbol: str,
    timeframe: str,
    strengths: Sequence[int] = DEFAULT_STRENGTHS,
) -> list[Pivot]:
    """Every confirmed pivot of a whole series given as arrays, in emission order.

    Candles are treated as level-0 "pivots" confirmed at their own open_time; each level applies the
    strict-extremum test to the previous level's series and takes confirmed_at from the element ``s``
    places to the right. Raises ValueError unless open_time is strictly increasing and high >= low.
    """
    strengths = validate_strengths(strengths)
    times = np.asarray(open_time, dtype=np.int64)
    highs = np.asarray(high, dtype=np.float64)
    lows = np.asarray(low, dtype=np.float64)
    if not (times.shape == highs.shape == lows.shape) or times.ndim != 1:
        raise ValueError("open_time, high and low must be 1-D arrays of one length")
    if len(times) > 1 and not bool(np.all(np.diff(times) > 0)):
        raise ValueError("open_time must be strictly increasing (de-duplicate and sort first)")
    if not (bool(np.all(np.isfinite(highs))) and bool(np.all(np.isfinite(lows)))):
        raise ValueError("high and low must be finite")
    if bool(np.any(highs < lows)):
        raise ValueError("high must be >= low")
    rows: list[tuple[int, int, int, PivotKind, float]] = []
    kind: PivotKind
    for kind, values, above in (("HIGH", highs, True), ("LOW", lows, False)):
        t, p, conf = times, values, times
        for level, s in enumerate(strengths, start=1):
            idx = _strict_extrema(p, s, above)
            if len(idx) == 0:
                break
            t, p, conf = t[idx], p[idx], conf[idx + s]
            rows.extend(
                (int(c), level, int(pt), kind, float(pp)) for c, pt, pp in zip(conf, t, p, strict=True)
            )
    rows.sort(key=lambda r: (r[0], r[1], r[2], r[3]))
    return [
        make_pivot(symbol, timeframe, level, kind_, pt, price, conf_at, strengths[level - 1])
        for conf_at, level, pt, kind_, price in rows
    ]


def detect_pivots(candles: Sequence[Candle], strengths: Sequence[int] = DEFAULT_STRENGTHS) -> list[Pivot]:
    """Every confirmed pivot of a whole, clean series of one symbol/timeframe, in emission order.

    The input must already be what the streaming detector would ACCEPT: strictly increasing open_time,
    finite prices (``accepted_candles`` gives that subsequence from a raw feed).
    """
    if not candles:
        validate_strengths(strengths)
        return []
    symbol, timeframe = candles[0]["symbol"], candles[0]["timeframe"]
    if any(c["symbol"] != symbol or c["timeframe"] != timeframe for c in candles):
        raise ValueError("detect_pivots takes candles of one series only")
    return detect_pivots_arrays(
        [c["open_time"] for c in candles],
        [c["high"] for c in candles],
        [c["low"] for c in candles],
        symbol=symbol,
        timeframe=timeframe,
        strengths=strengths,
    )


def accepted_candles(candles: Sequence[Candle]) -> list[Candle]:
    """The subsequence of a raw feed that the streaming detector accepts: valid high/low and each
    open_time strictly after every earlier accepted one (duplicates, corrections, late bars dropped)."""
    out: list[Candle] = []
    last: int | None = None
    for c in candles:
        h, lo = float(c["high"]), float(c["low"])
        if not (math.isfinite(h) and math.isfinite(lo)) or h < lo:
            continue
        if last is None or c["open_time"] > last:
            out.append(c)
            last = c["open_time"]
    return out
