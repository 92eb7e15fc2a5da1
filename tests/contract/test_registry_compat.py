"""The registry enforces the contracts: released history registered under BACKWARD_TRANSITIVE, the
current schema passes the registry's compatibility endpoint, a breaking change is refused, and a
message produced through reftrain's serde is read by a plain confluent-kafka consumer with the
registry's AvroDeserializer."""

from __future__ import annotations

import json
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from reftrain import schemas
from reftrain.serde import registry_client
from reftrain.settings import PlatformSettings, kafka_client_config
from reftrain.topics import CANDLES
from tests.contract.test_schemas import RECORDS, history, resolved_history
from tests.support import ensure_topics, produce_records, real_candles

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize("record", RECORDS)
def test_registry_accepts_current_schema_after_released_history(platform: PlatformSettings, record: str) -> None:
    client = registry_client(platform)
    subject = f"compat-{uuid.uuid4().hex[:8]}-{record}-value"
    client.set_compatibility(subject, "BACKWARD_TRANSITIVE")
    for path in history(record):
        client.register_schema(subject, Schema(json.dumps(resolved_history(record, path)), "AVRO"))
    assert client.test_compatibility(subject, Schema(schemas.schema_json(record), "AVRO")) is True


def test_registry_refuses_a_breaking_change(platform: PlatformSettings) -> None:
    client = registry_client(platform)
    subject = f"compat-{uuid.uuid4().hex[:8]}-candle-value"
    client.set_compatibility(subject, "BACKWARD_TRANSITIVE")
    client.register_schema(subject, Schema(schemas.schema_json("reftrain.Candle"), "AVRO"))
    broken = json.loads(schemas.schema_json("reftrain.Candle"))
    broken["fields"].append({"name": "vwap", "type": "double"})  # no default: old data unreadable
    assert client.test_compatibility(subject, Schema(json.dumps(broken), "AVRO")) is False


def test_plain_confluent_consumer_reads_what_reftrain_produced(platform: PlatformSettings) -> None:
    cat = ensure_topics(platform)
    candles = real_candles("ETHUSDT-1m-2025-10-29_2025-11-01.csv", limit=5)
    produce_records(platform, CANDLES, [("ETHUSDT:1m", c) for c in candles])
    deser = AvroDeserializer(registry_client(platform))
    consumer = Consumer({**kafka_client_config(platform), "group.id": f"plain-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest"})
    topic = cat.name(CANDLES)
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    got = []
    for _ in range(40):
        for m in consumer.consume(10, 0.5):
            if m.error() is None:
                got.append((m.key().decode(), deser(m.value(), SerializationContext(topic, MessageField.VALUE))))
        if len(got) >= 5:
            break
    consumer.close()
    assert [k for k, _ in got] == ["ETHUSDT:1m"] * 5
    # confluent's deserializer applies logical types: compare instants
    assert [int(v["open_time"].timestamp() * 1000) for _, v in got] == [c["open_time"] for c in candles]
    assert [v["close"] for _, v in got] == [c["close"] for c in candles]
