"""reftrain: the shared platform library (plumbing only, no service logic); the guide for service
authors is docs/platform.md, the decisions behind it docs/architecture.md.

Modules: settings (environment), topics (catalogue), records (types and ids), schemas and serde
(Avro in the Confluent wire format), validation, streams (consume-process-produce in Kafka
transactions, dead-lettering, changelog state, lag), service (a service's wiring: settings, logs,
HTTP endpoints, stop on SIGTERM), observability (Prometheus metrics, /healthz, /readyz), watchdog
and failpoint (guards and kill points of the Kafka protocols), store (DuckLake), window (a candle
window as arrays, its checksum), candlefiles (the one candle-file reader), logs, errors, model (the
network shared by inference and trainer).
"""

__version__ = "0.1.0"
