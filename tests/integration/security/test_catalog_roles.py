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
    no_secrets = {k: v for k, v in scram.items()
                  if k not in ("STORE_CATALOG_PASSWORD_FILE", "PGPASSWORD", "PGPASSFILE")}
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


def test_compose_and_k8s_role_script_on_a_real_server() -> None:
    """deploy/docker/postgres-init/01-databases.sql (compose's first boot; the k8s set-up) on a
    throw-away PostgreSQL: refuses to run without the passwords, then makes the two roles without
    any privilege beyond their own database."""
    import shutil
    import subprocess
    import tempfile

    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    if not bins:
        pytest.skip("no PostgreSQL server binaries (deploy/local/stack.sh deps installs them)")
    bindir = bins[0].parent
    as_pg: list[str] = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = Path(tempfile.mkdtemp(prefix="reftrain-roles-"))  # pytest's tmp_path is not the postgres user's
    if as_pg:
        shutil.chown(folder, "postgres")
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*as_pg, str(bindir / "initdb"), "-D", str(folder / "data"), "-U", "postgres", "--auth=trust"],
                   check=True, capture_output=True, cwd="/")
    # the server's output to a file: an inherited pipe would keep this call waiting for ever
    subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(folder / "data"), "-l", str(folder / "log"), "-w",
                    "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
    script = Path(__file__).resolve().parents[3] / "deploy" / "docker" / "postgres-init" / "01-databases.sql"
    psql = [catalog.psql_binary(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(port), "-U",
            "postgres"]
    try:
        bare = {k: v for k, v in os.environ.items() if not k.endswith("_DB_PASSWORD")}
        res = subprocess.run([*psql, "-f", str(script)], env=bare, capture_output=True, text=True)
        assert res.returncode == 3 and "CATALOG_DB_PASSWORD is not set" in res.stderr
        env = {**bare, "CATALOG_DB_PASSWORD": "cat-pw", "REGISTRY_DB_PASSWORD": "reg-pw"}
        subprocess.run([*psql, "-f", str(script)], env=env, check=True, capture_output=True)
        out = subprocess.run([*psql, "-tAc", "select rolname, rolsuper, rolcreatedb, rolcreaterole, "
                              "rolpassword like 'SCRAM-SHA-256$%' from pg_authid where rolname in "
                              "('reftrain', 'registry') order by 1; select datname, pg_get_userbyid(datdba), "
                              "has_database_privilege('registry', 'reftrain', 'CONNECT'), "
                              "has_database_privilege('reftrain', 'registry', 'CONNECT') from pg_database "
                              "where datname in ('reftrain', 'registry') order by 1"],
                             env=env, check=True, capture_output=True, text=True).stdout.split()
        assert out == ["reftrain|f|f|f|t", "registry|f|f|f|t", "reftrain|reftrain|f|f", "registry|registry|f|f"]
    finally:
        subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
        shutil.rmtree(folder, ignore_errors=True)
