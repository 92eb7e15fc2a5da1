"""Moved to ops.fixtures.coordinator (bench/ must not import tests/); re-exported here so the tests keep their
imports."""

from ops.fixtures.coordinator import *  # noqa: F403
