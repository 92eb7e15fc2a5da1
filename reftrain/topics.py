"""The topic catalogue: the one place that spells topic names, partition counts and configs.

Services ask the catalogue for a topic by its logical name (``CANDLES``), so a test can run the
whole system on randomly prefixed topics and production can add an environment prefix.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # where it is defined (confluent_kafka.admin re-exports it implicitly)

from reftrain import kafka_errors
from reftrain.errors import ConfigError, KafkaAuthError
from reftrain.retry import kafka_error
from reftrain.settings import PlatformSettings

log = logging.getLogger(__name__)

CANDLES = "candles"
PIVOTS = "pivots"
INFERENCE_REFS = "inference-refs"
TRAINING_JOBS = "training-jobs"
MODEL_VERSIONS = "model-versions"

#: Logical topic -> Avro record it carries (fully qualified name in schemas/).
RECORD_OF_TOPIC: dict[str, str] = {
    CANDLES: "reftrain.Candle",
    PIVOTS: "reftrain.Pivot",
    INFERENCE_REFS: "reftrain.InferenceRef",
    TRAINING_JOBS: "reftrain.TrainingJob",
    MODEL_VERSIONS: "reftrain.ModelVersion",
}

#: Topics joined by series in the coordinator: they must have the same partition count.
CO_PARTITIONED: tuple[str, ...] = (CANDLES, PIVOTS, INFERENCE_REFS)

DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication: int
    config: dict[str, str] = field(default_factory=dict)

    def new_topic(self) -> NewTopic:
        return NewTopic(self.name, num_partitions=self.partitions, replication_factor=self.replication,
                        config=dict(self.config))


#: With at least this many brokers, topics get replication factor 3 and min.insync.replicas 2: a
#: broker can die (or restart) without losing an acknowledged record (acks=all) or stopping writes.
REPLICATED_BROKERS = 3


def replication_for(brokers: int, configured: int) -> tuple[int, int | None]:
    """(replication factor, min.insync.replicas or None) for a cluster of ``brokers``.

    TOPIC_REPLICATION wins when set above 1; the default (1) is raised to 3 (min ISR 2) on a cluster
    of >= 3 brokers, so the same settings work on the single-broker stack and on a cluster."""
    if configured > 1:
        return configured, min(2, configured - 1) if configured >= 3 else None
    if brokers >= REPLICATED_BROKERS:
        return 3, 2
    return configured, None


class TopicCatalogue:
    """Physical names and specs of every topic, derived from the platform settings."""

    def __init__(self, settings: PlatformSettings) -> None:
        self.prefix = settings.topic_prefix
        self.partitions = settings.topic_partitions
        self.replication = settings.topic_replication

    def name(self, logical: str) -> str:
        if logical not in RECORD_OF_TOPIC:
            raise ConfigError(f"unknown topic {logical!r}; known: {sorted(RECORD_OF_TOPIC)}")
        return f"{self.prefix}{logical}"

    def dlq(self, logical: str) -> str:
        return f"{self.name(logical)}{DLQ_SUFFIX}"

    def changelog(self, group: str, store: str = "state") -> str:
        """Compacted topic holding a stateful service's state, one partition per input partition.
        Consumer groups already carry the topic prefix (tests, environments); it is not doubled."""
        base = group if group.startswith(self.prefix) else f"{self.prefix}{group}"
        return f"{base}-{store}-changelog"

    def logical_of(self, physical: str) -> str:
        """Inverse of name(); raises ConfigError for a topic outside the catalogue."""
        base = physical[len(self.prefix):] if physical.startswith(self.prefix) else physical
        if base not in RECORD_OF_TOPIC:
            raise ConfigError(f"topic {physical!r} is not in the catalogue")
        return base

    def specs(self) -> list[TopicSpec]:
        specs = []
        for logical in RECORD_OF_TOPIC:
            specs.append(TopicSpec(self.name(logical), self.partitions, self.replication,
                                   {"cleanup.policy": "delete", "retention.ms": "-1"}))
            specs.append(TopicSpec(self.dlq(logical), 1, self.replication,
                                   {"cleanup.policy": "delete", "retention.ms": str(30 * 24 * 3600 * 1000)}))
        return specs

    def changelog_spec(self, group: str, store: str = "state") -> TopicSpec:
        return TopicSpec(self.changelog(group, store), self.partitions, self.replication,
                         {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"})

    def ensure(self, admin: AdminClient, extra: list[TopicSpec] | None = None, timeout: float = 30.0) -> None:
        """Create missing topics (idempotent) and check partition counts and co-partitioning."""
        wanted = self.specs() + list(extra or [])
        metadata = self._metadata(admin, timeout)
        existing = dict(metadata.topics)
        rf, min_isr = replication_for(len(metadata.brokers), self.replication)
        missing = [self._replicated(s, rf, min_isr).new_topic() for s in wanted if s.name not in existing]
        if missing:
            for name, fut in admin.create_topics(missing, operation_timeout=timeout).items():
                try:
                    fut.result()
                    log.info("created topic", extra={"topic": name})
                except Exception as exc:  # TOPIC_ALREADY_EXISTS from a concurrent creator is fine
                    err = kafka_error(exc)
                    if err is None or err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise ConfigError(f"cannot create topic {name}: {exc}") from exc
        self._wait_visible(admin, [s.name for s in wanted], timeout)
        self.check_partitions(admin, timeout)

    @staticmethod
    def _replicated(spec: TopicSpec, rf: int, min_isr: int | None) -> TopicSpec:
        """``spec`` with the cluster's replication (specs() carry the configured factor)."""
        if rf == spec.replication and min_isr is None:
            return spec
        config = dict(spec.config)
        if min_isr is not None:
            config.setdefault("min.insync.replicas", str(min_isr))
        return TopicSpec(spec.name, spec.partitions, rf, config)

    @staticmethod
    def _metadata(admin: AdminClient, timeout: float) -> Any:
        """Metadata in short tries: an AdminClient is never polled, so its 'credentials refused'
        callbacks are delivered here (kafka_errors logs them) and a refusal ends the wait early."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return admin.list_topics(timeout=max(0.5, min(5.0, deadline - time.monotonic())))
            except Exception as exc:
                kafka_errors.serve(admin)
                if kafka_errors.auth_failed_recently(30.0):
                    raise KafkaAuthError(f"Kafka refused the credentials ({exc})") from exc
                if time.monotonic() >= deadline:
                    raise

    @staticmethod
    def _wait_visible(admin: AdminClient, names: list[str], timeout: float) -> None:
        """Creation returns before every broker's metadata shows the topic; wait for it so the
        first consumer/changelog read does not fail with 'Unknown partition'."""
        deadline = time.monotonic() + timeout
        while True:
            topics = admin.list_topics(timeout=timeout).topics
            missing = [n for n in names if n not in topics or not topics[n].partitions or topics[n].error]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise ConfigError(f"topics not visible after {timeout}s: {missing}")
            time.sleep(0.2)

    def check_partitions(self, admin: AdminClient, timeout: float = 30.0) -> None:
        topics = admin.list_topics(timeout=timeout).topics
        counts = {t: len(topics[self.name(t)].partitions) for t in CO_PARTITIONED if self.name(t) in topics}
        if len(set(counts.values())) > 1:
            raise ConfigError(f"co-partitioned topics differ in partition count: {counts}")
