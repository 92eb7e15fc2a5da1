"""librdkafka's client-level errors (error_cb of every client), made readable.

A refused credential is the one error that retrying cannot fix and that librdkafka reports only as
a log line per reconnect plus a generic 'transport failure' to the call that was waiting; here it
becomes one clear ERROR line (at most once a minute per process), a counter, and a flag the
service loop can show. Services keep running (not ready) and retry with back-off, so a rotated
secret (KAFKA_CONFIG_FILE is re-read at each session start) is picked up without a restart.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from confluent_kafka import KafkaError
from prometheus_client import Counter

from reftrain.redact import redact_text

log = logging.getLogger("reftrain.kafka")

AUTH_FAILURES = Counter("reftrain_kafka_auth_failures_total",
                        "Kafka connections refused for their credentials (SASL/TLS authentication)")

_AUTH_CODES = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}
_lock = threading.Lock()
_last_logged = 0.0
#: monotonic time of the last authentication failure seen by any client of this process (0: none)
last_auth_failure = 0.0


def on_error(err: KafkaError) -> None:
    """error_cb of every client (reftrain.settings.kafka_client_config)."""
    global _last_logged, last_auth_failure
    if err.code() not in _AUTH_CODES:
        return  # librdkafka logs the transient ones itself
    AUTH_FAILURES.inc()
    now = time.monotonic()
    with _lock:
        last_auth_failure = now
        if now - _last_logged < 60.0:
            return
        _last_logged = now
    log.error("Kafka refused this client's credentials: check the SASL user/password or certificate "
              "(KAFKA_CONFIG_FILE, KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD); retrying with back-off",
              extra={"kafka_error": redact_text(err.str())})


def auth_failed_recently(within_s: float = 120.0) -> bool:
    return last_auth_failure > 0 and time.monotonic() - last_auth_failure < within_s


def serve(client: Any) -> None:
    """Deliver queued error callbacks of a client that is not polled (AdminClient)."""
    with contextlib.suppress(Exception):  # an unusable client: the caller reports its own error
        client.poll(0)
