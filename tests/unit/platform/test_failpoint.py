"""reftrain.failpoint: off by default, a bad spec is a configuration error, and an armed failpoint
SIGKILLs its process exactly at the n-th time its stage is reached (in a child process here)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from reftrain.errors import ConfigError
from reftrain.failpoint import Failpoint
from reftrain.streams import FAILPOINT_STAGES


def test_empty_spec_is_off_and_never_fires() -> None:
    fp = Failpoint("", FAILPOINT_STAGES)
    assert not fp.armed
    for _ in range(3):
        fp.reached("before_commit")  # would kill this test process if it fired


@pytest.mark.parametrize("spec", ["before_commit", "before_commit:0", "nowhere:1", "after_commit:x"])
def test_a_malformed_spec_is_refused(spec: str) -> None:
    with pytest.raises(ConfigError, match="FAILPOINT"):
        Failpoint(spec, FAILPOINT_STAGES)


def test_it_kills_the_process_at_the_nth_time_of_its_stage_only() -> None:
    code = ("from reftrain.failpoint import Failpoint\n"
            "fp = Failpoint('after_commit:3', ('before_commit', 'after_commit'))\n"
            "for i in range(1, 6):\n"
            "    fp.reached('before_commit')\n"
            "    print('commit', i, flush=True)\n"
            "    fp.reached('after_commit')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == -signal.SIGKILL
    assert res.stdout.split("\n")[:-1] == ["commit 1", "commit 2", "commit 3"]
