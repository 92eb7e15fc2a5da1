"""S3 lake settings and the DuckDB SECRET they become (pure: no store, no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reftrain.errors import StoreError
from reftrain.redact import redact_text
from reftrain.settings import PlatformSettings, load, s3_secret_access_key
from reftrain.store import S3Config, is_remote, s3_secret_statement

ENV = {"STORE_DATA_PATH": "s3://bucket/lake", "STORE_S3_ENDPOINT": "127.0.0.1:41300",
       "STORE_S3_ACCESS_KEY_ID": "reftrain", "STORE_S3_SECRET_ACCESS_KEY": "s3cr3t-'quoted'-value",
       "STORE_S3_URL_STYLE": "path", "STORE_S3_USE_SSL": "false"}


def test_settings_read_and_never_print_the_secret() -> None:
    s = load(PlatformSettings, "", ENV)
    assert (s.store_s3_endpoint, s.store_s3_url_style, s.store_s3_use_ssl) == ("127.0.0.1:41300", "path", False)
    assert "s3cr3t" not in repr(s) and "s3cr3t" not in str(s.public())
    assert "s3cr3t" not in repr(S3Config.from_settings(s))
    assert "s3cr3t" not in redact_text("export STORE_S3_SECRET_ACCESS_KEY=s3cr3t-value")


def test_secret_from_a_file(tmp_path: Path) -> None:
    f = tmp_path / "key"
    f.write_text("from-file\n")
    s = load(PlatformSettings, "", {"STORE_S3_SECRET_ACCESS_KEY_FILE": str(f)})
    assert s3_secret_access_key(s) == "from-file"


def test_secret_statement_escapes_every_value() -> None:
    stmt = s3_secret_statement(S3Config.from_settings(load(PlatformSettings, "", ENV)))
    assert "SECRET 's3cr3t-''quoted''-value'" in stmt
    assert "URL_STYLE 'path'" in stmt and "USE_SSL false" in stmt and "ENDPOINT '127.0.0.1:41300'" in stmt
    with pytest.raises(StoreError):
        s3_secret_statement(S3Config(url_style="virtual"))


def test_only_object_store_paths_are_remote() -> None:
    assert is_remote("s3://b/lake") and not is_remote("/data/lake") and not is_remote(".local/stack/lake")
