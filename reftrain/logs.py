"""JSON logging (one object per line) so log shippers need no parsing rules; ``extra={...}``
fields (topic, partition, offset, ...) become top-level keys. Every line passes through
reftrain.redact at the sink, so a connection string or client property that slips into a message,
an extra field or a traceback is written without its password."""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings

from reftrain.redact import redact_text, redact_value

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": redact_text(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STD and not key.startswith("_"):
                out[key] = redact_value(value if isinstance(value, (str, int, float, bool, type(None), dict, list))
                                        else str(value))
        if record.exc_info:
            out["exc"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(out, default=lambda v: redact_text(str(v)))


class RedactingFormatter(logging.Formatter):
    """The plain-text format, redacted like the JSON one."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def setup(service: str, level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(RedactingFormatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # confluent-kafka's registry client imports authlib's httpx integration, which warns on import.
    warnings.filterwarnings("ignore", module="authlib.*")
