"""The platform loop against the real broker and registry: exactly-once transactions, dead-letter
routing with error headers, changelog state restored by a new session, kcat readability."""

from __future__ import annotations

import shutil
import struct
import subprocess
import threading
import time
from typing import Any

import pytest

from reftrain.observability import Health
from reftrain.settings import PlatformSettings
from reftrain.streams import Context, Record, StreamApp
from reftrain.topics import CANDLES, PIVOTS
from tests.support import consume_all, decode_all, ensure_topics, produce_raw, produce_records, real_candles

pytestmark = pytest.mark.kafka


class CloseCounter:
    """Test processor: counts candles per series in changelog state and emits, for every candle, a
    'pivot' echoing it (a stand-in output so transactions carry data)."""

    def __init__(self) -> None:
        self.state: dict[int, dict[str, Any]] = {}
        self.assigned_with: dict[int, dict[str, Any]] = {}
        self.last: dict[str, int] = {}  # survives revocation, for assertions after stop

    def assigned(self, partition: int, state: dict[str, Any]) -> None:
        self.assigned_with[partition] = dict(state)
        self.state[partition] = dict(state)

    def revoked(self, partition: int) -> None:
        self.state.pop(partition, None)

    def process(self, record: Record, ctx: Context) -> None:
        c = record.value
        key = f"{c['symbol']}:{c['timeframe']}"
        st = self.state[record.partition]
        n = st.get(key, {"n": 0})["n"] + 1
        st[key] = {"n": n}
        self.last[key] = n
        ctx.put_state(key, {"n": n})
        ctx.emit(PIVOTS, key, {"pivot_id": f"{key}-{c['open_time']}", "symbol": c["symbol"],
                               "timeframe": c["timeframe"], "level": 1, "kind": "HIGH",
                               "pivot_time": c["open_time"], "price": c["high"],
                               "confirmed_at": c["open_time"] + 60_000, "strength": 2})


def run_app(platform: PlatformSettings, proc: CloseCounter, until: Any, timeout: float = 60) -> None:
    app = StreamApp("test", platform, [CANDLES], f"{platform.topic_prefix}grp", proc, stateful=True,
                    instance_id="i1")
    stop = threading.Event()
    health = Health("test")
    t = threading.Thread(target=app.run, args=(stop, health), daemon=True)
    t.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until():
        time.sleep(0.2)
    stop.set()
    t.join(30)
    assert not t.is_alive()


def test_bad_bytes_go_to_dlq_with_headers_and_good_ones_are_processed_once(platform: PlatformSettings) -> None:
    cat = ensure_topics(platform)
    candles = real_candles("BTCUSDT-1m-2025-09-22_2025-09-25.csv", limit=50)
    produce_records(platform, CANDLES, [("BTCUSDT:1m", c) for c in candles[:25]])
    produce_raw(platform, cat.name(CANDLES), b"BTCUSDT:1m", b"\x00\x01garbage")  # unknown schema id / junk
    produce_raw(platform, cat.name(CANDLES), b"BTCUSDT:1m", b"not avro at all")  # bad magic byte
    bad = dict(candles[25], high=candles[25]["low"] - 1.0)  # high < low: decodes, but invalid
    produce_records(platform, CANDLES, [("BTCUSDT:1m", bad)])
    produce_records(platform, CANDLES, [("BTCUSDT:1m", c) for c in candles[26:]])

    proc = CloseCounter()
    run_app(platform, proc, lambda: proc.last.get("BTCUSDT:1m", 0) >= 49)
    dlq = consume_all(platform, cat.dlq(CANDLES), expect=3, timeout=30)
    assert len(dlq) == 3
    headers = [dict(m.headers()) for m in dlq]
    assert [h["error.class"] for h in headers] == [
        b"UnknownSchemaError", b"DecodeError", b"InvalidRecordError"]
    assert headers[2]["error.reason"] == b"high_below_low"
    assert all(h["source.topic"] == cat.name(CANDLES).encode() for h in headers)
    assert [int(h["source.offset"]) for h in headers] == [25, 26, 27]
    assert dlq[1].value() == b"not avro at all"  # original bytes preserved
    out = decode_all(platform, PIVOTS, consume_all(platform, cat.name(PIVOTS), expect=49))
    assert sorted(p["pivot_time"] for p in out) == sorted(c["open_time"] for c in candles if c is not candles[25])


def test_state_is_restored_from_changelog_by_a_new_session(platform: PlatformSettings) -> None:
    ensure_topics(platform)
    candles = real_candles("ETHUSDT-1m-2025-09-22_2025-09-25.csv", limit=40)
    produce_records(platform, CANDLES, [("ETHUSDT:1m", c) for c in candles[:20]])
    first = CloseCounter()
    run_app(platform, first, lambda: first.last.get("ETHUSDT:1m", 0) >= 20)
    produce_records(platform, CANDLES, [("ETHUSDT:1m", c) for c in candles[20:]])
    second = CloseCounter()
    run_app(platform, second, lambda: second.last.get("ETHUSDT:1m", 0) >= 40)
    restored = [s for s in second.assigned_with.values() if "ETHUSDT:1m" in s]
    assert restored == [{"ETHUSDT:1m": {"n": 20}}]  # the committed state of the first session
    time.sleep(0)  # the second session processed exactly the 20 new candles on top of the restored 20
    assert second.last == {"ETHUSDT:1m": 40}  # offsets and state committed together: nothing re-counted


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat not installed (make test installs it)")
def test_kcat_shows_key_and_content_type_header(platform: PlatformSettings) -> None:
    cat = ensure_topics(platform)
    candles = real_candles("BTCUSDT-1m-2025-10-29_2025-11-01.csv", limit=3)
    produce_records(platform, CANDLES, [("BTCUSDT:1m", c) for c in candles])
    out = subprocess.run(["kcat", "-C", "-b", platform.kafka_bootstrap_servers, "-t", cat.name(CANDLES), "-e",
                          "-q", "-f", "%k %h\n"], capture_output=True, text=True, timeout=60, check=True).stdout
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 3
    assert all(line.startswith("BTCUSDT:1m content-type=application/vnd.confluent.avro; record=reftrain.Candle")
               for line in lines)
    raw = subprocess.run(["kcat", "-C", "-b", platform.kafka_bootstrap_servers, "-t", cat.name(CANDLES), "-e",
                          "-q", "-c", "1", "-f", "%s"], capture_output=True, timeout=60, check=True).stdout
    assert raw[0] == 0 and struct.unpack(">I", raw[1:5])[0] > 0  # Confluent wire format: magic + schema id
