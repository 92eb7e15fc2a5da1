"""The store's PostgreSQL catalog server, from the outside: one place that finds ``psql``, creates
and drops the throw-away catalog databases of runs, benches and tests, and makes a catalog database
refuse connections for a while (a store outage).

Why psql and not a driver: the platform's store talks to PostgreSQL only through DuckLake, so ops
and tests have no PostgreSQL client library; the stack already ships the ``psql`` binary
(deploy/local/stack.sh installs it).

A catalog string is the store's ``STORE_CATALOG``: ``postgres:dbname=... host=... port=... user=...``
(libpq key=value pairs). Anything else (``sqlite:...``) has no server: creating one is a no-op.
"""

from __future__ import annotations

import contextlib
import glob
import shutil
import subprocess
from collections.abc import Iterator

#: Databases of the stack itself: never dropped or made unavailable by this module.
PROTECTED = frozenset({"reftrain", "registry", "postgres", "template0", "template1"})


class CatalogError(RuntimeError):
    """psql is missing or a catalog statement failed (the message is psql's error, no password)."""


def is_postgres(catalog: str) -> bool:
    return catalog.startswith("postgres:")


def params(catalog: str) -> dict[str, str]:
    """The libpq key=value pairs of a ``postgres:`` catalog string."""
    if not is_postgres(catalog):
        raise CatalogError(f"not a PostgreSQL catalog: {catalog.split(':', 1)[0]}:...")
    return dict(part.split("=", 1) for part in catalog.split(":", 1)[1].split())


def with_database(catalog: str, name: str) -> str:
    """The same server, another database."""
    return "postgres:" + " ".join(f"{k}={v}" for k, v in {**params(catalog), "dbname": name}.items())


def database(catalog: str) -> str:
    return params(catalog).get("dbname", "reftrain")


def psql_binary() -> str:
    """``psql`` on PATH, else the newest /usr/lib/postgresql/*/bin/psql (where stack.sh's apt puts it)."""
    found = shutil.which("psql") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"), reverse=True)), None)
    if not found:
        raise CatalogError("psql not found (PostgreSQL client); deploy/local/stack.sh installs it")
    return found


def admin(catalog: str, sql: str, timeout: float = 60.0) -> None:
    """Run ``sql`` as the catalog's user on the server's ``postgres`` database (for statements about
    other databases: create, drop, alter, terminate sessions)."""
    info = params(catalog)
    cmd = [psql_binary(), "-q", "-h", info.get("host", "127.0.0.1"), "-p", info.get("port", "5432"), "-U",
           info.get("user", "postgres"), "-d", "postgres", "-c", sql]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise CatalogError(f"psql failed ({sql.split()[0]} ...): {res.stderr.strip()}")


def fresh_catalog(catalog: str, name: str) -> str:
    """A new, empty catalog database ``name`` on the server of ``catalog``; returns its catalog
    string. A catalog without a server (sqlite) is returned unchanged."""
    if not is_postgres(catalog):
        return catalog
    try:
        admin(catalog, f"create database {name}")
    except CatalogError as exc:
        raise CatalogError(f"cannot create catalog database {name}: {exc}") from exc
    return with_database(catalog, name)


def drop_catalog(catalog: str) -> None:
    """Drop a run's catalog database (sessions are cut); never one of the stack's own (PROTECTED).
    Best effort: a clean-up must not hide the error that led to it."""
    if not is_postgres(catalog) or database(catalog) in PROTECTED:
        return
    with contextlib.suppress(CatalogError, subprocess.TimeoutExpired):
        admin(catalog, f"drop database if exists {database(catalog)} with (force)")


@contextlib.contextmanager
def unavailable(catalog: str) -> Iterator[None]:
    """The catalog database refuses connections and its sessions are terminated (as in a database
    restart or fail-over; the DuckLake data files stay). Allowed again on exit."""
    db = database(catalog)
    if db in PROTECTED:
        raise CatalogError(f"refusing to take the stack's own database {db!r} down")
    admin(catalog, f"ALTER DATABASE {db} ALLOW_CONNECTIONS false")
    try:
        admin(catalog, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'")
        yield
    finally:
        admin(catalog, f"ALTER DATABASE {db} ALLOW_CONNECTIONS true")
