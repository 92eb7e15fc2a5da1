"""The trainer service: trains each model on its verified training jobs, exactly once per lineage.

Modules: ``settings``, ``spec``, ``windows`` (batched, cached, verified window fetch), ``batch`` (job
validation, inputs and targets, training batches), ``lineage`` (checkpoint bookkeeping and the
per-partition manifest: the commit point of the exactly-once protocol), ``engine`` (models,
training, checkpoints; no Kafka), ``processor`` (the engine as a reftrain.streams processor with
the checkpoint commit policy: jobs in, dead letters, ModelVersions out), ``metrics``. The protocol
is documented in ``lineage`` and services/trainer/README.md.
"""
