"""Contract tests of the Avro schemas: they parse, every field is documented, golden fixtures encode
to the committed bytes, and each schema is BACKWARD_TRANSITIVE-compatible with its released
history (checked offline here; by the registry in test_registry_compat.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.utils import generate_many

from reftrain import schemas

GOLDEN = schemas.SCHEMA_DIR / "golden"
RECORDS = sorted(schemas.SCHEMA_FILES)


def _stem(record: str) -> str:
    return schemas.SCHEMA_FILES[record].removesuffix(".avsc")


def history(record: str) -> list[Path]:
    return sorted((schemas.HISTORY_DIR / _stem(record)).glob("v*.avsc"), key=lambda p: int(p.stem[1:]))


def resolved_history(record: str, path: Path) -> dict[str, Any]:
    """A released version, resolved against the other records as they were released with it."""
    raw = schemas.load_raw()
    raw[record] = json.loads(path.read_text())
    return schemas.resolve(record, raw)


@pytest.mark.parametrize("record", RECORDS)
def test_schema_parses_and_every_field_is_documented(record: str) -> None:
    parsed = schemas.parsed(record)
    assert parsed["name"] == record
    raw = json.loads((schemas.SCHEMA_DIR / schemas.SCHEMA_FILES[record]).read_text())
    assert raw.get("doc"), f"{record} has no doc"
    undocumented = [f["name"] for f in raw["fields"] if not f.get("doc")]
    assert not undocumented, f"{record}: fields without doc: {undocumented}"


@pytest.mark.parametrize("record", RECORDS)
def test_timestamps_use_the_timestamp_millis_logical_type(record: str) -> None:
    raw = json.loads((schemas.SCHEMA_DIR / schemas.SCHEMA_FILES[record]).read_text())
    for f in raw["fields"]:
        if f["name"].endswith(("_time", "_at", "_timestamp", "_start", "_end")) and f["name"] != "trades":
            assert isinstance(f["type"], dict) and f["type"].get("logicalType") == "timestamp-millis", f["name"]


@pytest.mark.parametrize("record", RECORDS)
def test_golden_fixture_encodes_to_the_committed_bytes_and_back(record: str) -> None:
    value = json.loads((GOLDEN / f"{_stem(record)}.json").read_text())
    expected = bytes.fromhex((GOLDEN / f"{_stem(record)}.avro.hex").read_text().strip())
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schemas.parsed_plain(record), value)
    assert buf.getvalue() == expected
    decoded = fastavro.schemaless_reader(io.BytesIO(expected), schemas.parsed_plain(record))
    assert decoded == value


@pytest.mark.parametrize("record", RECORDS)
def test_every_record_has_a_released_history(record: str) -> None:
    assert history(record), f"no released version of {record} under schemas/history/"


@pytest.mark.parametrize("record", RECORDS)
def test_backward_transitive_against_released_history(record: str) -> None:
    """Data written with EVERY released version is readable with the current schema."""
    reader = schemas.parsed_plain(record)
    for path in history(record):
        writer_schema = schemas.strip_logical_types(resolved_history(record, path))
        writer = fastavro.parse_schema(writer_schema)
        for value in generate_many(writer_schema, 50):
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, writer, value)
            buf.seek(0)
            fastavro.schemaless_reader(buf, writer, reader)  # raises on incompatibility
        old_fields = {f["name"] for f in writer_schema["fields"]}
        added = [f for f in json.loads(schemas.schema_json(record))["fields"] if f["name"] not in old_fields]
        assert all("default" in f for f in added), f"{record}: fields added since {path.name} need defaults"


def test_offline_check_rejects_a_field_added_without_default() -> None:
    """The check above must be able to fail: a new field without default breaks old data."""
    old = schemas.strip_logical_types(json.loads(schemas.schema_json("reftrain.Candle")))
    new = json.loads(json.dumps(old))
    new["fields"].append({"name": "vwap", "type": "double"})
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(old), next(iter(generate_many(old, 1))))
    buf.seek(0)
    with pytest.raises(fastavro.read.SchemaResolutionError):
        fastavro.schemaless_reader(buf, fastavro.parse_schema(old), fastavro.parse_schema(new))


def test_a_reference_is_a_few_hundred_bytes_whatever_the_window() -> None:
    ref = (GOLDEN / "inference_ref.avro.hex").read_text().strip()
    assert len(bytes.fromhex(ref)) < 512
