"""Invalid rows, duplicates, out-of-order candles and gaps, on real data mixed with DELIBERATELY
CORRUPTED copies of real rows: each has its defined outcome and counter; invalid rows are
quarantined (store + candles.dlq) with their reason, file and row, once, even across a restart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reftrain.settings import PlatformSettings
from tests.integration.ingest.ingest_helpers import (
    BTC,
    assert_exactly_once,
    dlq_messages,
    http_get,
    log_records,
    metric,
    quarantine_rows,
    read_simple,
    records_in,
    run_in_terminal,
    sigterm,
    start_ingest,
    store_rows,
    topic_messages,
    wait_exit,
    wait_for,
)
from tests.support import DATA, free_port

pytestmark = pytest.mark.kafka

def corrupted_file(tmp: Path) -> tuple[Path, list[str], dict[str, int]]:
    """300 real BTCUSDT rows with corrupted copies spliced in; returns the file, the real lines that
    must be accepted, and the reason -> 1-based line number of each corrupted row."""
    header, *rows = (DATA / BTC).read_text().splitlines()[:301]
    cells = [r.split(",") for r in rows]
    out: list[str] = [header]
    where: dict[str, int] = {}

    def bad(reason: str, line: str) -> None:
        out.append(line)
        where[reason] = len(out)  # the header is line 1

    def with_(i: int, **changes: str) -> str:
        c = dict(zip(("t", "o", "h", "l", "c", "v", "n"), cells[i], strict=True))
        c.update(changes)
        return ",".join(c[k] for k in ("t", "o", "h", "l", "c", "v", "n"))

    moved = 250
    for i, line in enumerate(rows):
        if i == 50:
            bad("high_below_low", with_(50, h=cells[50][3], l=cells[50][2]))
        if i == 141:
            bad("non_finite_price", with_(141, c="nan"))
        if i == 161:
            bad("negative_volume", with_(161, v="-1.5"))
        if i == 201:
            bad("misaligned_open_time", with_(201, t=str(int(cells[201][0]) + 30_000)))
        if i == moved:
            continue  # goes late: a 1-bar gap here, an out-of-order candle below
        out.append(line)
        if i == 99:
            bad("duplicate", line)
        if i == 120:
            lo, hi = float(cells[120][3]), float(cells[120][2])
            assert hi > lo
            bad("conflicting_duplicate", with_(120, c=repr((lo + hi) / 2), o=repr((lo + hi) / 2)))
        if i == 170:
            bad("missing_value", with_(171, o=""))
        if i == 180:
            bad("wrong_column_count", ",".join(cells[181][:5]))
        if i == 190:
            bad("bad_number", with_(191, o="abc"))
        if i == moved + 5:
            bad("out_of_order", rows[moved])
    path = tmp / "BTCUSDT-1m-corrupted.csv"
    path.write_text("\n".join(out) + "\n")
    return path, [header, *(r for i, r in enumerate(rows))], where


def test_bad_rows_quarantined_duplicates_and_out_of_order_counted_gaps_logged(
        platform: PlatformSettings, platform_env: dict[str, str], tmp_path: Path) -> None:
    path, real_lines, where = corrupted_file(tmp_path)
    clean = tmp_path / "clean" / "BTCUSDT-1m-clean.csv"
    clean.parent.mkdir()
    clean.write_text("\n".join(real_lines) + "\n")
    moved_time = int(real_lines[1 + 250].split(",")[0])
    expected = [c for c in read_simple(clean) if c["open_time"] != moved_time]  # arrived late: not accepted
    for c in expected:
        c["source"] = path.name

    port, log = free_port(), tmp_path / "ingest.log"
    env = {"INGEST_FILES": str(path), "INGEST_DERIVE": "5m", "INGEST_BATCH": "64"}
    proc = start_ingest(platform_env, {**env, "INGEST_EXIT_WHEN_DONE": "false"}, log, port)
    try:
        wait_for(lambda: metric(http_get(port, "/metrics")[1], "reftrain_ingest_replay_complete") == 1, 90,
                 "the replay to complete", proc, log)
        text = http_get(port, "/metrics")[1]
    finally:
        sigterm(proc)
    assert wait_exit(proc, 30, log) == 0

    invalid = {"high_below_low", "non_finite_price", "negative_volume", "missing_value", "wrong_column_count",
               "bad_number", "misaligned_open_time"}
    for reason in invalid:
        assert metric(text, "reftrain_ingest_invalid_total", f'reason="{reason}"') == 1, reason
    assert metric(text, "reftrain_ingest_quarantined_total", 'reason="conflicting_duplicate"') == 1
    assert metric(text, "reftrain_ingest_duplicates_total") == 2
    assert metric(text, "reftrain_ingest_out_of_order_total") == 1
    assert metric(text, "reftrain_ingest_gaps_total", 'series="BTCUSDT:1m"') == 1
    assert metric(text, "reftrain_ingest_gap_bars_total", 'series="BTCUSDT:1m"') == 1
    assert "row/s" not in log.read_text()  # no bar when stderr is a file
    assert metric(text, "reftrain_ingest_incomplete_buckets_total", 'timeframe="5m"') >= 1
    gap_logs = [r for r in log_records(log) if r.get("msg") == "gap in series (not filled)"]
    assert [(r["series"], r["gap_from"], r["gap_to"], r["bars"]) for r in gap_logs] == [
        ("BTCUSDT:1m", moved_time, moved_time, 1)]

    stored = store_rows(platform)
    published = topic_messages(platform, expect=len(stored))
    assert_exactly_once(expected, stored, published, "BTCUSDT:1m")
    assert not any(r["open_time"] == moved_time - moved_time % 300_000 for r in stored if r["timeframe"] == "5m")

    quarantined = invalid | {"conflicting_duplicate"}
    rows = quarantine_rows(platform)
    assert sorted(r["reason"] for r in rows) == sorted(quarantined)
    for r in rows:
        assert r["source"] == path.name
        assert r["payload"]["row"] == where[r["reason"]], r
    dlq = dlq_messages(platform, expect=len(quarantined))
    assert len(dlq) == len(quarantined)
    by_reason = {dict(m.headers())["error.reason"].decode(): m for m in dlq}
    assert set(by_reason) == quarantined
    for reason, m in by_reason.items():
        h = dict(m.headers())
        assert h["source.file"] == path.name.encode()
        assert int(h["source.row"]) == where[reason]
        assert json.loads(m.value())["raw"]  # the bad row itself travels with its reason

    # A restart over the same file, run from a terminal: nothing stored, published or quarantined
    # twice, the same counts, and a progress bar this time.
    rc, output = run_in_terminal(platform_env, env, free_port(), 90)
    assert rc == 0, output[-3000:]
    n_rows = len(path.read_text().splitlines()) - 1
    assert f"{n_rows}/{n_rows}" in output and "row/s" in output  # tqdm's bar on the terminal
    done = [r for r in records_in(output) if r.get("msg") == "replay complete"]
    assert done and done[0]["written"] == 0 and done[0]["already_stored"] == len(expected)
    assert done[0]["duplicates"] == 2 and done[0]["out_of_order"] == 1
    assert len(quarantine_rows(platform)) == len(quarantined)
    assert len(dlq_messages(platform)) == len(quarantined)
    again = store_rows(platform)
    assert again == stored
    assert len(topic_messages(platform)) == len(published)
