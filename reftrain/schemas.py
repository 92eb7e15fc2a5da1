"""Avro contracts from ``schemas/``: one record per file, referenced across files by full name.

The registry gets each record as ONE self-contained schema (named types used by reference are
inlined at their first use), so every consumer, kcat included, can decode a message from its
schema id alone, without Confluent schema references.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
HISTORY_DIR = SCHEMA_DIR / "history"

#: Full record name -> file in schemas/.
SCHEMA_FILES: dict[str, str] = {
    "reftrain.Candle": "candle.avsc",
    "reftrain.Pivot": "pivot.avsc",
    "reftrain.InferenceRef": "inference_ref.avsc",
    "reftrain.TrainingJob": "training_job.avsc",
    "reftrain.ModelVersion": "model_version.avsc",
}

CONTENT_TYPE_HEADER = "content-type"


def content_type(record: str) -> str:
    """Header value naming the Avro record, readable with plain kcat (-f '%h')."""
    return f"application/vnd.confluent.avro; record={record}"


def _full_name(schema: dict[str, Any], namespace: str | None) -> str:
    name = str(schema["name"])
    ns = schema.get("namespace", namespace)
    return name if "." in name or not ns else f"{ns}.{name}"


def _collect_named(schema: Any, namespace: str | None, out: dict[str, dict[str, Any]]) -> None:
    if isinstance(schema, list):
        for s in schema:
            _collect_named(s, namespace, out)
    elif isinstance(schema, dict):
        if schema.get("type") in ("record", "enum", "fixed"):
            full = _full_name(schema, namespace)
            out[full] = schema
            namespace = schema.get("namespace", namespace)
            for f in schema.get("fields", []):
                _collect_named(f["type"], namespace, out)
        elif schema.get("type") in ("array", "map"):
            _collect_named(schema.get("items", schema.get("values")), namespace, out)


def load_raw(directory: Path = SCHEMA_DIR) -> dict[str, dict[str, Any]]:
    """Every .avsc of a directory, by full record name."""
    raw: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.avsc")):
        schema = json.loads(path.read_text())
        raw[_full_name(schema, None)] = schema
    return raw


def resolve(record: str, raw: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A self-contained copy of ``record``: string references to other files' types are inlined
    at first use (Avro forbids defining a name twice, so later uses stay references)."""
    named: dict[str, dict[str, Any]] = {}
    for schema in raw.values():
        _collect_named(schema, None, named)
    defined: set[str] = set()

    def walk(node: Any, namespace: str | None) -> Any:
        if isinstance(node, str):
            full = node if "." in node else (f"{namespace}.{node}" if namespace else node)
            if full in named and full not in defined:
                return walk(copy.deepcopy(named[full]), namespace)
            return node
        if isinstance(node, list):
            return [walk(n, namespace) for n in node]
        if isinstance(node, dict):
            t = node.get("type")
            if t in ("record", "enum", "fixed"):
                full = _full_name(node, namespace)
                if full in defined:
                    return full
                defined.add(full)
                ns = node.get("namespace", namespace)
                if t == "record":
                    node = dict(node)
                    node["fields"] = [dict(f, type=walk(f["type"], ns)) for f in node["fields"]]
                return node
            if t == "array":
                return dict(node, items=walk(node["items"], namespace))
            if t == "map":
                return dict(node, values=walk(node["values"], namespace))
            if isinstance(t, (dict, list)) or (isinstance(t, str) and t in named):
                return dict(node, type=walk(t, namespace))
        return node

    return dict(walk(copy.deepcopy(raw[record]), None))


@cache
def schema_json(record: str) -> str:
    """Canonical JSON text of the self-contained schema of ``record`` (what the registry stores)."""
    return json.dumps(resolve(record, load_raw()), separators=(",", ":"))


@cache
def parsed(record: str) -> Any:
    """fastavro-parsed schema of ``record`` (raises SchemaParseException if invalid)."""
    return fastavro.parse_schema(json.loads(schema_json(record)))


def strip_logical_types(schema: Any) -> Any:
    """A copy without logicalType annotations: decoders keep timestamps as epoch-ms ints (the
    records' contract) instead of fastavro's datetime objects; the registry keeps the annotations."""
    if isinstance(schema, list):
        return [strip_logical_types(s) for s in schema]
    if isinstance(schema, dict):
        return {k: strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    return schema


@cache
def parsed_plain(record: str) -> Any:
    """fastavro-parsed schema of ``record`` without logical types (the decoders' reader schema)."""
    return fastavro.parse_schema(strip_logical_types(json.loads(schema_json(record))))


def record_name_of(schema: Any) -> str:
    """Full name of the top-level record of a schema given as JSON text or dict."""
    s = json.loads(schema) if isinstance(schema, str) else schema
    return _full_name(s, None)


def fingerprint(schema: Any) -> str:
    """sha256 of the Avro Parsing Canonical Form: equal for two texts of the same schema (whitespace,
    docs, defaults, attribute order), different as soon as a field or a type differs."""
    s = json.loads(schema) if isinstance(schema, str) else schema
    return hashlib.sha256(to_parsing_canonical_form(fastavro.parse_schema(s)).encode()).hexdigest()


def _versions(record: str) -> list[dict[str, Any]]:
    """Every release of one record file: schemas/history/<stem>/v*.avsc and the current file."""
    stem = SCHEMA_FILES[record].removesuffix(".avsc")
    paths = [*sorted((HISTORY_DIR / stem).glob("v*.avsc")), SCHEMA_DIR / SCHEMA_FILES[record]]
    out: list[dict[str, Any]] = []
    for path in paths:
        raw = json.loads(path.read_text())
        if raw not in out:
            out.append(raw)
    return out


@cache
def shipped_fingerprints(record: str) -> frozenset[str]:
    """Fingerprints of every self-contained schema of ``record`` this project ever shipped: each
    release of the record, resolved against each release of the records it references. A writer
    schema outside this set is refused before any byte is decoded (a registry accepts any
    compatible schema, including one whose new array<null> field decodes 2^62 items from 20 bytes)."""
    current = load_raw()
    names = list(current)
    out = set()
    for combo in itertools.product(*(_versions(n) for n in names)):
        raw = dict(zip(names, combo, strict=True))
        out.add(fingerprint(resolve(record, raw)))
    return frozenset(out)
