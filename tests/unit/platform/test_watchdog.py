"""reftrain.watchdog: a guarded call that outlives timeout + grace triggers the expiry action (in
production: exit 70 so a restart policy brings the process back); one that finishes does not."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from reftrain.watchdog import STUCK_EXIT_CODE, Watchdog


def test_a_call_that_finishes_in_time_never_expires() -> None:
    expired: list[str] = []
    dog = Watchdog(grace_s=0.2, tick_s=0.02, on_expire=lambda what, _s: expired.append(what))
    for _ in range(5):
        with dog.guard("commit", 0.1):
            time.sleep(0.01)
    time.sleep(0.5)
    assert expired == []


def test_a_call_stuck_past_its_deadline_expires_once_while_it_is_still_stuck() -> None:
    fired = threading.Event()
    seen: list[tuple[str, float]] = []

    def on_expire(what: str, elapsed: float) -> None:
        seen.append((what, elapsed))
        fired.set()

    dog = Watchdog(grace_s=0.2, tick_s=0.02, on_expire=on_expire)
    with dog.guard("send_offsets_to_transaction", 0.1):
        assert fired.wait(3.0), "the watchdog did not fire while the call was stuck"
        time.sleep(0.3)  # still stuck: it must not fire again for the same call
    assert len(seen) == 1
    what, elapsed = seen[0]
    assert what == "send_offsets_to_transaction" and elapsed >= 0.3


def test_the_default_action_ends_the_process_with_exit_code_70() -> None:
    code = ("import time; from reftrain.watchdog import Watchdog\n"
            "dog = Watchdog(grace_s=0.1, tick_s=0.05)\n"
            "with dog.guard('commit_transaction', 0.1):\n"
            "    time.sleep(30)\n")
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == STUCK_EXIT_CODE == 70, res.stderr
    assert time.monotonic() - started < 25, "it exited because of the watchdog, not the end of the sleep"
