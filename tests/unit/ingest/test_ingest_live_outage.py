"""Live mode under an outage: the store failing inside the WebSocket task group must reach the
caller as the store's own error (which the service retries), not as an ExceptionGroup (which it
would treat as a bug and exit on). A stand-in pipeline: no store or broker is involved."""

from __future__ import annotations

import threading

import pytest

from reftrain.errors import StoreError
from reftrain.observability import Health
from services.ingest import runner


class FailingPipeline:
    """A batch is pending and its flush fails as a store outage does; the final flush on the way
    out has nothing left to write (so only the task group carries the error)."""

    def __init__(self) -> None:
        self.flushes = 0

    @property
    def pending(self) -> int:
        return 1 if self.flushes == 0 else 0

    def last_open_times(self) -> dict[str, int]:
        return {}

    def flush(self) -> int:
        self.flushes += 1
        if self.flushes == 1:
            raise StoreError("IOException: catalog database refuses connections")
        return 0


def test_a_store_outage_in_live_mode_surfaces_as_store_error() -> None:
    pipeline = FailingPipeline()
    with pytest.raises(StoreError):
        # port 9 (discard) is closed here: the stream task only retries connecting meanwhile
        runner.run_live(pipeline, "ws://127.0.0.1:9/ws", stop=threading.Event(), health=Health("ingest"))  # type: ignore[arg-type]
    assert pipeline.flushes == 2  # the failed one, then the final one
