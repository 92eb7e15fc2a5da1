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
from pathlib import Path
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
    #: Interface of /metrics, /healthz, /readyz: loopback unless widened (containers set 0.0.0.0).
    http_host: str = "127.0.0.1"
    #: /metrics, /healthz and /readyz; unset = the service's default port, 0 = any free port (tests).
    http_port: int | None = None
    log_level: str = "INFO"
    #: 'json' (default, for machines) or 'text' (for a person at a terminal).
    log_format: str = "json"
    #: Fault tests only: '<stage>:<n>' SIGKILLs a stream service the n-th time a transaction
    #: reaches <stage> (reftrain.streams.FAILPOINT_STAGES). Empty = off.
    failpoint: str = ""
    #: librdkafka properties file (``key=value`` lines) applied to EVERY Kafka client (producers,
    #: consumers, admin clients, the init job): TLS, SASL, timeouts. See docs/security.md.
    kafka_config_file: str = ""
    #: ``KAFKA_<NAME>`` variables for client properties (KAFKA_SECURITY_PROTOCOL -> security.protocol,
    #: ``__`` -> ``_``), filled by platform(); they override the file. Kept as pairs so the frozen
    #: settings stay hashable; never printed (see __repr__).
    kafka_client: tuple[tuple[str, str], ...] = ()
    #: Properties file for the schema registry client (ssl.ca.location, ssl.certificate.location,
    #: ssl.key.location, basic.auth.user.info, bearer.auth.*), the same keys as confluent-kafka's.
    schema_registry_config_file: str = ""
    #: Private CA bundle for an https registry URL.
    schema_registry_ca_location: str = ""
    #: Basic auth as ``user:password`` (or SCHEMA_REGISTRY_BASIC_AUTH_FILE holding it).
    schema_registry_basic_auth: str = ""
    schema_registry_basic_auth_file: str = ""
    #: Static bearer token (or SCHEMA_REGISTRY_TOKEN_FILE holding it).
    schema_registry_token: str = ""
    schema_registry_token_file: str = ""
    #: A file holding the catalog password (mounted secret); it is added, escaped, to the
    #: STORE_CATALOG conninfo, so the password never has to sit in an environment variable.
    #: libpq's own PGPASSFILE works as well (the catalog connection is libpq's).
    store_catalog_password_file: str = ""
    #: The lake on an S3 API (STORE_DATA_PATH=s3://bucket/prefix): host[:port] of a non-AWS
    #: endpoint (S3Proxy, MinIO, GCS interop; empty = AWS), credentials (or
    #: STORE_S3_SECRET_ACCESS_KEY_FILE), region, 'path' or 'vhost' URL style, TLS. Applied as a
    #: DuckDB SECRET by reftrain.store; the secret key is never printed (see public()).
    store_s3_endpoint: str = ""
    store_s3_access_key_id: str = ""
    store_s3_secret_access_key: str = ""
    store_s3_secret_access_key_file: str = ""
    store_s3_region: str = "us-east-1"
    store_s3_url_style: str = "vhost"
    store_s3_use_ssl: bool = True

    def __repr__(self) -> str:
        """Settings end up in logs and tracebacks: show them with every secret redacted."""
        body = ", ".join(f"{k}={v!r}" for k, v in self.public().items())
        return f"PlatformSettings({body})"

    __str__ = __repr__

    def public(self) -> dict[str, Any]:
        """The settings as a dict safe to write into run.json, reports and logs."""
        from reftrain.redact import redact_text

        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "kafka_client":
                value = redact_config(dict(value))
            elif f.name in ("schema_registry_basic_auth", "schema_registry_token", "store_s3_secret_access_key") \
                    and value:
                value = REDACTED
            elif isinstance(value, str):
                value = redact_text(value)
            out[f.name] = value
        return out


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
    env = os.environ if environ is None else environ
    base = load(PlatformSettings, "", env)
    return dataclasses.replace(base, kafka_client=kafka_env_properties(env))


# -- Kafka / registry client configuration (one passthrough for every client) --------------------

REDACTED = "[redacted]"  # same marker as reftrain.redact

#: Kafka client properties that carry a secret: never logged, never in a repr.
SECRET_KEYS = ("sasl.password", "ssl.key.password", "ssl.keystore.password", "ssl.key.pem",
               "sasl.oauthbearer.client.secret", "sasl.oauthbearer.config", "basic.auth.user.info",
               "bearer.auth.token", "bearer.auth.client.secret", "password")

#: KAFKA_* variables mapped to client properties only when the property starts with one of these:
#: the same environment also carries the broker's own KAFKA_HEAP_OPTS, KAFKA_OPTS, ... which are no
#: client properties (librdkafka would refuse them). Anything else goes into KAFKA_CONFIG_FILE.
KAFKA_ENV_PREFIXES = ("security.", "sasl.", "ssl.", "enable.ssl.", "enable.sasl.", "client.", "socket.",
                      "reconnect.", "retry.", "metadata.", "topic.metadata.", "api.version.",
                      "broker.address.", "connections.", "debug", "statistics.", "log.connection.")

#: Set by our code per client, or by a setting of its own: refused in the passthrough.
KAFKA_RESERVED = ("bootstrap.servers", "group.id", "transactional.id", "group.instance.id")


def is_secret_key(key: str) -> bool:
    k = key.lower()
    return any(k == s or k.endswith("." + s) or k.endswith(s) for s in SECRET_KEYS)


def redact_config(conf: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a client configuration with secret values replaced, for logs and reprs."""
    return {k: (REDACTED if is_secret_key(k) and v not in ("", None) else v) for k, v in conf.items()}


def env_to_property(var: str, prefix: str = "KAFKA_") -> str:
    """KAFKA_SASL_USERNAME -> sasl.username; a double underscore keeps one: KAFKA_A__B -> a_b."""
    body = var[len(prefix):].lower()
    return ".".join(part for part in body.replace("__", "\0").split("_")).replace("\0", "_")


def kafka_env_properties(env: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    out = []
    for var in sorted(env):
        if not var.startswith("KAFKA_") or var in ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_CONFIG_FILE"):
            continue
        prop = env_to_property(var)
        if prop.startswith(KAFKA_ENV_PREFIXES):
            out.append((prop, env[var]))
    return tuple(out)


def read_properties(path: str, what: str) -> dict[str, str]:
    """``key=value`` (or ``key: value``) lines; ``#``/``!`` comments; as Java and kcat read them."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{what} {path!r} cannot be read: {exc.strerror}") from None
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#!":
            continue
        sep = min((i for i in (line.find("="), line.find(":")) if i > 0), default=-1)
        if sep < 0:
            raise ConfigError(f"{what} {path!r} line {n}: expected key=value")
        out[line[:sep].strip()] = line[sep + 1:].strip()
    return out


def _secret_file(path: str, what: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{what} {path!r} cannot be read: {exc.strerror}") from None


def kafka_client_config(settings: PlatformSettings) -> dict[str, Any]:
    """Connection properties shared by every producer, consumer and admin client: the bootstrap
    servers, KAFKA_CONFIG_FILE, then KAFKA_* variables (the more specific wins)."""
    conf: dict[str, Any] = {}
    if settings.kafka_config_file:
        conf.update(read_properties(settings.kafka_config_file, "KAFKA_CONFIG_FILE"))
    conf.update(dict(settings.kafka_client))
    bad = sorted(k for k in conf if k in KAFKA_RESERVED)
    if bad:
        raise ConfigError(f"Kafka client passthrough may not set {bad}: use KAFKA_BOOTSTRAP_SERVERS / "
                          f"the service's own settings")
    conf["bootstrap.servers"] = settings.kafka_bootstrap_servers
    from reftrain import kafka_errors  # late: settings stays importable without confluent_kafka

    conf["error_cb"] = kafka_errors.on_error  # a refused credential is logged clearly, once a minute
    return conf


def registry_client_config(settings: PlatformSettings) -> dict[str, Any]:
    """Configuration of every schema registry client: URL, TLS (private CA, client certificate) and
    credentials (basic auth or a static bearer token), from the file and the variables."""
    conf: dict[str, Any] = {"url": settings.schema_registry_url, "timeout": 10, "cache.capacity": 1000}
    if settings.schema_registry_config_file:
        conf.update(read_properties(settings.schema_registry_config_file, "SCHEMA_REGISTRY_CONFIG_FILE"))
    if settings.schema_registry_ca_location:
        conf["ssl.ca.location"] = settings.schema_registry_ca_location
    basic = settings.schema_registry_basic_auth or (
        _secret_file(settings.schema_registry_basic_auth_file, "SCHEMA_REGISTRY_BASIC_AUTH_FILE")
        if settings.schema_registry_basic_auth_file else "")
    if basic:
        if ":" not in basic:
            raise ConfigError("SCHEMA_REGISTRY_BASIC_AUTH must be user:password")
        conf["basic.auth.credentials.source"] = "USER_INFO"
        conf["basic.auth.user.info"] = basic
    token = settings.schema_registry_token or (
        _secret_file(settings.schema_registry_token_file, "SCHEMA_REGISTRY_TOKEN_FILE")
        if settings.schema_registry_token_file else "")
    if token:
        if basic:
            raise ConfigError("set either registry basic auth or a bearer token, not both")
        conf["bearer.auth.credentials.source"] = "STATIC_TOKEN"
        conf["bearer.auth.token"] = token
        conf.setdefault("bearer.auth.logical.cluster", "")
    for key in ("timeout", "cache.capacity", "max.retries"):
        if isinstance(conf.get(key), str):
            conf[key] = int(conf[key])
    return conf


def catalog_password(settings: PlatformSettings) -> str | None:
    """The catalog password from STORE_CATALOG_PASSWORD_FILE, if set."""
    if not settings.store_catalog_password_file:
        return None
    return _secret_file(settings.store_catalog_password_file, "STORE_CATALOG_PASSWORD_FILE")


def s3_secret_access_key(settings: PlatformSettings) -> str:
    """STORE_S3_SECRET_ACCESS_KEY, or the content of STORE_S3_SECRET_ACCESS_KEY_FILE (a mounted secret)."""
    if settings.store_s3_secret_access_key:
        return settings.store_s3_secret_access_key
    if settings.store_s3_secret_access_key_file:
        return _secret_file(settings.store_s3_secret_access_key_file, "STORE_S3_SECRET_ACCESS_KEY_FILE")
    return ""


def _conninfo_password(catalog: str) -> str | None:
    import re

    m = re.search(r"""\bpassword\s*=\s*('(?:[^'\\]|\\.)*'|\S+)""", catalog)
    return m.group(0) if m else None


def from_public(public: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> PlatformSettings:
    """Settings rebuilt from ``PlatformSettings.public()`` (run.json): redacted secrets come back
    from the CURRENT environment (STORE_CATALOG's password, KAFKA_*, registry credentials), never
    from the file. Without them the catalog is reached with libpq's own PGPASSFILE/PGPASSWORD or
    STORE_CATALOG_PASSWORD_FILE."""
    now = platform(environ)
    values = {f.name: public[f.name] for f in dataclasses.fields(PlatformSettings) if f.name in public}
    values["kafka_client"] = now.kafka_client
    for name in ("schema_registry_basic_auth", "schema_registry_token", "store_s3_secret_access_key"):
        if values.get(name) == REDACTED:
            values[name] = getattr(now, name)
    if REDACTED in str(values.get("schema_registry_url", "")):
        values["schema_registry_url"] = now.schema_registry_url
    catalog = str(values.get("store_catalog", ""))
    secret = _conninfo_password(catalog)
    if secret is not None and REDACTED in secret:
        catalog = " ".join(catalog.replace(secret, "").split())
        current = _conninfo_password(now.store_catalog)
        values["store_catalog"] = f"{catalog} {current}" if current else catalog
    return PlatformSettings(**values)
