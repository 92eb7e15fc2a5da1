"""Moved to ops.fixtures.trainer (bench/ must not import tests/); re-exported here so the tests keep their
imports."""

from ops.fixtures.trainer import *  # noqa: F403
