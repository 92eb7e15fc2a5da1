"""`make run LAKE=s3`: a run's lake goes under its own prefix of the stack's bucket, and every
service gets the STORE_S3_* settings (none for a folder lake)."""

from __future__ import annotations

from pathlib import Path

from ops.run import run_data_path, s3_env, service_env
from reftrain import settings as settings_mod


def test_a_run_gets_its_own_prefix_of_the_stacks_bucket(tmp_path: Path) -> None:
    assert run_data_path("s3://reftrain/lake", "run-1", tmp_path) == "s3://reftrain/runs/run-1"
    assert run_data_path("/var/lake", "run-1", tmp_path / "lake") == str(tmp_path / "lake")


def test_services_get_the_s3_settings_only_for_an_s3_lake() -> None:
    base = settings_mod.platform({"STORE_DATA_PATH": "/x"})
    assert s3_env(base) == {}
    s3 = base.replace(store_data_path="s3://reftrain/runs/r", store_s3_endpoint="127.0.0.1:19300",
                 store_s3_access_key_id="reftrain", store_s3_secret_access_key="k3y", store_s3_url_style="path",
                 store_s3_use_ssl=False)
    env = service_env({"PATH": "/bin"}, s3, "trainer-1", 0, {})
    assert (env["STORE_DATA_PATH"], env["STORE_S3_ENDPOINT"], env["STORE_S3_SECRET_ACCESS_KEY"]) == (
        "s3://reftrain/runs/r", "127.0.0.1:19300", "k3y")
    assert (env["STORE_S3_URL_STYLE"], env["STORE_S3_USE_SSL"]) == ("path", "false")
    assert settings_mod.platform(env).store_s3_endpoint == "127.0.0.1:19300"  # what the service reads back
