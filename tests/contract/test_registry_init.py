"""The init job's registry step on the REAL local stack: value subjects end at BACKWARD_TRANSITIVE
with the shipped schemas, the registry then refuses an incompatible schema, and the services'
serializers never register anything (a subject the init did not create stays absent)."""

from __future__ import annotations

import json

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryError

from deploy.init import init_cluster
from reftrain import schemas
from reftrain.errors import ConfigError
from reftrain.serde import AvroSerde, registry_client
from reftrain.settings import PlatformSettings
from reftrain.topics import CANDLES, RECORD_OF_TOPIC, TopicCatalogue
from tests.support import real_candles

pytestmark = pytest.mark.kafka


def test_init_sets_backward_transitive_and_the_registry_refuses_a_breaking_schema(platform: PlatformSettings) -> None:
    # the `platform` fixture ran init's register_schemas for this prefix, as compose's init job does
    client = registry_client(platform)
    cat = TopicCatalogue(platform)
    for logical, record in RECORD_OF_TOPIC.items():
        subject = init_cluster.subject_of(cat.name(logical))
        assert client.get_compatibility(subject) == "BACKWARD_TRANSITIVE"
        latest = client.get_latest_version(subject)
        assert schemas.fingerprint(latest.schema.schema_str) == schemas.fingerprint(schemas.schema_json(record))
    broken = json.loads(schemas.schema_json("reftrain.Candle"))
    broken["fields"].append({"name": "vwap", "type": "double"})  # no default: old data unreadable
    subject = init_cluster.subject_of(cat.name(CANDLES))
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema(subject, Schema(json.dumps(broken), "AVRO"))
    assert refused.value.http_status_code == 409
    assert len(client.get_versions(subject)) == 1


def test_services_never_register_a_schema(platform: PlatformSettings) -> None:
    fresh = platform.replace(topic_prefix=platform.topic_prefix + "noinit-")
    client = registry_client(fresh)
    topic = TopicCatalogue(fresh).name(CANDLES)
    serde = AvroSerde(client, topic, "reftrain.Candle")
    candle = real_candles("BTCUSDT-1m-2025-10-29_2025-11-01.csv", limit=1)[0]
    with pytest.raises(ConfigError, match="not registered"):
        serde.encode(dict(candle))
    assert init_cluster.subject_of(topic) not in client.get_subjects()
    # after the init step the same serializer finds the registered id
    init_cluster.register_schemas(fresh, client, "BACKWARD_TRANSITIVE", check_only=False)
    data = AvroSerde(client, topic, "reftrain.Candle").encode(dict(candle))
    assert data[0] == 0 and int.from_bytes(data[1:5], "big") == client.get_latest_version(
        init_cluster.subject_of(topic)).schema_id
