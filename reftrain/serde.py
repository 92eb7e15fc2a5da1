"""Avro in the Confluent wire format (magic byte 0, 4-byte schema id, Avro binary) through the
schema registry.

Encoding uses confluent-kafka's AvroSerializer with ``auto.register.schemas`` OFF: it looks the
schema up under ``<topic>-value``, where the init job (deploy/init/init_cluster.py) registered it
with BACKWARD_TRANSITIVE compatibility; a service never changes the registry.
Decoding is stricter than confluent-kafka's AvroDeserializer, because a flipped bit in an Avro
double still decodes: we resolve the writer schema by id, refuse a writer record other than the
topic's, refuse a writer schema that is none of the releases this project shipped (by canonical
fingerprint: a registry accepts any compatible schema, hostile ones too), refuse trailing bytes,
then validate the values (reftrain.validation).
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable
from typing import Any

import fastavro
from confluent_kafka.schema_registry import SchemaRegistryClient, SchemaRegistryError
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from reftrain import schemas, validation
from reftrain.errors import (
    ConfigError,
    DecodeError,
    ReftrainError,
    UnknownSchemaError,
    UnshippedSchemaError,
    WrongRecordTypeError,
)
from reftrain.redact import redact_text
from reftrain.settings import PlatformSettings, registry_client_config

MAGIC = 0
HEADER = struct.Struct(">bI")

VALIDATORS: dict[str, Callable[[dict[str, Any]], None]] = {
    "reftrain.Candle": validation.validate_candle,
    "reftrain.Pivot": validation.validate_pivot,
    "reftrain.InferenceRef": validation.validate_inference_ref,
}


class RegistryUnavailableError(ReftrainError):
    """The registry could not be reached: transient, retry later (never dead-letter for it)."""


def registry_client(platform: PlatformSettings | str) -> SchemaRegistryClient:
    """A registry client with the platform's TLS and credentials (a bare URL: no TLS/auth options)."""
    if isinstance(platform, str):
        return SchemaRegistryClient({"url": platform, "timeout": 10, "cache.capacity": 1000})
    try:
        return SchemaRegistryClient(registry_client_config(platform))
    except (ValueError, TypeError) as exc:  # the client's own checks of its configuration
        raise ConfigError(f"schema registry client configuration: {redact_text(str(exc))}") from None


class AvroSerde:
    """Encode/decode one record type for one physical topic."""

    def __init__(self, client: SchemaRegistryClient, topic: str, record: str, validate: bool = True,
                 auto_register: bool = False) -> None:
        self.client = client
        self.topic = topic
        self.record = record
        self.content_type = schemas.content_type(record)
        self._validate = VALIDATORS.get(record) if validate else None
        self._reader = schemas.parsed_plain(record)
        self._serializer = AvroSerializer(client, schemas.schema_json(record),
                                          conf={"auto.register.schemas": auto_register})
        self._ctx = SerializationContext(topic, MessageField.VALUE)
        self._writers: dict[int, Any] = {}
        self._refused: dict[int, DecodeError] = {}
        self._shipped = schemas.shipped_fingerprints(record)

    def encode(self, value: dict[str, Any]) -> bytes:
        try:
            out: bytes | None = self._serializer(value, self._ctx)
        except SchemaRegistryError as exc:
            if exc.http_status_code >= 500 or exc.http_status_code < 0:
                raise RegistryUnavailableError(str(exc)) from exc
            if exc.http_status_code == 404:
                raise ConfigError(f"the {self.record} schema is not registered under {self.topic}-value: the "
                                  f"init job (python -m deploy.init.init_cluster, `stack.sh init`) registers "
                                  f"it; services never register schemas ({exc})") from exc
            if exc.http_status_code in (401, 403):
                raise ConfigError(f"schema registry refused the credentials ({exc.http_status_code}): check "
                                  f"SCHEMA_REGISTRY_BASIC_AUTH / _TOKEN") from exc
            raise
        except OSError as exc:  # connection refused/reset from the HTTP client
            raise RegistryUnavailableError(str(exc)) from exc
        except Exception as exc:
            if type(exc).__module__.startswith(("httpx", "httpcore", "requests", "urllib3")):
                raise RegistryUnavailableError(str(exc)) from exc
            raise
        assert out is not None
        return out

    def schema_id(self, data: bytes | None) -> int:
        if data is None or len(data) < HEADER.size:
            raise DecodeError(f"message of {0 if data is None else len(data)} bytes is shorter than the "
                              f"5-byte wire-format header")
        magic, schema_id = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise DecodeError(f"unknown magic byte {magic} (not Confluent wire format)")
        return int(schema_id)

    def _writer_schema(self, schema_id: int) -> Any:
        writer = self._writers.get(schema_id)
        if writer is not None:
            return writer
        refused = self._refused.get(schema_id)
        if refused is not None:  # a hostile id is looked up once, not once per message
            raise type(refused)(str(refused))
        try:
            registered = self.client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code in (404, 40403) or exc.error_code in (40403, 40401):
                raise UnknownSchemaError(f"schema id {schema_id} is not in the registry") from exc
            raise RegistryUnavailableError(str(exc)) from exc
        except Exception as exc:
            raise RegistryUnavailableError(f"registry lookup of id {schema_id} failed: {exc}") from exc
        schema_str = registered.schema_str
        if schema_str is None:  # the registry answered without a schema text
            raise UnknownSchemaError(f"schema id {schema_id} has no schema text in the registry")
        name = schemas.record_name_of(schema_str)
        if name != self.record:
            raise WrongRecordTypeError(f"schema id {schema_id} is {name}, topic {self.topic} carries {self.record}")
        try:
            fp = schemas.fingerprint(schema_str)
        except Exception as exc:  # unparseable schema text
            raise DecodeError(f"writer schema id {schema_id} does not parse: {exc}") from exc
        if fp not in self._shipped:
            err = UnshippedSchemaError(
                f"writer schema id {schema_id} ({self.record}, fingerprint {fp[:16]}) is none of the "
                f"{len(self._shipped)} releases in schemas/history; not decoded")
            self._refused[schema_id] = err
            raise err
        writer = fastavro.parse_schema(schemas.strip_logical_types(json.loads(schema_str)))
        self._writers[schema_id] = writer
        return writer

    def decode(self, data: bytes | None) -> dict[str, Any]:
        """Bytes -> validated record; raises DecodeError subclasses or InvalidRecordError."""
        if data is None:
            raise DecodeError("message without a value (a tombstone) is no record")
        schema_id = self.schema_id(data)
        writer = self._writer_schema(schema_id)
        buf = io.BytesIO(data)
        buf.seek(HEADER.size)
        try:
            value = fastavro.schemaless_reader(buf, writer, self._reader)
        except Exception as exc:  # EOFError, UnicodeDecodeError, IndexError on bad enum/union index
            raise DecodeError(f"undecodable Avro payload ({type(exc).__name__}: {exc})") from exc
        if buf.tell() != len(data):
            raise DecodeError(f"{len(data) - buf.tell()} trailing bytes after the {self.record} record")
        if not isinstance(value, dict):
            raise DecodeError("payload is not a record")
        if self._validate is not None:
            self._validate(value)
        return value
