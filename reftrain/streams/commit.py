"""Commit policies: how a session's work becomes durable, where an assigned partition starts, and
what a revocation or a clean stop must do first (docs/platform.md, "The runtime").

* :class:`KafkaTransaction` (pivots, inference, coordinator; Kafka's EOS v2, KIP-447): each unit
  of work is one transaction holding its outputs, its changelog writes, its dead letters and the
  consumed offsets; state is restored from the changelog, positions from the group's offsets.
* :class:`CheckpointOffsets` (trainer): progress becomes durable in a checkpoint of the service's
  own (a model manifest that records the offset it covers). A partition starts at its checkpoint's
  offset, messages the checkpoint covers are skipped, and the checkpoint commits that offset to
  the group synchronously before its commit point: the group refuses a member that lost the
  partition, so the commit doubles as a fence.

Anything that fails inside either protocol ends the session (StreamApp): in-memory state is
dropped and the next session starts again from what was committed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from reftrain import observability as obs
from reftrain.failpoint import Failpoint
from reftrain.streams.kafka import (
    FAILPOINT_STAGES,
    NO_FAILPOINT,
    Deliveries,
    abort_transaction,
    commit_transaction,
    consumer_config,
    init_transactions,
)

if TYPE_CHECKING:
    from reftrain.streams.runtime import Context, Session, StreamApp

log = logging.getLogger(__name__)


class CommitPolicy(Protocol):
    """What StreamApp asks of a commit policy; every call runs on the session's thread (rebalance
    callbacks included: librdkafka runs them inside the poll)."""

    def bind(self, app: StreamApp) -> None:
        """Once, before the first session."""

    def client_config(self, deliveries: Deliveries) -> tuple[dict[str, Any], dict[str, Any]]:
        """Extra producer and consumer settings of a session (``deliveries``: its delivery account)."""

    def start(self, session: Session) -> None:
        """The session's clients exist; nothing is subscribed yet."""

    def restore(self, session: Session, partitions: list[TopicPartition], new: list[int]) -> dict[int, dict[str, Any]]:
        """Partitions were assigned: decide where they start; return the committed state of the
        ``new`` ones (key -> value) for the processor."""

    def accepts(self, partition: int, offset: int) -> bool:
        """False for a message that committed progress already covers (skipped, not processed)."""

    def begin(self, session: Session) -> None:
        """A unit of work releases or dead-letters its first message."""

    def commit(self, session: Session, offsets: list[TopicPartition]) -> None:
        """The unit of work is done (processor's ``end_batch`` included); ``offsets``: what it covers."""

    def abort(self, session: Session) -> None:
        """The unit of work failed; the session ends after this."""

    def revoke(self, session: Session, partitions: Sequence[int], lost: bool) -> None:
        """Partitions leave this member (``lost``: the group already gave them to another)."""

    def tick(self, session: Session) -> None:
        """After every poll, work or not (time-based commits)."""

    def drain(self, session: Session, partitions: Sequence[int]) -> None:
        """A clean stop: make everything done so far durable."""

    def close(self, session: Session, graceful: bool) -> None:
        """The session ends (``graceful``: after ``drain``)."""


# -- a Kafka transaction with the offsets ---------------------------------------------------------
@dataclass
class KafkaTransaction:
    """One Kafka transaction per unit of work: outputs, changelog writes, dead letters and the
    consumed offsets become visible together or not at all. ``transactional.id`` is
    ``<group>-<instance id>``, so a restarted instance fences its previous incarnation and aborts
    its open transaction."""

    timeout_ms: int = 15_000  #: transaction.timeout.ms
    _app: StreamApp | None = field(default=None, init=False, repr=False)
    failpoint: Failpoint = field(default=NO_FAILPOINT, init=False, repr=False)

    def bind(self, app: StreamApp) -> None:
        self._app = app
        # FAILPOINT=<stage>:<n> (reftrain.failpoint): a kill -9 inside the commit, for fault tests
        self.failpoint = Failpoint(app.platform.failpoint, FAILPOINT_STAGES)

    @property
    def app(self) -> StreamApp:
        if self._app is None:
            raise RuntimeError("KafkaTransaction used before StreamApp bound it")
        return self._app

    def client_config(self, deliveries: Deliveries) -> tuple[dict[str, Any], dict[str, Any]]:
        # a transaction's deliveries are confirmed by its commit: no per-message accounting
        return {"transactional.id": f"{self.app.group}-{self.app.instance_id}",
                "transaction.timeout.ms": self.timeout_ms}, {}

    def start(self, session: Session) -> None:
        init_transactions(session.producer, self.app.watchdog)

    def restore(self, session: Session, partitions: list[TopicPartition], new: list[int]) -> dict[int, dict[str, Any]]:
        if self.app.changelog is None:
            return {}
        if partitions:
            # An offset fetch under read_committed waits for the previous owner's pending
            # transaction (KIP-447), so the changelog read below matches the committed offsets.
            session.consumer.committed(partitions, timeout=60)
        return {p: self._read_changelog(self.app.changelog, p) for p in new}

    def _read_changelog(self, changelog: str, partition: int) -> dict[str, Any]:
        """The partition's state: its compacted changelog read to the end (None values delete)."""
        restorer = Consumer(consumer_config(self.app.platform, f"{self.app.group}-restore", **{
            "enable.auto.offset.store": False}))
        try:
            tp = TopicPartition(changelog, partition)
            lo, hi = restorer.get_watermark_offsets(tp, timeout=10)
            state: dict[str, Any] = {}
            if hi <= lo:
                return state
            restorer.assign([TopicPartition(changelog, partition, lo)])
            while True:
                pos = restorer.position([tp])[0].offset
                if pos >= hi:
                    break
                for m in restorer.consume(1000, 0.5):
                    if m.error():
                        continue
                    key = (m.key() or b"").decode()
                    data = m.value()
                    if data is None:
                        state.pop(key, None)
                    else:
                        state[key] = json.loads(data)
            return state
        finally:
            restorer.close()

    def accepts(self, partition: int, offset: int) -> bool:
        return True

    def begin(self, session: Session) -> None:
        session.producer.begin_transaction()

    def commit(self, session: Session, offsets: list[TopicPartition]) -> None:
        commit_transaction(session.producer, offsets, session.consumer, self.app.watchdog, self.failpoint)
        obs.TRANSACTIONS.labels(self.app.service, "committed").inc()

    def abort(self, session: Session) -> None:
        obs.TRANSACTIONS.labels(self.app.service, "aborted").inc()
        abort_transaction(session.producer, self.app.watchdog)

    def revoke(self, session: Session, partitions: Sequence[int], lost: bool) -> None:
        pass  # every unit of work is committed before the next poll, where rebalances happen

    def tick(self, session: Session) -> None:
        pass

    def drain(self, session: Session, partitions: Sequence[int]) -> None:
        pass  # the last unit of work is committed already

    def close(self, session: Session, graceful: bool) -> None:
        pass


# -- the checkpoint-then-offsets protocol ---------------------------------------------------------
#: ``fence(partition, next_offset)``: make the session's dead letters durable, then commit
#: ``next_offset`` to the group synchronously; raises when this member no longer owns the partition.
Fence = Callable[[int, int], None]


class Checkpoints(Protocol):
    """A processor's durable progress per partition (the trainer's manifests, services/trainer)."""

    def load(self, partition: int, ctx: Context) -> int | None:
        """Load the partition's last checkpoint; the offset to resume from (None: the earliest)."""

    def accepts(self, partition: int, offset: int) -> bool:
        """False for a partition not loaded or an offset its checkpoint already covers."""

    def due(self) -> list[int]:
        """Partitions whose checkpoint is due now (by work done or time since the last one)."""

    def save(self, partition: int, ctx: Context, fence: Fence) -> bool:
        """Checkpoint the partition, calling ``fence`` before the commit point; False when there
        was nothing to commit. Raises when the checkpoint could not be made."""


@dataclass
class CheckpointOffsets:
    """The processor's checkpoints are the commit: a partition starts where its checkpoint says,
    a revocation checkpoints first (the next owner starts exactly there), a lost partition is
    dropped without one (the new owner may already be working on it), a clean stop checkpoints
    everything. Exactly one input topic (a checkpoint records one offset per partition)."""

    checkpoints: Checkpoints
    _app: StreamApp | None = field(default=None, init=False, repr=False)
    _topic: str = field(default="", init=False, repr=False)

    def bind(self, app: StreamApp) -> None:
        if len(app.inputs) != 1:
            raise ValueError(f"CheckpointOffsets takes one input topic, got {list(app.inputs)}")
        self._app = app
        self._topic = app.catalogue.name(app.inputs[0])

    @property
    def app(self) -> StreamApp:
        if self._app is None:
            raise RuntimeError("CheckpointOffsets used before StreamApp bound it")
        return self._app

    def client_config(self, deliveries: Deliveries) -> tuple[dict[str, Any], dict[str, Any]]:
        group = self.app.group
        consumer: dict[str, Any] = {"client.id": f"{group}-consumer"}
        if self.app.platform.instance_id:
            # Static membership (KIP-345): a replica restarted after a crash takes its partitions
            # back at once, without waiting out its dead self's session or moving the other
            # replicas' partitions. A stale process with the same id is fenced by the group.
            consumer["group.instance.id"] = f"{group}-{self.app.platform.instance_id}"
        return {"client.id": f"{group}-producer", "on_delivery": deliveries.on_delivery}, consumer

    def start(self, session: Session) -> None:
        pass

    def restore(self, session: Session, partitions: list[TopicPartition], new: list[int]) -> dict[int, dict[str, Any]]:
        for tp in partitions:
            next_offset = self.checkpoints.load(tp.partition, session.ctx)
            tp.offset = next_offset if next_offset is not None else OFFSET_BEGINNING
        session.consumer.assign(partitions)  # the checkpoint's offsets, not the group's
        return {}

    def accepts(self, partition: int, offset: int) -> bool:
        return self.checkpoints.accepts(partition, offset)

    def begin(self, session: Session) -> None:
        pass

    def commit(self, session: Session, offsets: list[TopicPartition]) -> None:
        pass  # progress is committed by checkpoints: tick (due), revoke, drain

    def abort(self, session: Session) -> None:
        pass  # nothing was committed; the session ends and reloads its checkpoints

    def revoke(self, session: Session, partitions: Sequence[int], lost: bool) -> None:
        if lost:
            log.warning("partitions lost; dropped without a checkpoint", extra={"partitions": list(partitions)})
            return
        for p in partitions:
            self._save(session, p)

    def tick(self, session: Session) -> None:
        for p in self.checkpoints.due():
            self._save(session, p)

    def drain(self, session: Session, partitions: Sequence[int]) -> None:
        for p in partitions:
            self._save(session, p)

    def close(self, session: Session, graceful: bool) -> None:
        if not graceful:
            log.warning("session ends without a checkpoint; partitions resume from their checkpoints")

    def _save(self, session: Session, partition: int) -> None:
        self.checkpoints.save(partition, session.ctx, lambda p, offset: self._fence(session, p, offset))

    def _fence(self, session: Session, partition: int, next_offset: int) -> None:
        """Dead letters durable, then the offset committed synchronously: refused (raises) when
        this member no longer owns the partition in the group's current generation."""
        session.deliveries.confirm(session.producer, 30)
        result = session.consumer.commit(offsets=[TopicPartition(self._topic, partition, next_offset)],
                                         asynchronous=False)
        for tp in result or []:
            if tp.error is not None:
                raise KafkaException(tp.error)


__all__ = ["CheckpointOffsets", "Checkpoints", "CommitPolicy", "Fence", "KafkaTransaction"]
