"""Replication chosen from the cluster size (pure: no broker)."""

from __future__ import annotations

from reftrain.topics import TopicCatalogue, TopicSpec, replication_for


def test_single_broker_keeps_the_configured_factor() -> None:
    assert replication_for(1, 1) == (1, None)
    assert replication_for(2, 1) == (1, None)


def test_three_or_more_brokers_get_rf3_and_min_isr2() -> None:
    assert replication_for(3, 1) == (3, 2)
    assert replication_for(5, 1) == (3, 2)


def test_an_explicit_factor_wins() -> None:
    assert replication_for(5, 5) == (5, 2)
    assert replication_for(3, 2) == (2, None)


def test_replicated_spec_keeps_its_own_config() -> None:
    spec = TopicSpec("t", 6, 1, {"cleanup.policy": "compact"})
    out = TopicCatalogue._replicated(spec, 3, 2)
    assert (out.replication, out.config) == (3, {"cleanup.policy": "compact", "min.insync.replicas": "2"})
    assert TopicCatalogue._replicated(spec, 1, None) is spec
