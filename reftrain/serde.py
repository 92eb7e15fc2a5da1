"""Avro in the Confluent wire format (magic byte 0, 4-byte schema id, Avro binary) through the
schema registry.

Encoding uses confluent-kafka's AvroSerializer (it registers the schema under ``<topic>-value``).
Decoding is stricter than confluent-kafka's AvroDeserializer, because a flipped bit in an Avro
double still decodes: we resolve the writer schema by id, refuse a writer record other than the
topic's, refuse trailing bytes, then validate the values (reftrain.validation).
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
from reftrain.errors import DecodeError, ReftrainError, UnknownSchemaError, WrongRecordTypeError

MAGIC = 0
HEADER = struct.Struct(">bI")

VALIDATORS: dict[str, Callable[[dict[str, Any]], None]] = {
    "reftrain.Candle": validation.validate_candle,
    "reftrain.Pivot": validation.validate_pivot,
    "reftrain.InferenceRef": validation.validate_inference_ref,
}


class RegistryUnavailableError(ReftrainError):
    """The registry could not be reached: transient, retry later (never dead-letter for it)."""


def registry_client(url: str) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": url, "timeout": 10, "cache.capacity": 1000})


class AvroSerde:
    """Encode/decode one record type for one physical topic."""

    def __init__(self, client: SchemaRegistryClient, topic: str, record: str, validate: bool = True) -> None:
        self.client = client
        self.topic = topic
        self.record = record
        self.content_type = schemas.content_type(record)
        self._validate = VALIDATORS.get(record) if validate else None
        self._reader = schemas.parsed_plain(record)
        self._serializer = AvroSerializer(client, schemas.schema_json(record),
                                          conf={"auto.register.schemas": True})
        self._ctx = SerializationContext(topic, MessageField.VALUE)
        self._writers: dict[int, Any] = {}

    def encode(self, value: dict[str, Any]) -> bytes:
        try:
            out = self._serializer(value, self._ctx)
        except SchemaRegistryError as exc:
            if exc.http_status_code >= 500 or exc.http_status_code < 0:
                raise RegistryUnavailableError(str(exc)) from exc
            raise
        except OSError as exc:  # connection refused/reset from the HTTP client
            raise RegistryUnavailableError(str(exc)) from exc
        except Exception as exc:
            if type(exc).__module__.startswith(("httpx", "httpcore", "requests", "urllib3")):
                raise RegistryUnavailableError(str(exc)) from exc
            raise
        assert out is not None
        return out

    def schema_id(self, data: bytes) -> int:
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
        try:
            registered = self.client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code in (404, 40403) or exc.error_code in (40403, 40401):
                raise UnknownSchemaError(f"schema id {schema_id} is not in the registry") from exc
            raise RegistryUnavailableError(str(exc)) from exc
        except Exception as exc:
            raise RegistryUnavailableError(f"registry lookup of id {schema_id} failed: {exc}") from exc
        name = schemas.record_name_of(registered.schema_str)
        if name != self.record:
            raise WrongRecordTypeError(f"schema id {schema_id} is {name}, topic {self.topic} carries {self.record}")
        writer = fastavro.parse_schema(schemas.strip_logical_types(json.loads(registered.schema_str)))
        self._writers[schema_id] = writer
        return writer

    def decode(self, data: bytes) -> dict[str, Any]:
        """Bytes -> validated record; raises DecodeError subclasses or InvalidRecordError."""
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
