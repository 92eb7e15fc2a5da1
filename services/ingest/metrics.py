"""Prometheus metrics of the ingest service (module level: one registry per process).

Every outcome of an input candle has a counter (docs/semantics.md, rule 10), so an operator can tell "the file had
3 duplicates" from "3 candles were lost". Latency histograms separate the store commit from the
Kafka publish, the two halves of write-before-publish.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

CANDLES_INGESTED = Counter(
    "reftrain_ingest_candles_ingested_total",
    "Candles committed to the store and then published on candles (derived series included)",
    ["series"],
)
INVALID = Counter(
    "reftrain_ingest_invalid_total", "Rows/candles quarantined as invalid, by reason", ["reason"]
)
DUPLICATES = Counter(
    "reftrain_ingest_duplicates_total", "Candles ignored because their open_time was already accepted"
)
OUT_OF_ORDER = Counter(
    "reftrain_ingest_out_of_order_total", "Candles ignored because they are older than the last accepted"
)
GAPS = Counter("reftrain_ingest_gaps_total", "Gaps detected (never filled)", ["series"])
GAP_BARS = Counter("reftrain_ingest_gap_bars_total", "Bars missing in detected gaps", ["series"])
INCOMPLETE_BUCKETS = Counter(
    "reftrain_ingest_incomplete_buckets_total",
    "Higher-timeframe buckets never emitted because base candles are missing",
    ["timeframe"],
)
REPUBLISHED = Counter(
    "reftrain_ingest_republished_total",
    "Stored candles published on start-up because a crash came between store commit and publish",
    ["series"],
)
DLQ_REPUBLISHED = Counter(
    "reftrain_ingest_dlq_republished_total", "Quarantined rows sent to candles.dlq on start-up (repair)"
)
ALREADY_STORED = Counter(
    "reftrain_ingest_already_stored_total",
    "Source candles skipped on a restart because the store already has them",
    ["series"],
)
PUBLISH_SECONDS = Histogram(
    "reftrain_ingest_publish_seconds",
    "Produce one batch to candles and wait for every delivery report",
    buckets=_LATENCY_BUCKETS,
)
STORE_WRITE_SECONDS = Histogram(
    "reftrain_ingest_store_write_seconds",
    "Commit one batch of candles (and indicators) to the store",
    buckets=_LATENCY_BUCKETS,
)
BATCH_CANDLES = Histogram(
    "reftrain_ingest_batch_candles", "Candles per store commit", buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 5000)
)
LAST_OPEN_TIME = Gauge(
    "reftrain_ingest_last_open_time_ms", "open_time of the last candle published, per series", ["series"]
)
WS_CONNECTS = Counter("reftrain_ingest_ws_connects_total", "WebSocket connections established (live mode)")
WS_IDLE_TIMEOUTS = Counter(
    "reftrain_ingest_ws_idle_timeouts_total",
    "WebSocket connections closed and reopened because no message arrived for INGEST_WS_IDLE_TIMEOUT s",
)
WS_IN_PROGRESS = Counter(
    "reftrain_ingest_ws_in_progress_total", "Kline updates of a forming candle, dropped (live mode)"
)
REPLAY_COMPLETE = Gauge(
    "reftrain_ingest_replay_complete", "1 once every file has been replayed, stored and published"
)
QUARANTINED = Counter(
    "reftrain_ingest_quarantined_total",
    "Entries written to the quarantine (store) and candles.dlq: invalid rows and conflicting duplicates",
    ["reason"],
)
