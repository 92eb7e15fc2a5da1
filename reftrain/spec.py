"""What a service IS, declared once: ``ServiceSpec``.

Each ``services/<name>/spec.py`` declares one; ``services.catalog`` collects them. ops/stages.py,
the README service table (checked by tests/unit/platform/test_service_specs.py), the deployment
tests and ``python -m services.<name> --help`` read the spec instead of restating a port, a group
or a topic list. Kept free of Kafka and of service imports so anything may import it (reftrain.settings is
pydantic only).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any

from reftrain.settings import Settings


@dataclass(frozen=True)
class SettingDoc:
    """One environment variable of a service's settings: its name, type and default."""

    env: str
    type: str
    default: str


@dataclass(frozen=True)
class ServiceSpec:
    """A service as the platform, ops and the docs see it.

    ``inputs``/``outputs`` are logical topic names (reftrain.topics); ``external_inputs`` names
    what a service reads from outside Kafka (ingest's files and WebSocket), for the docs only.
    The consumer group (also the transactional-id and changelog stem) is ``<TOPIC_PREFIX><name>``
    (docs/platform.md). ``replay`` marks a
    service that exits 0 by itself once its input is done (ingest's INGEST_EXIT_WHEN_DONE), so ops
    reads that exit as "done", not as a crash.
    """

    name: str
    description: str
    default_port: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    settings_class: type[Settings]
    env_prefix: str
    readiness: str
    state: str = ""
    external_inputs: tuple[str, ...] = ()
    replay: bool = False

    @property
    def module(self) -> str:
        return f"services.{self.name}"

    def group(self, topic_prefix: str) -> str:
        """The consumer group (and transactional-id / changelog stem) under ``topic_prefix``; a service
        that consumes no topic (``inputs`` empty) never joins it."""
        return f"{topic_prefix}{self.name}"

    def settings(self) -> list[SettingDoc]:
        """The service's own variables (``<PREFIX><FIELD>``), in declaration order, with defaults."""
        cls = self.settings_class
        return [SettingDoc(cls.env_name(name), _type_name(f.annotation),
                           _env_text(f.get_default(call_default_factory=True)))
                for name, f in cls.model_fields.items()]

    def help_text(self) -> str:
        """What ``python -m services.<name> --help`` prints."""
        consumes = ", ".join(self.external_inputs + self.inputs) or "-"
        lines = [
            f"python -m {self.module}: {self.description}",
            "",
            f"consumes: {consumes}",
            f"produces: {', '.join(self.outputs) or '-'}",
            f"consumer group: <TOPIC_PREFIX>{self.name}" if self.inputs else "consumer group: none",
            f"HTTP port: {self.default_port} (HTTP_PORT): /metrics, /healthz, /readyz",
            f"ready when: {self.readiness}",
            "",
            f"settings ({self.env_prefix}*; platform settings such as KAFKA_BOOTSTRAP_SERVERS, "
            "TOPIC_PREFIX, STORE_CATALOG in docs/platform.md):",
        ]
        docs = self.settings()
        width = max((len(d.env) for d in docs), default=0)
        type_width = max((len(d.type) for d in docs), default=0)
        lines += [f"  {d.env.ljust(width)}  {d.type.ljust(type_width)}  default {d.default or EMPTY}" for d in docs]
        return "\n".join(lines) + "\n"


EMPTY = "''"


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return "|".join(str(a) for a in typing.get_args(annotation))
    if origin is tuple:
        return f"{_type_name(typing.get_args(annotation)[0])},..."
    if origin is dict:
        return f"timeframe={_type_name(typing.get_args(annotation)[1])},..."
    return getattr(annotation, "__name__", str(annotation))


def _env_text(value: Any) -> str:
    """A default as it would be written in the environment (reftrain.settings parses it back)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)
