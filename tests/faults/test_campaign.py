"""The fault campaign (ops/faults/) as a test: the whole loop on real data, on a PRIVATE stack (the
broker and the registry are stopped during the campaign, so it never touches the shared stack),
with kill -9 of every service, kills inside a trainer checkpoint and during a rebalance, a broker
stop/restart, a registry stop/restart, a store outage and a trainer replica added and removed.

Asserted, over all faults: lost = 0, duplicated = 0 (training-jobs vs the offline oracle
``batch_join`` of the topics' candles, pivots and refs), no extra job, nothing trained twice and
every job trained or dead-lettered (the trainer's surviving checkpoint lineage), nothing missing or
duplicated upstream (candles, pivots == batch detector, one ref per candle), every bad message
injected during the campaign dead-lettered by each of its consumers, every fault recovered from,
and no service in a crash loop at the end.

The reduced size runs in CI; the full size (``make faults``) is marked slow.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.faults import Options, Result, markdown, run_campaign

pytestmark = pytest.mark.kafka


def check(result: Result) -> None:
    table = markdown(result)
    print(table)
    t = result.totals
    assert t.injected >= 8, f"too few faults injected:\n{table}"
    assert t.expected > 0 and t.seen > 0, f"no training jobs: the loop did not run\n{table}"
    assert t.lost == 0, f"jobs lost:\n{table}\n{result.meta.get('missing_sample')}"
    assert t.duplicated == 0, f"jobs duplicated:\n{table}"
    assert t.extra == 0, f"jobs the oracle does not know:\n{table}\n{result.meta.get('extra_sample')}"
    assert t.trained_twice == 0, f"jobs trained twice:\n{table}"
    assert t.not_trained == 0, f"jobs neither trained nor dead-lettered:\n{table}"
    for stage, v in result.upstream.items():
        assert v["missing"] == v["duplicated"] == v["extra"] == 0, f"{stage}: {v}"
    b = result.bad_inputs
    assert b["injected"] > 0 and b["missing"] == 0 and b["duplicate_entries_stream"] == 0, b
    assert b["other_dlq_entries"] == 0, f"valid input dead-lettered: {b}"
    assert not result.crash_loops, result.crash_loops
    assert t.not_recovered == 0, f"a fault was not recovered from:\n{table}"
    assert result.ok, result.checks


@pytest.mark.timeout(2400)  # about 6 min on an idle 2-core box; 20 min seen on an overloaded one
def test_reduced_campaign_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    check(run_campaign(Options(size="reduced", out_root=tmp_path, seed=20251130)))


@pytest.mark.slow
@pytest.mark.timeout(5400)  # about 20 min
def test_full_campaign_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    check(run_campaign(Options(size="full", out_root=tmp_path)))
