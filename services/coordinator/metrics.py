"""Prometheus metrics of the coordinator (the shared ones, with label service="coordinator", come from
reftrain.observability: consumed/produced messages, DLQ, transactions, batch time, consumer lag,
readiness, restored state keys).

Counters are per process and count work done, including work redone after a crash or an aborted
transaction (a replayed input is counted again); the exactly-once record of what was emitted is the
``training-jobs`` topic itself. Gauges describe this instance's assigned partitions.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PENDING_REFS = Gauge("reftrain_coordinator_pending_refs",
                     "Refs in state on this instance (waiting for their candle, pivots or expiry)")
STATE_SIZE = Gauge("reftrain_coordinator_state_size",
                   "State keys held on this instance, by kind (ref, candle, pivot, series, total)", ["kind"])
JOBS_TOTAL = Counter("reftrain_coordinator_jobs_total", "Training jobs emitted (committed or not)",
                     ["trigger"])
EXPIRED_TOTAL = Counter("reftrain_coordinator_expired_total",
                        "Refs dropped from state, by reason (joined: had its CANDLE job; "
                        "no_target_candle: its target candle never came)", ["reason"])
LATE_INPUTS_TOTAL = Counter("reftrain_coordinator_late_inputs_total",
                            "Inputs ignored because their series' watermark was more than max_lag past "
                            "their event time", ["kind"])
INPUTS_TOTAL = Counter("reftrain_coordinator_inputs_total",
                       "Decoded inputs by kind and outcome (accepted, duplicate, conflict, late, invalid, "
                       "slow_confirmation)", ["kind", "outcome"])
EVICTED_TOTAL = Counter("reftrain_coordinator_evicted_total",
                        "Candles and pivots dropped from state once no future input can join them", ["kind"])
JOIN_LATENCY = Histogram(
    "reftrain_coordinator_join_latency_seconds",
    "From the Kafka timestamp of the input that completed a join (the later of the pair) to the commit "
    "of the transaction that published the job",
    ["trigger"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
HELD_RECORDS = Gauge("reftrain_coordinator_held_records",
                     "Records consumed but held back by event-time alignment, by input topic", ["topic"])
ALIGNMENT_TIMEOUTS = Counter("reftrain_coordinator_alignment_timeouts_total",
                             "Times a held record stopped waiting for an input partition that was neither "
                             "caught up nor delivering (align_max_wait_ms passed)", ["topic"])
PAUSES_TOTAL = Counter("reftrain_coordinator_alignment_pauses_total",
                       "Times an input topic-partition was paused because alignment held more than "
                       "align_max_buffered of its records", ["topic"])
PAUSED_PARTITIONS = Gauge("reftrain_coordinator_paused_partitions",
                          "Input topic-partitions paused because alignment holds too many of their records")
