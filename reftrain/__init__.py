"""reftrain: the shared platform library (plumbing only, no service logic).

Modules: settings (environment), topics (catalogue), records (types and ids), schemas and serde
(Avro in the Confluent wire format), validation, store (DuckLake), streams (consume-process-produce,
DLQ), state (changelog-backed), metrics/health, logs, errors, model (the network shared by
inference and trainer).
"""

__version__ = "0.1.0"
