"""The helpers tests and bench/ share live in ops.fixtures.support (bench/ must not import tests/);
re-exported here so the tests keep their imports."""

from ops.fixtures.support import *  # noqa: F403
