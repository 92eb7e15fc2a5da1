"""One-shot cluster initialisation: topics, schemas, store catalog. Exits 0 when everything is in place.

    python deploy/init/init_cluster.py            # what the compose `init` service and the k8s Job run
    python deploy/init/init_cluster.py --check    # change nothing; exit 1 if something is missing

It reads the same environment as every service (reftrain.settings.PlatformSettings:
KAFKA_BOOTSTRAP_SERVERS, SCHEMA_REGISTRY_URL, STORE_CATALOG, STORE_DATA_PATH, TOPIC_PREFIX,
TOPIC_PARTITIONS, TOPIC_REPLICATION) plus its own ``INIT_*`` settings (InitSettings below), and:

1. waits until the broker answers an AdminClient call and the registry answers ``GET /subjects``
   (up to INIT_TIMEOUT_S);
2. creates every topic of reftrain.topics.TopicCatalogue (partition counts, replication and configs
   from the catalogue, DLQs included) and checks that existing topics have the catalogue's
   partition count (a topic with another count would move series to other partitions);
3. sets the compatibility of each ``<topic>-value`` subject (INIT_COMPATIBILITY, default
   BACKWARD_TRANSITIVE, docs/semantics.md "Records") and registers the topic's current Avro schema from schemas/
   (the same self-contained text the services' serializers register, so they find it);
4. creates the DuckLake tables in the catalog (INIT_CREATE_STORE), so the services do not all race
   to create them on their first start.

Idempotent: running it again changes nothing. It prints one JSON summary line on stdout.

The same steps run for the local stack (``stack.sh init``), ``make run``'s isolated prefix (ops.run),
the fault campaign and every test's random prefix (tests/conftest.py): ``prepare()`` below. The
services never register schemas (auto.register.schemas is off), so an incompatible schema can only
come from outside and the registry refuses it. Kafka and registry clients take the same TLS/SASL
and credential settings as the services (reftrain.settings.kafka_client_config /
registry_client_config).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

# Runnable as a plain script from a checkout or from the image (/app): the repo root holds reftrain/.
_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from confluent_kafka.admin import AdminClient  # noqa: E402
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient  # noqa: E402
from pydantic import Field  # noqa: E402
from pydantic_settings import SettingsConfigDict  # noqa: E402

from reftrain import logs, schemas, settings  # noqa: E402
from reftrain.errors import ConfigError  # noqa: E402
from reftrain.redact import redact_text  # noqa: E402
from reftrain.serde import registry_client  # noqa: E402
from reftrain.settings import PlatformSettings, Settings, kafka_client_config  # noqa: E402
from reftrain.topics import RECORD_OF_TOPIC, TopicCatalogue  # noqa: E402

log = logging.getLogger("reftrain.init")
T = TypeVar("T")

Compatibility = Literal["BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL",
                        "FULL_TRANSITIVE", "NONE"]
COMPATIBILITY_LEVELS: tuple[str, ...] = get_args(Compatibility)


class InitSettings(Settings):
    """``INIT_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="INIT_")

    #: INIT_TIMEOUT_S: how long to wait for the broker, the registry and the catalog.
    timeout_s: float = Field(default=180.0, ge=0)
    #: INIT_COMPATIBILITY: compatibility level set on every value subject.
    compatibility: Compatibility = "BACKWARD_TRANSITIVE"
    #: INIT_CREATE_STORE: create the DuckLake tables (needs STORE_CATALOG and a writable STORE_DATA_PATH).
    create_store: bool = True


def subject_of(topic: str) -> str:
    """Confluent TopicNameStrategy, as confluent-kafka's AvroSerializer uses it."""
    return f"{topic}-value"


def _until(deadline: float, what: str, fn: Callable[[], T], pause: float = 2.0) -> T:
    last: Exception | None = None
    while True:
        try:
            return fn()
        except Exception as exc:  # anything here means "not yet"
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reachable: {last}")
        log.info("waiting", extra={"for": what, "error": str(last)[:200]})
        time.sleep(pause)


def wait_for_kafka(admin: AdminClient, deadline: float) -> None:
    def probe() -> None:
        md = admin.list_topics(timeout=5)
        if not md.brokers:
            raise RuntimeError("no broker in metadata")

    _until(deadline, "kafka", probe)


def wait_for_registry(client: SchemaRegistryClient, deadline: float) -> None:
    _until(deadline, "schema registry", client.get_subjects)


def ensure_topics(platform: PlatformSettings, admin: AdminClient, check_only: bool,
                  settle_s: float = 30.0) -> list[dict[str, Any]]:
    catalogue = TopicCatalogue(platform)
    if not check_only:
        catalogue.ensure(admin)
    # A topic just created may be missing from the metadata a broker answers for a moment (more so
    # right after a broker restart): look again for a while before calling it missing.
    settle_until = time.monotonic() + (0.0 if check_only else settle_s)
    while True:
        existing = admin.list_topics(timeout=30).topics
        out, problems = [], []
        for spec in catalogue.specs():
            meta = existing.get(spec.name)
            if meta is None:
                problems.append(f"{spec.name}: missing")
                continue
            got = len(meta.partitions)
            if got != spec.partitions:
                problems.append(f"{spec.name}: {got} partitions, the catalogue says {spec.partitions}")
            out.append({"topic": spec.name, "partitions": got})
        if not problems:
            return out
        if time.monotonic() >= settle_until:
            raise ConfigError("topics do not match the catalogue: " + "; ".join(problems))
        time.sleep(0.5)


def register_schemas(platform: PlatformSettings, client: SchemaRegistryClient, compatibility: str,
                     check_only: bool, only: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """``only``: these logical topics (default: all)."""
    catalogue = TopicCatalogue(platform)
    out = []
    for logical, record in RECORD_OF_TOPIC.items():
        if only is not None and logical not in only:
            continue
        subject = subject_of(catalogue.name(logical))
        schema = Schema(schemas.schema_json(record), "AVRO")
        if check_only:
            registered = client.lookup_schema(subject, schema)  # raises if not registered
            schema_id = registered.schema_id
        else:
            client.set_compatibility(subject_name=subject, level=compatibility)
            schema_id = client.register_schema(subject, schema)
        out.append({"subject": subject, "record": record, "schema_id": schema_id})
        log.info("schema checked" if check_only else "schema registered",
                 extra={"subject": subject, "schema_id": schema_id, "compatibility": compatibility})
    return out


def prepare(platform: PlatformSettings, admin: AdminClient | None = None,
            client: SchemaRegistryClient | None = None,
            compatibility: Compatibility = "BACKWARD_TRANSITIVE") -> list[dict[str, Any]]:
    """Topics of the catalogue plus compatibility and schemas of every value subject, for
    ``platform.topic_prefix``; for callers whose stack is already up (tests, ops.run, faults)."""
    TopicCatalogue(platform).ensure(admin or AdminClient(kafka_client_config(platform)))
    return register_schemas(platform, client or registry_client(platform), compatibility, check_only=False)


def create_store(platform: PlatformSettings) -> str:
    from reftrain.store import Store  # duckdb only when the store is wanted

    # One attempt: Store retries transient catalog errors itself, and compose/k8s start this only once
    # the catalog database is healthy; a wrong STORE_CATALOG should fail fast, not after minutes.
    Store.from_settings(platform).close()
    return platform.store_catalog.split(":", 1)[0]


def run(check_only: bool = False, environ: dict[str, str] | None = None) -> dict[str, Any]:
    platform = settings.platform(environ)
    init = InitSettings.from_env(environ)
    deadline = time.monotonic() + init.timeout_s
    admin = AdminClient(kafka_client_config(platform))
    client = registry_client(platform)
    wait_for_kafka(admin, deadline)
    topics = ensure_topics(platform, admin, check_only)
    wait_for_registry(client, deadline)
    subjects = register_schemas(platform, client, init.compatibility, check_only)
    store = create_store(platform) if init.create_store and not check_only else None
    return {"ok": True, "topic_prefix": platform.topic_prefix, "topics": topics, "subjects": subjects,
            "store": store}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if anything is missing")
    args = parser.parse_args(argv)
    platform = settings.platform()
    logs.setup("init", platform.log_level, platform.log_format)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per registry request otherwise
    try:
        summary = run(check_only=args.check)
    except Exception as exc:  # report and exit 1: the init container failed
        error = redact_text(f"{type(exc).__name__}: {exc}")
        log.error("init failed", extra={"error": error})
        print(json.dumps({"ok": False, "error": error}), flush=True)
        return 1
    print(json.dumps(summary), flush=True)
    log.info("cluster initialised", extra={"topics": len(summary["topics"]),
                                           "subjects": len(summary["subjects"])})
    return 0


if __name__ == "__main__":
    sys.exit(main())
