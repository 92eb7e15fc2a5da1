"""reftrain.retry classifies errors by type and code, with REAL exception instances: DuckDB errors
provoked against a real DuckDB (a commit conflict, a catalog on a closed port, an HTTP 503/404 from a
local server, a missing file, a syntax error) and Kafka errors from a real client."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from reftrain import retry
from reftrain.store import _load_extensions


def _raised(fn: Callable[[], object]) -> BaseException:
    try:
        fn()
    except BaseException as exc:
        return exc
    raise AssertionError("no error")


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    c = duckdb.connect()
    _load_extensions(c, "postgres:", remote=True)  # the store's own extensions: ducklake, postgres, httpfs
    return c


@pytest.fixture(scope="module")
def http_status() -> Iterator[str]:
    """A local server answering ``/<status>.csv`` with that HTTP status (an object store's errors)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(int(self.path.strip("/").split(".")[0]))
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def conflict() -> duckdb.Error:
    """Two transactions updating the same row: the second gets DuckDB's commit conflict."""
    db = duckdb.connect()
    db.execute("CREATE TABLE t(i INT PRIMARY KEY, v INT)")
    db.execute("INSERT INTO t VALUES (1, 0)")
    a, b = db.cursor(), db.cursor()
    a.execute("BEGIN")
    b.execute("BEGIN")
    a.execute("UPDATE t SET v = 1 WHERE i = 1")
    exc = _raised(lambda: b.execute("UPDATE t SET v = 2 WHERE i = 1"))
    assert isinstance(exc, duckdb.Error)
    return exc


def test_duckdb_errors_are_classified_by_type(con: duckdb.DuckDBPyConnection, http_status: str,
                                              tmp_path: Path) -> None:
    c = conflict()
    assert isinstance(c, duckdb.TransactionException) and retry.is_transient(c)
    port = _closed_port()
    down = _raised(lambda: con.execute(
        f"ATTACH 'ducklake:postgres:dbname=x host=127.0.0.1 port={port} user=postgres connect_timeout=2' "
        f"AS lake (DATA_PATH '{tmp_path}')"))
    assert isinstance(down, duckdb.IOException) and retry.is_transient(down)  # the catalog is unreachable
    overloaded = _raised(lambda: con.execute(f"SELECT * FROM read_csv('{http_status}/503.csv')"))
    assert isinstance(overloaded, duckdb.HTTPException) and overloaded.status_code == 503
    assert retry.is_transient(overloaded)
    missing = _raised(lambda: con.execute(f"SELECT * FROM read_csv('{http_status}/404.csv')"))
    assert isinstance(missing, duckdb.HTTPException) and missing.status_code == 404
    assert not retry.is_transient(missing)  # a wrong bucket or key: configuration, fail at once
    no_server = _raised(lambda: con.execute(f"SELECT * FROM read_csv('http://127.0.0.1:{port}/x.csv')"))
    assert isinstance(no_server, duckdb.IOException) and retry.is_transient(no_server)
    # a missing local file is DuckDB's IOException too: retried a bounded number of times (documented)
    assert retry.is_transient(_raised(lambda: con.execute(f"SELECT * FROM read_parquet('{tmp_path}/none.parquet')")))
    syntax = _raised(lambda: con.execute("SELEC 1"))
    assert isinstance(syntax, duckdb.ParserException) and not retry.is_transient(syntax)
    # a message that mentions "connection" and "transaction" is still a binder error: not transient
    binder = _raised(lambda: con.execute("SELECT connection_transaction_lock_timeout FROM (SELECT 1 AS x)"))
    assert isinstance(binder, duckdb.BinderException) and not retry.is_transient(binder)
    db = duckdb.connect()
    db.execute("CREATE TABLE u(i INT PRIMARY KEY)")
    db.execute("INSERT INTO u VALUES (1)")
    dup = _raised(lambda: db.execute("INSERT INTO u VALUES (1)"))
    assert isinstance(dup, duckdb.ConstraintException) and not retry.is_transient(dup)
    assert not retry.is_transient(ValueError("connection timeout"))  # words decide nothing


def test_kafka_errors_are_classified_by_code() -> None:
    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{_closed_port()}",
                         "socket.connection.setup.timeout.ms": 1000})
    down = _raised(lambda: admin.list_topics(timeout=1.5))
    assert isinstance(down, KafkaException)
    err = retry.kafka_error(down)
    assert err is not None and err.code() in (KafkaError._TRANSPORT, KafkaError._TIMED_OUT)
    assert retry.is_transient(down)
    assert retry.is_transient(KafkaException(KafkaError(KafkaError.NOT_COORDINATOR)))
    assert retry.is_transient(KafkaException(KafkaError(KafkaError.UNKNOWN, retriable=True)))  # the flag counts
    assert not retry.is_transient(KafkaException(KafkaError(KafkaError.TOPIC_ALREADY_EXISTS)))
    assert not retry.is_transient(KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)))
    # fatal wins over a transient code: a fenced producer must be rebuilt, not retried
    assert not retry.is_transient(KafkaException(KafkaError(KafkaError._TRANSPORT, fatal=True)))


def test_the_policy_retries_transient_errors_only_and_reraises_the_last() -> None:
    calls: list[int] = []
    c = conflict()

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise c
        return "ok"

    assert retry.call(flaky, 5, first_wait=0.001) == "ok" and len(calls) == 3
    calls.clear()

    def always() -> None:
        calls.append(1)
        raise c

    with pytest.raises(duckdb.TransactionException):
        retry.call(always, 4, first_wait=0.001)
    assert len(calls) == 4  # bounded
    calls.clear()
    syntax = _raised(lambda: duckdb.connect().execute("SELEC 1"))

    def wrong() -> None:
        calls.append(1)
        raise syntax

    with pytest.raises(duckdb.ParserException):
        retry.call(wrong, 5, first_wait=0.001)
    assert len(calls) == 1  # a permanent error is raised at once
