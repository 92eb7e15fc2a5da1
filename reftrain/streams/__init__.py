"""reftrain.streams: the project's one Kafka runtime (docs/platform.md, "The runtime").

* runtime.py: ``StreamApp`` (the consume-process loop and its sessions), ``Context``, ``Processor``;
* release.py: the release policies, ``ArrivalOrder`` and ``EventTimeAligned``;
* commit.py: the commit policies, ``KafkaTransaction`` and ``CheckpointOffsets``;
* kafka.py: the building blocks every Kafka client here uses (client configs, serdes, dead
  letters, delivery accounting, transactional calls, lag export, a one-shot range read).

Everything is importable from ``reftrain.streams`` directly.
"""

from reftrain.streams.commit import CheckpointOffsets, Checkpoints, CommitPolicy, Fence, KafkaTransaction
from reftrain.streams.kafka import (
    FAILPOINT_STAGES,
    MAX_MESSAGE_BYTES,
    NO_FAILPOINT,
    Deliveries,
    Record,
    RestartSession,
    Serdes,
    abort_transaction,
    commit_transaction,
    consumer_config,
    coordinates,
    dead_letter,
    default_instance_id,
    dlq_value,
    error_headers,
    export_lag,
    init_transactions,
    is_record,
    message_headers,
    produce,
    producer_config,
    raise_on_kafka_error,
    read_span,
)
from reftrain.streams.release import AlignmentMetrics, ArrivalOrder, EventTimeAligned, ReleasePolicy
from reftrain.streams.runtime import Context, Processor, Session, StreamApp

__all__ = [
    "FAILPOINT_STAGES", "MAX_MESSAGE_BYTES", "NO_FAILPOINT",
    "AlignmentMetrics", "ArrivalOrder", "CheckpointOffsets", "Checkpoints", "CommitPolicy", "Context",
    "Deliveries", "EventTimeAligned", "Fence", "KafkaTransaction", "Processor", "Record", "ReleasePolicy",
    "RestartSession", "Serdes", "Session", "StreamApp",
    "abort_transaction", "commit_transaction", "consumer_config", "coordinates", "dead_letter",
    "default_instance_id", "dlq_value", "error_headers", "export_lag", "init_transactions", "is_record",
    "message_headers", "produce", "producer_config", "raise_on_kafka_error", "read_span",
]
