"""reftrain: the shared platform library (plumbing only, no service logic); the guide for service
authors is docs/platform.md, the decisions behind it docs/architecture.md.

Modules: settings (environment), topics (catalogue), records (types and ids), schemas and serde
(Avro in the Confluent wire format), validation, streams (THE Kafka runtime: ``StreamApp`` = a
processor + a release policy + a commit policy, with decode, dead-lettering, changelog state, lag
and session restart written once; docs/platform.md "The runtime"), spec (what a service is),
service (a service's wiring: settings, logs, HTTP endpoints, stop on SIGTERM, restart on outages),
observability (Prometheus metrics, /healthz, /readyz), watchdog and failpoint (guards and kill
points of the Kafka protocols), kafka_errors (refused credentials made readable), redact (secrets
out of logs), store (DuckLake), window (a candle window as arrays, its checksum), candlefiles (the
one candle-file reader), labels (the one label rule), logs, errors, model and adapters (the
network and the training-adapter interface shared by inference and trainer).
"""

__version__ = "0.1.0"
