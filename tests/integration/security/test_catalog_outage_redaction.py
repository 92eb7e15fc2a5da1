"""A catalog outage with a password in STORE_CATALOG: DuckDB repeats the whole connection string in
its errors, and ops.run writes failures into run.json and the report. The run below (ops.run, ingest
of real candles, the real stack) loses its catalog just after start-up; nothing it writes (service
logs, its own output, run.json, report.md/html/json) may contain the password."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from reftrain import settings as settings_mod
from tests.integration.security.tcpproxy import TcpProxy
from tests.support import catalog_admin

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[3]


def test_catalog_outage_leaves_no_password_in_logs_run_json_or_report(stack: dict[str, str], tmp_path: Path) -> None:
    base = settings_mod.platform(stack)
    if not base.store_catalog.startswith("postgres:"):
        pytest.skip("needs the PostgreSQL catalog")
    info = dict(part.split("=", 1) for part in base.store_catalog.split(":", 1)[1].split())
    # one connection (ops.run's `create database` for the run) goes through, then the catalog is gone
    proxy = TcpProxy((info.get("host", "127.0.0.1"), int(info.get("port", "5432"))), max_connections=1)
    secret = f"Pw-{uuid.uuid4().hex[:12]}"
    # a quote in the password too: it must be escaped into the ATTACH, not end the statement
    catalog = (f"postgres:dbname={info.get('dbname', 'reftrain')} host=127.0.0.1 port={proxy.port} "
               f"user={info.get('user', 'postgres')} password='{secret}\\'q'")
    run_id = f"sec-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **stack, "STORE_CATALOG": catalog, "STORE_DATA_PATH": str(tmp_path / "lake"),
           "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "ops.run", "--run-id", run_id, "--out", str(tmp_path), "--candles", "30",
           "--speed", "0", "--skip", "pivots", "inference", "coordinator", "trainer", "--no-progress",
           "--no-plots", "--idle", "2", "--timeout", "12"]  # ingest retries the catalog in-process until stopped
    out_path = tmp_path / "ops-run.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
    catalog_admin(base, f"drop database if exists run_{run_id.replace('-', '_')} with (force)")
    texts = {str(p.relative_to(tmp_path)): p.read_text(errors="replace")
             for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".log", ".json", ".md", ".html", ".out")}
    assert proc.returncode != 0, texts["ops-run.out"][-3000:]
    leaked = [name for name, text in texts.items() if secret in text]
    assert not leaked, f"password in {leaked}"
    # the outage did reach the logs with the connection string, redacted
    assert any("[redacted]" in t and "Postgres" in t for name, t in texts.items() if name.endswith(".log")), \
        {k: v[-1500:] for k, v in texts.items() if k.endswith(".log")}
    assert proxy.accepted == 1
    run_json = texts[f"{run_id}/run.json"]
    assert "password='[redacted]'" in run_json  # the settings are there, without the secret
