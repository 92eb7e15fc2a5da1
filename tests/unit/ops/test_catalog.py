"""ops.catalog: the one helper that creates, drops and takes down catalog databases. The string
handling is checked in memory; create / unavailable / drop against the stack's real PostgreSQL."""

from __future__ import annotations

import uuid

import pytest

from ops import catalog

CAT = "postgres:dbname=reftrain host=127.0.0.1 port=25432 user=postgres"


def test_with_database_keeps_the_server_and_changes_only_the_database() -> None:
    other = catalog.with_database(CAT, "run_1")
    assert catalog.params(other) == {"dbname": "run_1", "host": "127.0.0.1", "port": "25432", "user": "postgres"}
    assert catalog.database(other) == "run_1"


def test_sqlite_catalog_has_no_server() -> None:
    assert catalog.fresh_catalog("sqlite:/tmp/x.sqlite", "ignored") == "sqlite:/tmp/x.sqlite"
    catalog.drop_catalog("sqlite:/tmp/x.sqlite")  # a no-op, no psql call
    with pytest.raises(catalog.CatalogError, match="not a PostgreSQL catalog"):
        catalog.params("sqlite:/tmp/x.sqlite")


def test_the_stacks_own_databases_are_never_taken_down() -> None:
    with pytest.raises(catalog.CatalogError, match="stack's own"), catalog.unavailable(CAT):
        pass


def _connects(cat: str) -> bool:
    """The catalog's own user (the services' role on a SCRAM stack, with its password) gets in."""
    try:
        return catalog.query(cat, "select 1", timeout=30).strip() == "1"
    except catalog.CatalogError:
        return False


@pytest.mark.kafka
def test_fresh_unavailable_and_drop_on_the_real_server(stack: dict[str, str]) -> None:
    base = stack.get("STORE_CATALOG", "")
    if not catalog.is_postgres(base):
        pytest.skip("the stack's catalog is not PostgreSQL")
    name = f"test_cat_{uuid.uuid4().hex[:10]}"
    cat = catalog.fresh_catalog(base, name)
    try:
        assert catalog.database(cat) == name and _connects(cat)
        with pytest.raises(catalog.CatalogError, match="already exists"):
            catalog.fresh_catalog(base, name)
        with catalog.unavailable(cat):
            assert not _connects(cat)
        assert _connects(cat)
    finally:
        catalog.drop_catalog(cat)
    assert not _connects(cat)
