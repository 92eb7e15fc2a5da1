"""Writer schemas are accepted only when they are releases this project shipped (schemas/history and
the current files, by Parsing Canonical Form fingerprint): a compatible-but-foreign schema is refused
before a byte is decoded. The registry is an in-memory stand-in here (pure unit test); the same check
against the real registry and a running service is in tests/faults/test_bad_inputs.py."""

from __future__ import annotations

import io
import json
import struct
import time
from typing import Any

import fastavro
import pytest

from reftrain import schemas
from reftrain.errors import UnshippedSchemaError
from reftrain.serde import AvroSerde


class _Registered:
    def __init__(self, text: str) -> None:
        self.schema_str = text


class FakeRegistry:
    def __init__(self, by_id: dict[int, str]) -> None:
        self.by_id = by_id
        self.lookups = 0

    def get_schema(self, schema_id: int) -> Any:
        self.lookups += 1
        return _Registered(self.by_id[schema_id])


def _candle() -> dict[str, Any]:
    return json.loads((schemas.SCHEMA_DIR / "golden" / "candle.json").read_text())


def _body(value: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schemas.parsed_plain("reftrain.Candle"), value)
    return buf.getvalue()


def test_fingerprint_ignores_formatting_and_docs_but_not_fields() -> None:
    text = schemas.schema_json("reftrain.Candle")
    pretty = json.dumps(json.loads(text), indent=4)
    undocumented = json.loads(text)
    undocumented.pop("doc", None)
    assert schemas.fingerprint(pretty) == schemas.fingerprint(text) == schemas.fingerprint(undocumented)
    extra = json.loads(text)
    extra["fields"].append({"name": "pad", "type": {"type": "array", "items": "null"}, "default": []})
    assert schemas.fingerprint(extra) not in schemas.shipped_fingerprints("reftrain.Candle")
    for record in schemas.SCHEMA_FILES:
        assert schemas.fingerprint(schemas.schema_json(record)) in schemas.shipped_fingerprints(record)


def test_schema_bomb_refused_before_decoding_and_looked_up_once() -> None:
    evil = json.loads(schemas.schema_json("reftrain.Candle"))
    evil["fields"].append({"name": "pad", "type": {"type": "array", "items": "null"}, "default": []})
    registry = FakeRegistry({1: schemas.schema_json("reftrain.Candle"), 2: json.dumps(evil)})
    serde = AvroSerde(registry, "candles", "reftrain.Candle")  # type: ignore[arg-type]
    good = struct.pack(">bI", 0, 1) + _body(_candle())
    assert serde.decode(good)["symbol"] == _candle()["symbol"]
    # 2^62 as an Avro long (zig-zag varint), then the end-of-array marker: a 10-byte tail
    zz, tail = (1 << 62) << 1, bytearray()
    while zz > 0x7F:
        tail.append((zz & 0x7F) | 0x80)
        zz >>= 7
    bomb = struct.pack(">bI", 0, 2) + _body(_candle()) + bytes([*tail, zz, 0])
    for _ in range(3):
        t0 = time.perf_counter()
        with pytest.raises(UnshippedSchemaError, match="none of the"):
            serde.decode(bomb)
        assert time.perf_counter() - t0 < 0.05
    assert registry.lookups == 2  # the good id once, the hostile id once (its refusal is cached)
