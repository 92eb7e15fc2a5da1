"""Counters across process restarts (docs/semantics.md, "Counters across restarts"): the report sums
a counter over an instance's incarnations unless the service restores it with its state (the
coordinator's join counters), and takes gauges from the last process."""

from __future__ import annotations

from pathlib import Path

from ops.promtext import parse
from ops.report import incarnation_files, merge_incarnations, restored_counters

FIRST = """# HELP reftrain_inference_refs_total InferenceRefs emitted
# TYPE reftrain_inference_refs_total counter
reftrain_inference_refs_total{series="BTCUSDT:1m"} 120.0
reftrain_inference_refs_total{series="ETHUSDT:1m"} 100.0
# HELP reftrain_inference_model_version Model version in use per model key
# TYPE reftrain_inference_model_version gauge
reftrain_inference_model_version{model_key="BTCUSDT:1m"} 3.0
# HELP reftrain_inference_predict_seconds One predict_batch call
# TYPE reftrain_inference_predict_seconds histogram
reftrain_inference_predict_seconds_bucket{le="0.1"} 4.0
reftrain_inference_predict_seconds_bucket{le="+Inf"} 5.0
reftrain_inference_predict_seconds_count 5.0
reftrain_inference_predict_seconds_sum 0.5
# HELP reftrain_coordinator_inputs Decoded inputs
# TYPE reftrain_coordinator_inputs counter
reftrain_coordinator_inputs_total{kind="ref",outcome="accepted"} 220.0
"""
LAST = FIRST.replace(" 120.0", " 30.0").replace(" 100.0", " 25.0").replace("} 3.0", "} 5.0").replace(
    " 220.0", " 275.0")


def test_counters_sum_over_incarnations_restored_ones_and_gauges_do_not() -> None:
    merged = merge_incarnations([parse(FIRST, "a"), parse(LAST, "b")])
    assert merged.total("reftrain_inference_refs_total") == 120 + 100 + 30 + 25
    assert merged.total("reftrain_inference_refs_total", series="BTCUSDT:1m") == 150
    assert merged.total("reftrain_inference_model_version") == 5  # the last process's gauge
    buckets, total, count = merged.histogram("reftrain_inference_predict_seconds")
    assert count == 10 and total == 1.0 and dict(buckets)[float("inf")] == 10
    # restored with the coordinator's state: the last process already counts its predecessors' work
    assert "reftrain_coordinator_inputs_total" in restored_counters()
    assert merged.total("reftrain_coordinator_inputs_total", kind="ref", outcome="accepted") == 275
    assert merge_incarnations([parse(LAST, "b")]).total("reftrain_inference_refs_total") == 55


def test_incarnation_files_are_read_oldest_first(tmp_path: Path) -> None:
    folder = tmp_path / "metrics" / "incarnations"
    folder.mkdir(parents=True)
    for n in (2, 10, 1):
        (folder / f"trainer-1.{n}.prom").write_text("")
    (folder / "trainer-10.1.prom").write_text("")
    assert [f.name for f in incarnation_files(tmp_path, "trainer-1")] == [
        "trainer-1.1.prom", "trainer-1.2.prom", "trainer-1.10.prom"]
