"""The local stack's PostgreSQL (deploy/local/stack.sh): SCRAM passwords for every connection and
least-privilege roles (issue 17). The services' role owns its catalog databases and may do nothing
else; the registry's role owns only the registry database; statements about databases need the
admin role (ops.catalog). Against an external stack that still runs trust (no
REFTRAIN_CATALOG_ADMIN_USER in its variables) there is nothing to check: skipped, saying so."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ops import catalog
from reftrain.settings import PlatformSettings
from reftrain.store import Store

pytestmark = pytest.mark.kafka


@pytest.fixture
def scram(stack: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **stack}
    if not catalog.is_postgres(env.get("STORE_CATALOG", "")) or not env.get(catalog.ADMIN_USER_ENV):
        pytest.skip("an external stack without the admin login (a trust catalog): deploy/local/stack.sh's own checks")
    return env


def _refused(cat: str, environ: dict[str, str], sql: str = "select 1") -> str:
    with pytest.raises(catalog.CatalogError) as err:
        catalog.query(cat, sql, timeout=30, environ=environ)
    return str(err.value)


def test_no_connection_without_the_right_password(scram: dict[str, str]) -> None:
    cat = scram["STORE_CATALOG"]
    no_secrets = {k: v for k, v in scram.items() if k not in ("STORE_CATALOG_PASSWORD_FILE", "PGPASSWORD", "PGPASSFILE")}
    assert "no password supplied" in _refused(cat, no_secrets)
    assert "password authentication failed" in _refused(cat + " password=not-the-password", scram)
    assert catalog.query(cat, "select current_user", environ=scram).strip() == catalog.params(cat)["user"]
    rules = catalog.admin(cat, "select distinct auth_method from pg_hba_file_rules", environ=scram).split()
    assert rules == ["scram-sha-256"], rules  # no trust, no peer, no md5 anywhere


def test_password_files_are_private(scram: dict[str, str]) -> None:
    for var in ("STORE_CATALOG_PASSWORD_FILE", catalog.ADMIN_PASSWORD_FILE_ENV):
        f = Path(scram[var])
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        assert stat.S_IMODE(f.parent.stat().st_mode) == 0o700, f.parent
        assert len(f.read_text().strip()) >= 32  # random, not a default like "postgres"


def test_services_role_owns_its_catalog_and_nothing_more(scram: dict[str, str], platform: PlatformSettings) -> None:
    cat = platform.store_catalog  # a fresh test database made by the admin role for the services' role
    me = catalog.params(cat)["user"]
    assert me != scram[catalog.ADMIN_USER_ENV]
    attrs = catalog.query(cat, "select rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls "
                               "from pg_roles where rolname = current_user", environ=scram).strip()
    assert attrs == "f|f|f|f|f", attrs
    # DuckLake creates its tables on the first ATTACH: as the services' role, in its own database
    Store.from_settings(platform).close()
    owners = catalog.query(cat, "select distinct tableowner from pg_tables where schemaname = 'public'",
                           environ=scram).split()
    assert owners == [me]
    assert "permission denied to create database" in _refused(cat, scram, "create database not_allowed")
    assert "permission denied to create role" in _refused(cat, scram, "create role not_allowed")
    for other in ("registry", "postgres"):  # CONNECT revoked from PUBLIC
        assert f'permission denied for database "{other}"' in _refused(catalog.with_database(cat, other), scram)


def test_registry_role_owns_only_the_registry_database(scram: dict[str, str]) -> None:
    base = scram["STORE_CATALOG"]
    registry_pw = (Path(scram[catalog.ADMIN_PASSWORD_FILE_ENV]).parent / "registry.password").read_text().strip()
    reg = catalog.with_database(base, "registry").replace(f"user={catalog.params(base)['user']}", "user=registry")
    reg_env = {**scram, "STORE_CATALOG_PASSWORD_FILE": ""}
    reg = f"{reg} password={registry_pw}"
    assert catalog.query(reg, "select rolsuper, rolcreatedb, rolcreaterole from pg_roles where rolname = current_user",
                         environ=reg_env).strip() == "f|f|f"
    # Apicurio's tables (made at its start-up, as this role) belong to it
    owners = catalog.admin(base, "select distinct tableowner from pg_tables where schemaname = 'public'",
                           environ=scram, dbname="registry").split()
    assert owners == ["registry"], owners
    assert 'permission denied for database "reftrain"' in _refused(catalog.with_database(reg, "reftrain"), reg_env)
