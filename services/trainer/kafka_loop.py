"""The trainer's Kafka side: the ``training-jobs`` consumer group, dead letters, offsets, and
ModelVersion publishing, around the broker-free ``TrainerEngine``.

Why not ``reftrain.streams.StreamApp``: the trainer's exactly-once effect is not a Kafka transaction
but a model checkpoint that records the offsets it covers (docs/semantics.md rule 9, lineage.py). The consumer
therefore seeks, on assignment, to the offset of the partition's manifest instead of the group's
committed offset, and commits offsets to Kafka only as part of a checkpoint (where the commit doubles
as a fence against a member that lost the partition). Consumer-group membership gives "one replica
per model key at a time": the key of ``training-jobs`` is the model key.

Session: any Kafka, store or checkpoint error ends the session: in-memory models and offsets are
dropped WITHOUT a checkpoint, the consumer leaves the group, and a new session reloads every
assigned partition from its manifest. So what a session holds never diverges from a committed state
by more than the work since its last checkpoint, and that work is redone, never counted twice.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any, cast

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from reftrain import observability as obs
from reftrain.errors import DecodeError, InvalidRecordError, KafkaBoundaryError, StoreError
from reftrain.records import ModelVersion, TrainingJob
from reftrain.schemas import CONTENT_TYPE_HEADER
from reftrain.serde import RegistryUnavailableError
from reftrain.service import restart_on
from reftrain.settings import PlatformSettings, kafka_client_config
from reftrain.streams import Serdes, consumer_config, coordinates, dead_letter, producer_config
from reftrain.topics import MODEL_VERSIONS, TRAINING_JOBS, TopicCatalogue
from services.trainer.batch import PendingJob
from services.trainer.config import SERVICE, TrainerSettings, group_id
from services.trainer.engine import EngineStore, TrainerEngine
from services.trainer.lineage import ManifestConflict

log = logging.getLogger(__name__)

#: Errors that end a session (state dropped, partitions reloaded from their manifests); anything
#: else is a bug and stops the service.
SESSION_ERRORS = (KafkaException, KafkaBoundaryError, StoreError, ManifestConflict, RegistryUnavailableError,
                  OSError)


class TrainerLoop:
    """``python -m services.trainer``'s main loop."""

    def __init__(self, platform: PlatformSettings, settings: TrainerSettings, store: EngineStore,
                 health: obs.Health, engine: TrainerEngine | None = None) -> None:
        self.platform = platform
        self.settings = settings
        self.health = health
        self.catalogue = TopicCatalogue(platform)
        self.topic = self.catalogue.name(TRAINING_JOBS)
        self.group = group_id(platform.topic_prefix)
        self.serdes = Serdes(platform, self.catalogue)
        self.job_serde = self.serdes.for_topic(TRAINING_JOBS)
        self.version_serde = self.serdes.for_topic(MODEL_VERSIONS)
        self.engine = engine or TrainerEngine(store, settings, group=self.group, topic=self.topic,
                                              publish=self._publish, warm_up=True)
        self.engine.publish = self._publish
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._delivery_errors: list[str] = []
        log.info("trainer engine", extra={"device": str(self.engine.device), "amp": self.engine.amp,
                                          "group": self.group, "topic": self.topic,
                                          "settings": settings.as_dict()})

    # -- lifecycle -----------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        def session() -> None:
            # idempotent; inside the retry so a broker that is still starting is waited for
            self.catalogue.ensure(AdminClient(kafka_client_config(self.platform)))
            self._session(stop)

        restart_on(SESSION_ERRORS, session, service=SERVICE, stop=stop, health=self.health)

    def _session(self, stop: threading.Event) -> None:
        producer = Producer(producer_config(self.platform, **{
            "client.id": f"{self.group}-producer", "on_delivery": self._on_delivery}))
        consumer = Consumer(consumer_config(self.platform, self.group, **self._membership()))
        self._producer, self._consumer = producer, consumer
        graceful = False
        try:
            consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                               on_lost=self._on_lost)
            last_export = 0.0
            while not stop.is_set():
                msgs = consumer.consume(self.settings.fetch_jobs, self.settings.poll_timeout_s)
                self.health.beat()
                if msgs:
                    self._handle(msgs)
                for p in self.engine.due():
                    self._checkpoint(p)
                if time.monotonic() - last_export > 5:
                    self._export_lag(consumer)
                    self.engine.export_device_metrics()
                    last_export = time.monotonic()
            for p in sorted(self.engine.parts):  # SIGTERM: drain = checkpoint everything, then leave
                self._checkpoint(p)
            graceful = True
        finally:
            if not graceful:
                log.warning("trainer session ends without a checkpoint; partitions resume from their manifests")
            self.engine.release_all()  # nothing uncommitted may be checkpointed by the revoke in close()
            with contextlib.suppress(Exception):
                consumer.close()  # leaves the group: partitions move at once
            producer.flush(10)
            self._producer = self._consumer = None

    def _membership(self) -> dict[str, Any]:
        """Static group membership (KIP-345) when INSTANCE_ID is set: a replica restarted after a
        crash takes its partitions back at once, without waiting out the session of its dead self or
        moving every other replica's partitions. A stale process with the same id is fenced by the
        group (its offset commit, our checkpoint fence, fails)."""
        conf: dict[str, Any] = {"client.id": f"{self.group}-consumer"}
        if self.platform.instance_id:
            conf["group.instance.id"] = f"{self.group}-{self.platform.instance_id}"
        return conf

    # -- rebalance callbacks (run inside consume(), between two passes) ------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            next_offset = self.engine.assign(tp.partition)
            tp.offset = next_offset if next_offset is not None else OFFSET_BEGINNING
        consumer.assign(partitions)
        log.info("partitions assigned", extra={"partitions": {tp.partition: tp.offset for tp in partitions}})
        self.health.set_ready(True)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            if tp.partition not in self.engine.parts:
                continue
            try:
                self._checkpoint(tp.partition)  # the next owner starts exactly where this one stopped
            finally:
                self.engine.release(tp.partition)
        log.info("partitions revoked", extra={"partitions": sorted(tp.partition for tp in partitions)})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """The group moved the partitions already (session timeout): checkpointing now could race the
        new owner, so drop the uncommitted work; the new owner redoes it from the manifest."""
        for tp in partitions:
            self.engine.release(tp.partition)
        log.warning("partitions lost", extra={"partitions": sorted(tp.partition for tp in partitions)})

    # -- one consumed pass ---------------------------------------------------------------------
    def _handle(self, msgs: list[Message]) -> None:
        pending: list[PendingJob] = []
        raw: dict[tuple[int, int], Message] = {}
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error", extra={"error": str(err)})
                continue
            p, offset = coordinates(msg)
            if not self.engine.accept(p, offset):
                continue
            obs.MESSAGES_CONSUMED.labels(SERVICE, TRAINING_JOBS).inc()
            try:
                job = self._decode(msg)
            except (DecodeError, InvalidRecordError) as exc:
                self._dead_letter(msg, exc)
                continue
            pending.append(PendingJob(p, offset, job))
            raw[(p, offset)] = msg
        for rejection in self.engine.process(pending):
            msg = raw[(rejection.partition, rejection.offset)]
            assert self._producer is not None
            dead_letter(self._producer, self.catalogue, SERVICE, msg, rejection.error)

    def _decode(self, msg: Message) -> TrainingJob:
        """The job as the serde decoded it; its content is checked per job by services.trainer.batch."""
        job = cast(TrainingJob, self.job_serde.decode(msg.value()))
        raw_key = msg.key()
        try:
            key = raw_key.decode("utf-8") if raw_key is not None else None
        except UnicodeDecodeError as exc:
            raise DecodeError(f"key is not UTF-8: {exc}") from exc
        if key != job["model_key"]:
            # The key decides the partition, hence the owner: a job keyed otherwise could be trained
            # by two replicas at once.
            raise InvalidRecordError("key_mismatch", f"message key {key!r} != model_key {job['model_key']!r}")
        return job

    def _dead_letter(self, msg: Message, exc: Exception) -> None:
        assert self._producer is not None
        dead_letter(self._producer, self.catalogue, SERVICE, msg, exc)
        self.engine.reject(*coordinates(msg), str(getattr(exc, "reason", type(exc).__name__)))

    # -- checkpoint plumbing -------------------------------------------------------------------
    def _checkpoint(self, partition: int) -> None:
        self.engine.checkpoint(partition, self._before_commit)

    def _before_commit(self, partition: int, next_offset: int) -> None:
        """Dead letters durable, then the offsets committed synchronously: refused (raises) when this
        member no longer owns the partition in the group's current generation."""
        assert self._producer is not None and self._consumer is not None
        remaining = self._producer.flush(30)
        if remaining or self._delivery_errors:
            errors, self._delivery_errors = self._delivery_errors, []
            raise KafkaBoundaryError(f"{remaining} messages unconfirmed, {len(errors)} failed: {errors[:3]}")
        result = self._consumer.commit(offsets=[TopicPartition(self.topic, partition, next_offset)],
                                       asynchronous=False)
        for tp in result or []:
            if tp.error is not None:
                raise KafkaException(tp.error)

    def _publish(self, version: ModelVersion) -> None:
        producer = self._producer
        if producer is None:  # engine used outside a session (tests): nothing to publish to
            return
        producer.produce(self.version_serde.topic, key=version["model_key"].encode(),
                         value=self.version_serde.encode(dict(version)),
                         headers=[(CONTENT_TYPE_HEADER, self.version_serde.content_type.encode())])
        obs.MESSAGES_PRODUCED.labels(SERVICE, MODEL_VERSIONS).inc()
        if producer.flush(30):
            raise KafkaBoundaryError("ModelVersion not confirmed within 30 s")

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._delivery_errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    def _export_lag(self, consumer: Consumer) -> None:
        try:
            for tp in consumer.position(consumer.assignment()):
                _, hi = consumer.get_watermark_offsets(tp, cached=True)
                if tp.offset >= 0 and hi >= 0:
                    obs.CONSUMER_LAG.labels(SERVICE, TRAINING_JOBS, str(tp.partition)).set(max(0, hi - tp.offset))
        except KafkaException:
            pass
