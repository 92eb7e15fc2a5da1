"""Prometheus metrics of the pivots service (the shared ones, with label service="pivots", come from
reftrain.observability: consumed/produced messages, DLQ, transactions, batch time, consumer lag).

Counters are per process and count work done, including work redone after a crash or an aborted
transaction; the exactly-once record of what was emitted is the ``pivots`` topic itself.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PIVOTS_TOTAL = Counter("reftrain_pivots_total", "Confirmed pivots emitted", ["level", "kind"])
CANDLES_TOTAL = Counter(
    "reftrain_pivots_candles_total",
    "Candles fed to the detector, by outcome (accepted, duplicate, conflict, out_of_order, invalid)",
    ["outcome"],
)
CONFIRMATION_DELAY_BARS = Histogram(
    "reftrain_pivots_confirmation_delay_bars",
    "confirmed_at - pivot_time of emitted pivots, in bars of the series' timeframe (gaps included)",
    ["level"],
    buckets=(2, 3, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000),
)
PROCESSING_LAG_SECONDS = Histogram(
    "reftrain_pivots_processing_lag_seconds",
    "Wall time from the close of the confirming candle (close_time) to the pivot's emission",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400, 30 * 86400),
)
STORE_WRITE_SECONDS = Histogram(
    "reftrain_pivots_store_write_seconds",
    "One append_pivots call (all pivots of one transaction) to the store",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
STATE_DISCARDED = Counter(
    "reftrain_pivots_state_discarded_total",
    "Restored detector states thrown away (strengths_changed, unreadable)",
    ["reason"],
)
SERIES = Gauge("reftrain_pivots_series", "Series with a detector on this instance")
