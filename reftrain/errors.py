"""Named errors at the boundaries (Kafka, registry, store, input), so callers and DLQ headers can
say what went wrong by class name instead of parsing messages."""

from __future__ import annotations


class ReftrainError(Exception):
    """Base of every error this library raises on purpose."""


class ConfigError(ReftrainError):
    """A setting is missing or malformed."""


class DecodeError(ReftrainError):
    """Bytes on a topic could not be decoded into the expected record."""


class UnknownSchemaError(DecodeError):
    """The wire-format schema id is not known to the registry."""


class WrongRecordTypeError(DecodeError):
    """The writer schema is a different record than the topic carries."""


class UnshippedSchemaError(DecodeError):
    """The writer schema is the topic's record but none of the releases this project shipped
    (schemas/history): it may be hostile (an array<null> field decodes 2^62 items from 20 bytes),
    so the message is not decoded at all."""


class InvalidRecordError(ReftrainError):
    """A decoded record breaks a domain rule (NaN price, high < low, misaligned time, ...).

    ``reason`` is a short stable label used in counters and DLQ headers.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class KafkaBoundaryError(ReftrainError):
    """librdkafka reported an error we cannot handle in place (wraps KafkaError)."""


class KafkaAuthError(KafkaBoundaryError):
    """The broker refused this client's credentials (SASL/TLS). Services keep running, not ready,
    and retry with back-off: a rotated secret is picked up at the next try."""


class StoreError(ReftrainError):
    """The DuckLake store failed (catalog unavailable, conflict retries exhausted, ...)."""


class WindowMismatchError(ReftrainError):
    """A window re-read from the store differs from its reference (row count or checksum)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
