"""Which errors are worth retrying, decided by exception TYPE and error CODE, never by message text,
and the one back-off policy (tenacity) that retries them.

A message is no contract: DuckDB rewords its errors between releases and repeats the connection
string in them, so "does the text contain 'connection'" both misses real outages and retries
syntax errors that mention a column called ``connection``. The types are DuckDB's documented
exception classes and Kafka's error codes:

* DuckDB ``TransactionException`` / ``SerializationException``: a commit conflict with another
  writer of the DuckLake catalog; the transaction is rolled back and retried from the start.
* DuckDB ``ConnectionException`` and plain ``IOException``: the catalog (PostgreSQL) or the object
  store could not be reached. DuckDB raises the same class for a missing local file; the store
  never reads files it did not write, so such an error is retried a bounded number of times and
  then raised like any other.
* DuckDB ``HTTPException`` (an ``IOException`` with a status code): transient for 408, 429 and 5xx;
  403/404 and the rest are configuration errors and fail at once.
* Kafka ``KafkaError``: never when ``fatal()``; transient when ``retriable()`` or when its code is
  one of the broker-side "try again" codes (librdkafka does not set the retriable flag on every
  error it hands to an admin or transactional call).

Everything else (parser, binder, constraint, conversion errors, bugs) is permanent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import duckdb
from confluent_kafka import KafkaError, KafkaException
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

from reftrain.redact import redact_text

T = TypeVar("T")
log = logging.getLogger("reftrain.retry")

#: Commit conflicts and lost connections: the same statement may succeed on a later attempt.
DUCKDB_TRANSIENT: tuple[type[duckdb.Error], ...] = (
    duckdb.TransactionException, duckdb.SerializationException, duckdb.ConnectionException, duckdb.IOException)

#: HTTP statuses of an object store that is overloaded or briefly unreachable.
HTTP_TRANSIENT = frozenset({408, 429, 500, 502, 503, 504})

#: Kafka codes that mean "not now" (leadership moving, coordinator loading, broker unreachable).
KAFKA_TRANSIENT = frozenset({
    KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN, KafkaError._MSG_TIMED_OUT,
    KafkaError._RESOLVE, KafkaError._WAIT_COORD, KafkaError.REQUEST_TIMED_OUT, KafkaError.NETWORK_EXCEPTION,
    KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.LEADER_NOT_AVAILABLE, KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND, KafkaError.CONCURRENT_TRANSACTIONS,
    KafkaError.REBALANCE_IN_PROGRESS, KafkaError.KAFKA_STORAGE_ERROR, KafkaError.THROTTLING_QUOTA_EXCEEDED,
})


def kafka_error(exc: BaseException) -> KafkaError | None:
    """The KafkaError a confluent-kafka exception carries (KafkaException(KafkaError)), if any."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def is_transient_kafka(err: KafkaError) -> bool:
    if err.fatal():
        return False
    return bool(err.retriable()) or err.code() in KAFKA_TRANSIENT


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same operation may succeed (see the module docstring)."""
    if isinstance(exc, duckdb.HTTPException):
        return exc.status_code in HTTP_TRANSIENT
    if isinstance(exc, DUCKDB_TRANSIENT):
        return True
    err = kafka_error(exc)
    return err is not None and is_transient_kafka(err)


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning("retry", extra={"attempt": state.attempt_number,
                                "error": redact_text(f"{type(exc).__name__}: {exc}")[:200]})


def retrying(attempts: int, *, first_wait: float = 0.05, max_wait: float = 2.0) -> Retrying:
    """Up to ``attempts`` calls of an operation while it fails transiently, with exponential back-off
    (``first_wait`` doubling up to ``max_wait``) plus jitter, so writers that conflicted do not meet
    again; the last error is re-raised as it was."""
    return Retrying(stop=stop_after_attempt(max(1, attempts)),
                    wait=wait_exponential(multiplier=first_wait, max=max_wait) + wait_random(0, first_wait),
                    retry=retry_if_exception(is_transient), before_sleep=_log_retry, reraise=True)


def call(fn: Callable[[], T], attempts: int, **kw: Any) -> T:
    """``fn()`` under ``retrying(attempts, **kw)``."""
    return retrying(attempts, **kw)(fn)
