"""Client configuration passthrough and secret handling (pure, no stack): every Kafka client gets the
same TLS/SASL properties, registry clients their CA and credentials, and no secret survives into a
repr, a log line, an exception or a run.json dict."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import duckdb
import pytest

from reftrain import logs, settings
from reftrain.errors import ConfigError
from reftrain.redact import redact_text, redact_value
from reftrain.serde import registry_client
from reftrain.store import attach_statement, conninfo_quote, with_password
from reftrain.streams import consumer_config, producer_config

SECRET = "s3cr3t-Pa55"


def _sasl_env(tmp_path: Path) -> dict[str, str]:
    props = tmp_path / "client.properties"
    props.write_text("# librdkafka properties\nsecurity.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n"
                     "sasl.username=svc\nsasl.password=from-file\nssl.ca.location=/etc/ca.pem\n")
    return {"KAFKA_BOOTSTRAP_SERVERS": "b:9093", "KAFKA_CONFIG_FILE": str(props),
            "KAFKA_SASL_PASSWORD": SECRET, "KAFKA_HEAP_OPTS": "-Xmx1g", "KAFKA_OPTS": "-Dx=y",
            "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM": "https"}


def test_every_kafka_client_gets_the_passthrough_and_env_wins_over_file(tmp_path: Path) -> None:
    p = settings.platform(_sasl_env(tmp_path))
    base = settings.kafka_client_config(p)
    assert callable(base.pop("error_cb"))
    assert base == {"bootstrap.servers": "b:9093", "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                    "sasl.username": "svc", "sasl.password": SECRET, "ssl.ca.location": "/etc/ca.pem",
                    "ssl.endpoint.identification.algorithm": "https"}
    # the broker's own KAFKA_HEAP_OPTS / KAFKA_OPTS are no client properties
    assert not any(k.startswith(("heap", "opts")) for k in base)
    for conf in (producer_config(p), consumer_config(p, "g")):
        assert {k: conf[k] for k in base} == base


def test_passthrough_may_not_override_identity_settings(tmp_path: Path) -> None:
    props = tmp_path / "c.properties"
    props.write_text("bootstrap.servers=elsewhere:9092\n")
    with pytest.raises(ConfigError, match=r"bootstrap\.servers"):
        settings.kafka_client_config(settings.platform({"KAFKA_CONFIG_FILE": str(props)}))
    with pytest.raises(ConfigError, match="cannot be read"):
        settings.kafka_client_config(settings.platform({"KAFKA_CONFIG_FILE": str(tmp_path / "missing")}))


def test_env_to_property_mapping() -> None:
    assert settings.env_to_property("KAFKA_SASL_OAUTHBEARER_CLIENT_ID") == "sasl.oauthbearer.client.id"
    assert settings.env_to_property("KAFKA_SSL__KEY") == "ssl_key"


def test_settings_repr_and_public_dict_hide_secrets(tmp_path: Path) -> None:
    env = {**_sasl_env(tmp_path), "STORE_CATALOG": f"postgres:dbname=x host=h user=u password={SECRET}",
           "SCHEMA_REGISTRY_URL": f"https://reg:{SECRET}@registry:8081", "SCHEMA_REGISTRY_TOKEN": SECRET}
    p = settings.platform(env)
    assert SECRET not in repr(p) and SECRET not in str(p)
    assert SECRET not in json.dumps(p.public())
    assert p.public()["store_catalog"] == "postgres:dbname=x host=h user=u password=[redacted]"
    assert p.public()["kafka_client"]["sasl.password"] == "[redacted]"


@pytest.mark.parametrize("text", [
    f'IO Error: Unable to connect to Postgres at "dbname=x host=127.0.0.1 password={SECRET} user=u": refused',
    f"postgres:dbname=x password='{SECRET} with space' host=h",
    f"http://user:{SECRET}@registry:8081/apis",
    f'{{"sasl.password": "{SECRET}", "x": 1}}',
    f"sasl.password={SECRET}",
    f"PGPASSWORD={SECRET}",
])
def test_redact_text_removes_the_secret(text: str) -> None:
    out = redact_text(text)
    assert SECRET not in out and "[redacted]" in out
    assert redact_value({"a": [text]}) == {"a": [out]}


def test_log_lines_are_redacted_at_the_sink() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter("t"))
    log = logging.getLogger("test.redact")
    log.addHandler(handler)
    try:
        try:
            raise RuntimeError(f"connect failed: dbname=x password={SECRET}")
        except RuntimeError:
            log.exception("boom", extra={"catalog": f"postgres:password={SECRET} host=h"})
    finally:
        log.removeHandler(handler)
    line = stream.getvalue()
    assert "boom" in line and SECRET not in line
    json.loads(line)  # still one JSON object


def test_registry_client_gets_tls_and_credentials(tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    auth.write_text(f"svc:{SECRET}\n")
    p = settings.platform({"SCHEMA_REGISTRY_URL": "https://registry:8081", "SCHEMA_REGISTRY_BASIC_AUTH_FILE": str(auth),
                           "SCHEMA_REGISTRY_CA_LOCATION": "/etc/ca.pem"})
    conf = settings.registry_client_config(p)
    assert conf["basic.auth.user.info"] == f"svc:{SECRET}" and conf["basic.auth.credentials.source"] == "USER_INFO"
    assert conf["ssl.ca.location"] == "/etc/ca.pem"
    token = settings.registry_client_config(settings.platform({"SCHEMA_REGISTRY_TOKEN": SECRET}))
    assert token["bearer.auth.credentials.source"] == "STATIC_TOKEN" and token["bearer.auth.token"] == SECRET
    client = registry_client(settings.platform({"SCHEMA_REGISTRY_TOKEN": SECRET}))  # the library accepts it
    assert client is not None
    with pytest.raises(ConfigError, match="user:password"):
        settings.registry_client_config(settings.platform({"SCHEMA_REGISTRY_BASIC_AUTH": "nocolon"}))


def test_catalog_password_is_escaped_into_the_attach(tmp_path: Path) -> None:
    hostile = "it's a' OR 1=1 -- \\ pass"
    assert conninfo_quote(hostile) == "'it\\'s a\\' OR 1=1 -- \\\\ pass'"
    stmt = attach_statement(with_password("postgres:dbname=x host=h", hostile), "/tmp/lake")
    # DuckDB parses it as ONE statement whose catalog string holds the conninfo-quoted password
    parsed = duckdb.sql(f"SELECT {stmt.split(' AS ')[0].removeprefix('ATTACH ')} AS s").fetchone()
    assert parsed is not None
    assert parsed[0] == f"ducklake:postgres:dbname=x host=h password={conninfo_quote(hostile)}"
    pw = tmp_path / "pw"
    pw.write_text(hostile + "\n")
    assert settings.catalog_password(settings.platform({"STORE_CATALOG_PASSWORD_FILE": str(pw)})) == hostile


def test_http_endpoints_bind_loopback_by_default() -> None:
    assert settings.platform({}).http_host == "127.0.0.1"
    assert settings.platform({"HTTP_HOST": "0.0.0.0"}).http_host == "0.0.0.0"


def test_metrics_endpoint_drops_a_silent_client_and_keeps_serving() -> None:
    import socket
    import time
    import urllib.request

    from reftrain.observability import Health, serve_http

    server = serve_http(Health("t"), "127.0.0.1", 0, timeout_s=0.5)
    try:
        port = server.server_port
        silent = socket.create_connection(("127.0.0.1", port))  # connects, never sends a request
        t0 = time.monotonic()
        silent.settimeout(5)
        assert silent.recv(1) == b""  # the server closed it after its timeout
        assert time.monotonic() - t0 < 3
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.status == 200
    finally:
        server.shutdown()
        server.server_close()


def test_run_json_settings_come_back_with_secrets_from_the_current_environment() -> None:
    env = {"STORE_CATALOG": f"postgres:dbname=run_x host=h user=u password='{SECRET}'",
           "KAFKA_SASL_PASSWORD": SECRET, "SCHEMA_REGISTRY_TOKEN": SECRET, "TOPIC_PREFIX": "run-1-"}
    saved = json.loads(json.dumps(settings.platform(env).public()))  # what run.json holds
    assert SECRET not in json.dumps(saved)
    later = settings.from_public(saved, {"STORE_CATALOG": f"postgres:dbname=reftrain password={SECRET}",
                                         "KAFKA_SASL_PASSWORD": SECRET, "SCHEMA_REGISTRY_TOKEN": SECRET})
    assert later.store_catalog == f"postgres:dbname=run_x host=h user=u password={SECRET}"
    assert dict(later.kafka_client)["sasl.password"] == SECRET and later.schema_registry_token == SECRET
    assert later.topic_prefix == "run-1-"
    # without the secret in the environment the catalog string simply has no password (PGPASSFILE)
    assert settings.from_public(saved, {}).store_catalog == "postgres:dbname=run_x host=h user=u"
