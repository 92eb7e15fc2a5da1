"""Domain validation of decoded records. Avro only checks types: a flipped bit in a double
still decodes, so every consumer validates values before trusting them."""

from __future__ import annotations

import math
from typing import Any

from reftrain.errors import InvalidRecordError
from reftrain.records import ACTIONS, TIMEFRAME_MS


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def validate_candle(c: dict[str, Any]) -> None:
    """Raise InvalidRecordError(reason) unless ``c`` is a plausible completed candle."""
    tf = c.get("timeframe")
    if tf not in TIMEFRAME_MS:
        raise InvalidRecordError("unknown_timeframe", repr(tf))
    if not c.get("symbol"):
        raise InvalidRecordError("empty_symbol")
    o, h, low, cl, v = c["open"], c["high"], c["low"], c["close"], c["volume"]
    if not all(_finite(x) for x in (o, h, low, cl)):
        raise InvalidRecordError("non_finite_price", f"o={o} h={h} l={low} c={cl}")
    if min(o, h, low, cl) <= 0:
        raise InvalidRecordError("non_positive_price", f"o={o} h={h} l={low} c={cl}")
    if not _finite(v):
        raise InvalidRecordError("non_finite_volume", repr(v))
    if v < 0:
        raise InvalidRecordError("negative_volume", repr(v))
    if h < low:
        raise InvalidRecordError("high_below_low", f"h={h} l={low}")
    if h < max(o, cl):
        raise InvalidRecordError("high_below_body", f"h={h} o={o} c={cl}")
    if low > min(o, cl):
        raise InvalidRecordError("low_above_body", f"l={low} o={o} c={cl}")
    bar = TIMEFRAME_MS[tf]
    if c["open_time"] % bar != 0:
        raise InvalidRecordError("misaligned_open_time", f"{c['open_time']} % {bar} != 0")
    if c["close_time"] != c["open_time"] + bar - 1:
        raise InvalidRecordError("bad_close_time", f"{c['close_time']} != open_time + {bar} - 1")
    trades = c.get("trades")
    if trades is not None and trades < 0:
        raise InvalidRecordError("negative_trades", repr(trades))


def validate_pivot(p: dict[str, Any]) -> None:
    if p.get("timeframe") not in TIMEFRAME_MS:
        raise InvalidRecordError("unknown_timeframe", repr(p.get("timeframe")))
    if p["level"] < 1:
        raise InvalidRecordError("bad_level", repr(p["level"]))
    if not _finite(p["price"]) or p["price"] <= 0:
        raise InvalidRecordError("bad_price", repr(p["price"]))
    if p["confirmed_at"] <= p["pivot_time"]:
        raise InvalidRecordError("confirmed_before_pivot", f"{p['confirmed_at']} <= {p['pivot_time']}")
    if p["pivot_time"] % TIMEFRAME_MS[p["timeframe"]] != 0:
        raise InvalidRecordError("misaligned_pivot_time", repr(p["pivot_time"]))


def validate_inference_ref(r: dict[str, Any]) -> None:
    if r.get("timeframe") not in TIMEFRAME_MS:
        raise InvalidRecordError("unknown_timeframe", repr(r.get("timeframe")))
    if r["window_size"] < 1:
        raise InvalidRecordError("bad_window_size", repr(r["window_size"]))
    if r["data_range_start"] > r["data_range_end"]:
        raise InvalidRecordError("bad_range", f"{r['data_range_start']} > {r['data_range_end']}")
    if r["target_timestamp"] <= r["data_range_end"]:
        raise InvalidRecordError("look_ahead", "target_timestamp must be after data_range_end")
    if r["predicted_action"] not in ACTIONS:
        raise InvalidRecordError("bad_action", repr(r["predicted_action"]))
    probs = r["action_probs"]
    if not all(_finite(x) and 0.0 <= x <= 1.0 for x in probs.values()):
        raise InvalidRecordError("bad_probs", repr(probs))
    if not all(_finite(x) for x in r["norm_params"]["params"].values()):
        raise InvalidRecordError("non_finite_norm_params")
