"""Figures for docs/scaling.md (pytest -s; slow, not in CI): DuckLake catalog commits per second
with N concurrent writer processes, each committing small batches of real candles of its own
series (what ingest and pivots do per batch). The catalog is the session stack's PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reftrain.settings import PlatformSettings

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[3]

WRITER = r"""
import json, sys, time
from reftrain.store import Store
from tests.support import real_candles
catalog, data, idx = sys.argv[1], sys.argv[2], int(sys.argv[3])
seconds, start_at = float(sys.argv[4]), float(sys.argv[5])
store = Store(catalog, data)
candles = [dict(c, symbol=f"W{idx}") for c in real_candles("BTCUSDT-1m-2025-09-22_2025-09-25.csv", limit=4000)]
while time.time() < start_at:
    time.sleep(0.01)
n, i, lat = 0, 0, []
end = time.time() + seconds
while time.time() < end:
    t0 = time.perf_counter()
    store.append_candles(candles[i:i + 5])  # 5 rows: inlined in the catalog, one transaction
    lat.append(time.perf_counter() - t0)
    n += 1
    i = (i + 5) % 3995
print(json.dumps({"commits": n, "lat": sorted(lat)[len(lat) // 2]}))
"""


def test_catalog_commits_per_second_with_n_writers(platform: PlatformSettings, tmp_path: Path) -> None:
    seconds = 10.0
    out = {}
    for n in (1, 2, 4):
        start_at = time.time() + 8  # every writer attached before the clock starts
        procs = [subprocess.Popen([sys.executable, "-c", WRITER, platform.store_catalog, str(tmp_path / "lake"),
                                   str(i), str(seconds), str(start_at)], cwd=REPO, stdout=subprocess.PIPE,
                                  text=True) for i in range(n)]
        res = [json.loads(p.communicate(timeout=180)[0].strip().splitlines()[-1]) for p in procs]
        assert all(p.returncode == 0 for p in procs)
        total = sum(r["commits"] for r in res)
        out[n] = (total / seconds, max(r["lat"] for r in res) * 1000)
    print("catalog commits/s (writers: total, worst writer's median ms): "
          + ", ".join(f"{n}: {v[0]:.1f}/s {v[1]:.0f} ms" for n, v in out.items()))
    assert all(v[0] > 0 for v in out.values())
