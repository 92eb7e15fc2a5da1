"""The store's PostgreSQL catalog server, from the outside: one place that finds ``psql``, creates
and drops the throw-away catalog databases of runs, benches and tests, and makes a catalog database
refuse connections for a while (a store outage).

Why psql and not a driver: the platform's store talks to PostgreSQL only through DuckLake, so ops
and tests have no PostgreSQL client library; the stack already ships the ``psql`` binary
(deploy/local/stack.sh installs it).

A catalog string is the store's ``STORE_CATALOG``: ``postgres:dbname=... host=... port=... user=...``
(libpq key=value pairs). Anything else (``sqlite:...``) has no server: creating one is a no-op.

Two logins (docs/security.md): statements about databases run as the admin role
(REFTRAIN_CATALOG_ADMIN_USER, password from REFTRAIN_CATALOG_ADMIN_PASSWORD_FILE); a new catalog
database is owned by the catalog's own user (the services' role), which may create tables there and
nothing else. Passwords reach psql by environment, never on its command line.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping

#: The admin role for statements about databases (create, drop, take down) and its password file:
#: ``deploy/local/stack.sh env`` prints them. Unset: the catalog's own user (a trust stack).
ADMIN_USER_ENV = "REFTRAIN_CATALOG_ADMIN_USER"
ADMIN_PASSWORD_FILE_ENV = "REFTRAIN_CATALOG_ADMIN_PASSWORD_FILE"

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


def _secret_file(path: str, what: str) -> str:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError as exc:
        raise CatalogError(f"{what}: cannot read {path} ({exc.strerror})") from None


def own_password(catalog: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The password of the catalog's own user: ``password=`` in the string, else the content of
    STORE_CATALOG_PASSWORD_FILE (as the services read it), else None (libpq: PGPASSFILE or trust)."""
    env = os.environ if environ is None else environ
    pw = params(catalog).get("password")
    if pw:
        return pw.strip("'")
    if env.get("STORE_CATALOG_PASSWORD_FILE"):
        return _secret_file(env["STORE_CATALOG_PASSWORD_FILE"], "STORE_CATALOG_PASSWORD_FILE")
    return None


def admin_login(catalog: str, environ: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """(user, password) for statements about databases: the admin role REFTRAIN_CATALOG_ADMIN_USER
    with REFTRAIN_CATALOG_ADMIN_PASSWORD_FILE (``stack.sh env`` prints both: the services' role may
    not create databases), else the catalog's own user (a trust stack where that is the superuser)."""
    env = os.environ if environ is None else environ
    user = env.get(ADMIN_USER_ENV, "")
    if not user:
        return params(catalog).get("user", "postgres"), own_password(catalog, env)
    pw_file = env.get(ADMIN_PASSWORD_FILE_ENV, "")
    return user, _secret_file(pw_file, ADMIN_PASSWORD_FILE_ENV) if pw_file else None


def _psql(catalog: str, sql: str, user: str, password: str | None, dbname: str, timeout: float) -> str:
    info = params(catalog)
    cmd = [psql_binary(), "-X", "-q", "-tA", "-h", info.get("host", "127.0.0.1"), "-p", info.get("port", "5432"),
           "-U", user, "-d", dbname, "-c", sql]
    env = {**os.environ, "PGCONNECT_TIMEOUT": os.environ.get("PGCONNECT_TIMEOUT", "10")}
    if password is not None:
        env["PGPASSWORD"] = password  # by environment: never on a command line (ps shows those)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if res.returncode != 0:
        raise CatalogError(f"psql failed ({sql.split()[0]} ... as {user}): {res.stderr.strip()}")
    return res.stdout


def admin(catalog: str, sql: str, timeout: float = 60.0, environ: Mapping[str, str] | None = None,
          dbname: str = "postgres") -> str:
    """Run ``sql`` as the admin role (``admin_login``) on the server's ``postgres`` database (for
    statements about other databases: create, drop, alter, terminate sessions); psql's unaligned
    output. ``environ``: the stack's variables when they are not this process's (another stack)."""
    user, password = admin_login(catalog, environ)
    try:
        return _psql(catalog, sql, user, password, dbname, timeout)
    except CatalogError as exc:
        if "permission denied" in str(exc) or "must be" in str(exc):
            raise CatalogError(f"{exc} (set {ADMIN_USER_ENV} and {ADMIN_PASSWORD_FILE_ENV}: "
                               f"deploy/local/stack.sh env prints them)") from None
        raise


def query(catalog: str, sql: str, timeout: float = 60.0, environ: Mapping[str, str] | None = None) -> str:
    """Run ``sql`` as the catalog's OWN user on its own database (what a service may do); psql's
    unaligned output. Raises CatalogError when PostgreSQL refuses the login or the statement."""
    info = params(catalog)
    return _psql(catalog, sql, info.get("user", "postgres"), own_password(catalog, environ),
                 info.get("dbname", "reftrain"), timeout)


def fresh_catalog(catalog: str, name: str, environ: Mapping[str, str] | None = None) -> str:
    """A new, empty catalog database ``name`` on the server of ``catalog``, created by the admin role
    and owned by the catalog's user (who then creates the DuckLake tables in it, and nothing
    elsewhere); returns its catalog string. A catalog without a server (sqlite) is returned unchanged."""
    if not is_postgres(catalog):
        return catalog
    owner = params(catalog).get("user")
    try:
        admin(catalog, f'create database {name}' + (f' owner "{owner}"' if owner else ""), environ=environ)
    except CatalogError as exc:
        raise CatalogError(f"cannot create catalog database {name}: {exc}") from exc
    return with_database(catalog, name)


def drop_catalog(catalog: str, environ: Mapping[str, str] | None = None) -> None:
    """Drop a run's catalog database (sessions are cut); never one of the stack's own (PROTECTED).
    Best effort: a clean-up must not hide the error that led to it."""
    if not is_postgres(catalog) or database(catalog) in PROTECTED:
        return
    with contextlib.suppress(CatalogError, subprocess.TimeoutExpired):
        admin(catalog, f"drop database if exists {database(catalog)} with (force)", environ=environ)


@contextlib.contextmanager
def unavailable(catalog: str, environ: Mapping[str, str] | None = None) -> Iterator[None]:
    """The catalog database refuses connections and its sessions are terminated (as in a database
    restart or fail-over; the DuckLake data files stay). Allowed again on exit."""
    db = database(catalog)
    if db in PROTECTED:
        raise CatalogError(f"refusing to take the stack's own database {db!r} down")
    admin(catalog, f"ALTER DATABASE {db} ALLOW_CONNECTIONS false", environ=environ)
    try:
        admin(catalog, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'",
              environ=environ)
        yield
    finally:
        admin(catalog, f"ALTER DATABASE {db} ALLOW_CONNECTIONS true", environ=environ)
