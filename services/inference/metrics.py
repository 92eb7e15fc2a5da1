"""Prometheus metrics of the inference service (shared ones, label service="inference", come from
reftrain.observability: consumed/produced messages, DLQ, transactions, batch time, consumer lag).

Counters count work done by this process, including work redone after an aborted transaction; the
exactly-once record of what was published is the ``inference-refs`` topic itself.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_SECONDS = Histogram(
    "reftrain_inference_latency_seconds",
    "Kafka timestamp of the candle message -> its InferenceRef handed to the producer",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
REFS_TOTAL = Counter("reftrain_inference_refs_total", "InferenceRefs emitted", ["series"])
MODEL_VERSION = Gauge("reftrain_inference_model_version", "Model version in use per model key", ["model_key"])
WAITING_FOR_HISTORY = Counter(
    "reftrain_inference_waiting_for_history_total",
    "Candles not predicted because the store holds fewer than window_size candles up to them",
    ["series"],
)
BATCH_SIZE = Histogram(
    "reftrain_inference_batch_size",
    "Windows per predict_batch call (all candles of a transaction that share a model)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
CANDLES_TOTAL = Counter(
    "reftrain_inference_candles_total",
    "Candles handled, by outcome (predicted, waiting_for_history, not_in_store, duplicate, out_of_order, "
    "filtered, bad_window)",
    ["outcome"],
)
GAPPED_WINDOWS = Counter(
    "reftrain_inference_gapped_windows_total",
    "Refs whose window spans more bars than window_size (bars missing inside the range)",
    ["series"],
)
MODEL_LOADS = Counter(
    "reftrain_inference_model_loads_total",
    "Model changes: seed (version 0), store (newest version at start), hot_reload, stale (ignored), failed, "
    "filtered (key not in INFERENCE_SERIES), sha256_mismatch / adapter_mismatch (refused checkpoints), conflict "
    "(a known version announced with another checkpoint: refused; an identical repeat counts as stale)",
    ["outcome"],
)
STORE_READ_SECONDS = Histogram(
    "reftrain_inference_store_read_seconds", "One read_last call (serves all candles of a series in a batch)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
PREDICT_SECONDS = Histogram(
    "reftrain_inference_predict_seconds", "One predict_batch call",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
WINDOWS_TOTAL = Counter(
    "reftrain_inference_windows_total",
    "Candles whose window was taken from the series' ring buffer (memory) or from a store read (store: "
    "the seed after an assignment, the repair after a gap, a late back-fill or a restart)",
    ["source"],
)
