"""Prometheus metrics of the trainer (prefix ``reftrain_trainer_``; the shared ones with label
service="trainer" come from reftrain.observability: consumed/produced messages, DLQ, consumer lag,
readiness).

Counters are per process and count work done, including work redone after a crash (a job trained
by a process that died before its checkpoint is counted again by the next owner); the exactly-once
record of what trained is the checkpoint lineage (services/trainer/lineage.py).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOBS_TRAINED = Counter("reftrain_trainer_jobs_trained_total", "Jobs that went through an optimiser step",
                       ["trigger"])
REJECTED = Counter("reftrain_trainer_rejected_total",
                   "Jobs that never train, by reason (window_missing, row_count_mismatch, checksum_mismatch, "
                   "bad_norm_params, key_mismatch, invalid job fields, DecodeError, ...); each is dead-lettered",
                   ["reason"])
SKIPPED = Counter("reftrain_trainer_skipped_total",
                  "Jobs delivered below their partition's recorded offset (already in the lineage): ignored")
LOSS = Gauge("reftrain_trainer_loss", "Loss of the last optimiser step", ["model_key"])
SAMPLES_PER_SECOND = Gauge("reftrain_trainer_samples_per_second",
                           "Samples trained per second over the last consumed pass (fetch + verify + train)")
WINDOW_FETCH_SECONDS = Histogram(
    "reftrain_trainer_window_fetch_seconds",
    "Fetching (store or cache) and verifying the windows of one consumed pass",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
WINDOW_ROWS_READ = Counter("reftrain_trainer_window_rows_read_total", "Candle rows read from the store")
WINDOW_CACHE = Counter("reftrain_trainer_window_cache_total",
                       "Windows served, by source (cache: sliced from memory; reread: a cache slice "
                       "failed verification and the range was read again directly)", ["source"])
CHECKPOINT_AGE = Gauge("reftrain_trainer_checkpoint_age_seconds",
                       "Seconds since the partition's last checkpoint (or its assignment)", ["partition"])
CHECKPOINTS = Counter("reftrain_trainer_checkpoints_total",
                      "Partition checkpoints, by outcome (committed, fenced, conflict, empty)", ["outcome"])
CHECKPOINT_SECONDS = Histogram("reftrain_trainer_checkpoint_seconds", "One partition checkpoint, end to end",
                               buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
MODEL_VERSION = Gauge("reftrain_trainer_model_version", "Latest committed version of a model on this instance",
                      ["model_key"])
LINEAGE_ANOMALIES = Counter("reftrain_trainer_lineage_anomalies_total",
                            "The store knows a newer version of a model than its partition manifest "
                            "(another writer or a changed partition count): investigate", ["model_key"])
GPU_UTILIZATION = Gauge("reftrain_trainer_gpu_utilization", "GPU utilisation percent (CUDA only)")
GPU_MEMORY_BYTES = Gauge("reftrain_trainer_gpu_memory_bytes", "GPU memory allocated by torch (CUDA only)",
                         ["kind"])
PARTITIONS = Gauge("reftrain_trainer_partitions", "training-jobs partitions owned by this instance")
