"""``python -m tests.integration.pivots.crash_after_store_write``: the pivots service, except that the
process dies (``os._exit``: no abort, no close, like kill -9) right after its N-th store write
(``CRASH_AFTER_STORE_WRITES``). That is the one window where the store holds pivots whose Kafka
transaction never commits; the test proves a restart repairs it."""

from __future__ import annotations

import os
import runpy
from collections.abc import Sequence

from reftrain.records import Pivot
from reftrain.store import Store

_limit = int(os.environ["CRASH_AFTER_STORE_WRITES"])
_calls = 0
_append = Store.append_pivots


def _append_then_maybe_die(self: Store, pivots: Sequence[Pivot]) -> int:
    global _calls
    out = _append(self, pivots)
    _calls += 1
    if _calls >= _limit:
        os._exit(137)
    return out


Store.append_pivots = _append_then_maybe_die  # type: ignore[method-assign]
runpy.run_module("services.pivots", run_name="__main__", alter_sys=True)
