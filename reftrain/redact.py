"""Secrets out of text: connection strings, URLs with credentials and client properties are
rewritten before anything reaches a log line, an exception message, run.json or a report.

DuckDB repeats the whole catalog connection string in its errors (``password=...`` included), the
registry URL may carry ``user:password@``, and a librdkafka error may echo a property. One regex pass
per string is cheap enough to run on every log record.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "[redacted]"

# libpq conninfo: password=value | password='quoted \' value'  (also in ATTACH 'ducklake:postgres:...')
_CONNINFO = re.compile(r"""(?i)\b(password|passwd|pwd|sslpassword)(\s*=\s*)('(?:[^'\\]|\\.|'')*'|[^\s'";]+)""")
# URL userinfo: scheme://user:secret@host
_URL = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@'\"]*):([^@\s/'\"]+)@")
# key=value / key: value / "key": "value" of known secret properties (sasl.password=..., JSON dumps)
_PROPS = re.compile(
    r"""(?i)(["']?\b(?:sasl\.password|ssl\.key\.password|ssl\.keystore\.password|ssl\.key\.pem|"""
    r"""sasl\.oauthbearer\.client\.secret|basic\.auth\.user\.info|bearer\.auth\.token|"""
    r"""schema_registry_basic_auth|schema_registry_token|pgpassword|(?:store_s3_|aws_)?secret_access_key)["']?\s*[=:]\s*)("[^"]+"|'[^']+'|[^\s,;}'"]+)""")


def redact_text(text: str) -> str:
    """``text`` with every password/secret value it recognises replaced by [redacted]."""
    if not text:
        return text
    text = _CONNINFO.sub(_keep_quotes_conninfo, text)
    text = _URL.sub(lambda m: f"{m.group(1)}:{REDACTED}@", text)
    return _PROPS.sub(_keep_quotes, text)


def _keep_quotes_conninfo(m: re.Match[str]) -> str:
    q = "'" if m.group(3).startswith("'") else ""
    return f"{m.group(1)}{m.group(2)}{q}{REDACTED}{q}"


def _keep_quotes(m: re.Match[str]) -> str:
    value = m.group(2)
    q = value[0] if value[0] in "'\"" else ""
    return f"{m.group(1)}{q}{REDACTED}{q}"


def redact_value(value: Any) -> Any:
    """Strings redacted, containers walked (for JSON documents such as run.json)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(v) for v in value]
    return value
