"""Settings from the environment: the ONE place that reads os.environ.

Each service declares a frozen dataclass of its settings and calls ``load(MySettings, prefix)``;
field ``foo_bar`` is read from ``{PREFIX}FOO_BAR``. Platform settings (broker, registry, store,
topic names) are in ``PlatformSettings`` and read without a prefix, so every service and the
docker-compose file share the same names.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from reftrain.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class PlatformSettings:
    """Where the shared infrastructure is. Defaults match deploy/local/stack.sh."""

    kafka_bootstrap_servers: str = "127.0.0.1:19092"
    schema_registry_url: str = "http://127.0.0.1:18081/apis/ccompat/v7"
    #: DuckLake catalog: 'postgres:<libpq conninfo>' or 'sqlite:<file>' (single process only)
    store_catalog: str = "postgres:dbname=reftrain host=127.0.0.1 port=15432 user=postgres"
    #: Where DuckLake writes Parquet files and where model checkpoints live.
    store_data_path: str = ".local/stack/lake"
    #: Prefix of every topic name (tests use a random one per test for isolation).
    topic_prefix: str = ""
    topic_partitions: int = 6
    topic_replication: int = 1
    #: Stable identity of this process for Kafka transactions (transactional.id = group-instance).
    #: Keep it stable across restarts so a restarted instance fences its predecessor at once;
    #: empty = hostname-pid (unique, but a killed instance's open transaction then lingers until
    #: transaction.timeout.ms). Compose sets it to the container hostname.
    instance_id: str = ""
    http_host: str = "0.0.0.0"
    #: /metrics, /healthz and /readyz; unset = the service's default port, 0 = any free port (tests).
    http_port: int | None = None
    log_level: str = "INFO"
    #: 'json' (default, for machines) or 'text' (for a person at a terminal).
    log_format: str = "json"
    #: Fault tests only: '<stage>:<n>' SIGKILLs a stream service the n-th time a transaction
    #: reaches <stage> (reftrain.streams.FAILPOINT_STAGES). Empty = off.
    failpoint: str = ""


def _convert(raw: str, annotation: Any, name: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if raw == "" and type(None) in args:
            return None
        return _convert(raw, non_none[0], name)
    try:
        if annotation is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if annotation is int:
            return int(raw)
        if annotation is float:
            return float(raw)
        if annotation is str:
            return raw
        if origin is tuple:
            items = [s.strip() for s in raw.split(",") if s.strip()]
            return tuple(_convert(s, args[0], name) for s in items)
        if origin is dict:
            # "k1=v1,k2=v2"
            out = {}
            for part in raw.split(","):
                if part.strip():
                    k, _, v = part.partition("=")
                    out[k.strip()] = _convert(v.strip(), args[1], name)
            return out
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a valid {annotation}") from exc
    raise ConfigError(f"{name}: unsupported setting type {annotation}")


def load(cls: type[T], prefix: str = "", environ: Mapping[str, str] | None = None) -> T:
    """Build ``cls`` (a dataclass) from ``{prefix}{FIELD}`` environment variables."""
    env = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        var = f"{prefix}{field.name}".upper()
        if var in env:
            values[field.name] = _convert(env[var], hints[field.name], var)
    return cls(**values)


def platform(environ: Mapping[str, str] | None = None) -> PlatformSettings:
    return load(PlatformSettings, "", environ)
