"""Operations tooling: ``python -m ops.run`` (the whole loop on the bundled real data, ``make run``)
and ``python -m ops.report`` (the same report for any running stack, ``make report``).

Not a service and not part of the platform library: it starts services as processes and reads
their topics and /metrics from the outside, exactly as an operator would, so it checks the system
through its public contracts (topics, records, metrics) and never through service internals.
"""
