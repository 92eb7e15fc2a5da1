"""Settings from the environment: the ONE place that reads os.environ.

Every settings class is a pydantic-settings model derived from ``Settings``: a frozen model whose
field ``foo_bar`` is read from ``{PREFIX}FOO_BAR`` (the prefix is the model's ``env_prefix``) by
``Cls.from_env()``. Constructing a model directly (``TrainerSettings(batch=8)``) reads NO
environment: the defaults plus the arguments, validated the same way. Ranges are declared on the
fields (``Field(ge=0)``), so a bad value stops a service with a message that names the variable and
the allowed range (``COORDINATOR_ALIGN_MAX_WAIT_MS must be >= 0, got -1``), never a pydantic dump.
Values keep the formats they always had: lists are comma-separated (``PIVOTS_STRENGTHS=2,2,2``),
maps are ``k=v`` pairs (``COORDINATOR_PIVOT_WINDOW_MS_BY_TIMEFRAME=1h=1800000``), an empty value of
an optional number is "unset".

Platform settings (broker, registry, store, topic names) are ``PlatformSettings``, read without a
prefix, so every service and the docker-compose file share the same names. A secret may be given
as ``NAME`` or as ``NAME_FILE`` (a mounted file holding it): ``secret()`` is the one reader.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from reftrain.errors import ConfigError

REDACTED = "[redacted]"  # same marker as reftrain.redact

S = TypeVar("S", bound="Settings")


class Settings(BaseSettings):
    """Base of every settings model: frozen, validated, read from the environment by ``from_env()``."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", enable_decoding=False)

    #: Fields whose values are never shown (repr, public(), error messages).
    secret_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            # the pydantic error repeats the input (a secret, perhaps): the cause is not chained
            raise ConfigError(explain(exc, type(self))) from None

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Construction takes only its arguments: the environment is read by ``from_env`` alone, so a
        test's or a bench's ``CoordinatorSettings()`` is the defaults whatever the shell exports."""
        return (init_settings,)

    @classmethod
    def env_prefix(cls) -> str:
        return str(cls.model_config.get("env_prefix", ""))

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable of ``field``."""
        return f"{cls.env_prefix()}{field}".upper()

    @classmethod
    def env_names(cls) -> list[str]:
        """Every variable of this model, in declaration order."""
        return [cls.env_name(name) for name in cls.model_fields]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """The settings from ``environ`` (default: os.environ); unset variables keep their defaults."""
        return cls(**_MappingEnvSource(cls, os.environ if environ is None else environ)())

    def replace(self, **changes: Any) -> Self:
        """A validated copy with ``changes`` (what dataclasses.replace was for the old dataclasses)."""
        return type(self)(**{**{name: getattr(self, name) for name in type(self).model_fields}, **changes})

    def as_dict(self) -> dict[str, Any]:
        """Field values by name; ``Cls(**s.as_dict()) == s``."""
        return {name: getattr(self, name) for name in type(self).model_fields}

    @field_validator("*", mode="before")
    @classmethod
    def _from_env_text(cls, value: Any, info: ValidationInfo) -> Any:
        """Environment text in the formats the variables have always had (see the module docstring)."""
        if not isinstance(value, str) or info.field_name is None:
            return value
        return env_text(value, cls.model_fields[info.field_name].annotation)


def env_text(raw: str, annotation: Any) -> Any:
    """``raw`` (an environment value) shaped for ``annotation``: comma lists, ``k=v`` maps, '' = None."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if raw == "" and type(None) in args:
            return None
        return env_text(raw, next(a for a in args if a is not type(None)))
    if origin is tuple:
        return [s.strip() for s in raw.split(",") if s.strip()]
    if origin is dict:
        pairs = (part.partition("=") for part in raw.split(",") if part.strip())
        return {k.strip(): v.strip() for k, _, v in pairs}
    return raw


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over any mapping (tests, compose files, k8s manifests),
    matching the upper-case names only, as the services have always been configured."""

    def __init__(self, cls: type[Settings], environ: Mapping[str, str]) -> None:
        self._environ = {k: v for k, v in environ.items() if k == k.upper()}
        super().__init__(cls, case_sensitive=False, env_prefix=cls.env_prefix())

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, False, False, None)


_RANGES = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"),
           "less_than_equal": ("<=", "le"), "less_than": ("<", "lt")}


def explain(exc: ValidationError, cls: type[Settings]) -> str:
    """One line per error, naming the environment variable: ``X must be >= 0, got -1``."""
    from reftrain.redact import redact_text

    lines = []
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        field = str(loc[0]) if loc else ""
        name = cls.env_name(field) if field else cls.__name__
        where = name + "".join(f"[{part}]" for part in loc[1:])
        value = err.get("input")
        got = REDACTED if field in cls.secret_fields else redact_text(repr(value))
        ctx = err.get("ctx") or {}
        kind = err["type"]
        if kind in _RANGES:
            op, key = _RANGES[kind]
            number = value if isinstance(value, str) and got != REDACTED else got  # env text: as written
            bound = ctx[key]
            bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
            lines.append(f"{where} must be {op} {bound}, got {number}")
        elif kind == "literal_error":
            lines.append(f"{where}={got}: use {str(ctx['expected']).replace(chr(39), '')}")
        elif kind == "extra_forbidden":
            lines.append(f"{where}: no such setting")
        elif kind == "value_error":
            lines.append(f"{where}={got}: {ctx['error']}")
        else:
            lines.append(f"{where}={got}: {err['msg']}")
    return "; ".join(lines)


def load(cls: type[S], prefix: str | None = None, environ: Mapping[str, str] | None = None) -> S:
    """``cls.from_env(environ)``; ``prefix``, when given, must be the model's own (a guard for callers
    that pass a spec's ``env_prefix``)."""
    if prefix is not None and prefix != cls.env_prefix():
        raise ConfigError(f"{cls.__name__} reads {cls.env_prefix()}*, not {prefix}*")
    return cls.from_env(environ)


def secret(settings: Settings, name: str) -> str:
    """The secret ``name``: its own variable, else the content of ``<NAME>_FILE`` (a mounted secret,
    trailing newline stripped), else ''. The one reader of every ``*_FILE`` secret."""
    value = str(getattr(settings, name, "") or "")
    if value:
        return value
    path = str(getattr(settings, f"{name}_file", "") or "")
    if not path:
        return ""
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{settings.env_name(name + '_file')} {path!r} cannot be read: {exc.strerror}") from None


class PlatformSettings(Settings):
    """Where the shared infrastructure is. Defaults match deploy/local/stack.sh."""

    model_config = SettingsConfigDict(env_prefix="")
    secret_fields: ClassVar[tuple[str, ...]] = (
        "schema_registry_basic_auth", "schema_registry_token", "store_s3_secret_access_key")

    kafka_bootstrap_servers: str = "127.0.0.1:19092"
    schema_registry_url: str = "http://127.0.0.1:18081/apis/ccompat/v7"
    #: DuckLake catalog: 'postgres:<libpq conninfo>' or 'sqlite:<file>' (single process only)
    store_catalog: str = "postgres:dbname=reftrain host=127.0.0.1 port=15432 user=postgres"
    #: Where DuckLake writes Parquet files and where model checkpoints live.
    store_data_path: str = ".local/stack/lake"
    #: Prefix of every topic name (tests use a random one per test for isolation).
    topic_prefix: str = ""
    topic_partitions: int = Field(default=6, ge=1)
    topic_replication: int = Field(default=1, ge=1)
    #: Stable identity of this process for Kafka transactions (transactional.id = group-instance).
    #: Keep it stable across restarts so a restarted instance fences its predecessor at once;
    #: empty = hostname-pid (unique, but a killed instance's open transaction then lingers until
    #: transaction.timeout.ms). Compose sets it to the container hostname.
    instance_id: str = ""
    #: Interface of /metrics, /healthz, /readyz: loopback unless widened (containers set 0.0.0.0).
    http_host: str = "127.0.0.1"
    #: /metrics, /healthz and /readyz; unset = the service's default port, 0 = any free port (tests).
    http_port: int | None = Field(default=None, ge=0, le=65535)
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
    #: ``__`` -> ``_``), filled by from_env(); they override the file. Kept as pairs so the frozen
    #: settings stay hashable; never printed (see __repr__).
    kafka_client: tuple[tuple[str, str], ...] = ()
    #: Properties file for the schema registry client (ssl.ca.location, ssl.certificate.location,
    #: ssl.key.location, basic.auth.user.info, bearer.auth.*), the same keys as confluent-kafka's.
    schema_registry_config_file: str = ""
    #: Private CA bundle for an https registry URL.
    schema_registry_ca_location: str = ""
    #: Basic auth as ``user:password`` (or SCHEMA_REGISTRY_BASIC_AUTH_FILE holding it); a static bearer
    #: token (or SCHEMA_REGISTRY_TOKEN_FILE). Read through secret().
    schema_registry_basic_auth: str = ""
    schema_registry_basic_auth_file: str = ""
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

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """The platform settings plus the ``KAFKA_*`` client properties of the same environment."""
        env = os.environ if environ is None else environ
        base = super().from_env(env)
        return base.replace(kafka_client=kafka_env_properties(env))

    def __repr__(self) -> str:
        """Settings end up in logs and tracebacks: show them with every secret redacted."""
        body = ", ".join(f"{k}={v!r}" for k, v in self.public().items())
        return f"PlatformSettings({body})"

    __str__ = __repr__

    def public(self) -> dict[str, Any]:
        """The settings as a dict safe to write into run.json, reports and logs."""
        from reftrain.redact import redact_text

        out: dict[str, Any] = {}
        for name, value in self.as_dict().items():
            if name == "kafka_client":
                value = redact_config(dict(value))
            elif name in self.secret_fields and value:
                value = REDACTED
            elif isinstance(value, str):
                value = redact_text(value)
            out[name] = value
        return out

    def connection_env(self) -> dict[str, str]:
        """Where the infrastructure is, as the variables a service subprocess reads (ops.run's
        services, the tests' subprocesses): the run's own topics, catalog and lake."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap_servers,
            "SCHEMA_REGISTRY_URL": self.schema_registry_url,
            "STORE_CATALOG": self.store_catalog,
            "STORE_CATALOG_PASSWORD_FILE": self.store_catalog_password_file,
            "STORE_DATA_PATH": self.store_data_path,
            "TOPIC_PREFIX": self.topic_prefix,
            "TOPIC_PARTITIONS": str(self.topic_partitions),
        }


def platform(environ: Mapping[str, str] | None = None) -> PlatformSettings:
    return PlatformSettings.from_env(environ)


# -- Kafka / registry client configuration (one passthrough for every client) --------------------


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
    basic = secret(settings, "schema_registry_basic_auth")
    if basic:
        if ":" not in basic:
            raise ConfigError("SCHEMA_REGISTRY_BASIC_AUTH must be user:password")
        conf["basic.auth.credentials.source"] = "USER_INFO"
        conf["basic.auth.user.info"] = basic
    token = secret(settings, "schema_registry_token")
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
    return secret(settings, "store_catalog_password") or None


def s3_secret_access_key(settings: PlatformSettings) -> str:
    """STORE_S3_SECRET_ACCESS_KEY, or the content of STORE_S3_SECRET_ACCESS_KEY_FILE (a mounted secret)."""
    return secret(settings, "store_s3_secret_access_key")


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
    values = {name: public[name] for name in PlatformSettings.model_fields if name in public}
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
