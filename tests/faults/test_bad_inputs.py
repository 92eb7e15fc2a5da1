"""The bad-input corpus (docs/reliability.md): every kind of bad input, sent to the REAL services running as
subprocesses, gets its defined outcome, and the service keeps processing the good input after it.

Defined outcomes asserted here:

* bytes that are not a record of the topic (corrupt Avro, trailing bytes, not wire format, null or
  empty value, unknown schema id, another record type, near-max-size garbage), invalid values
  (NaN/inf/negative prices, negative volume, high < low, misaligned or inconsistent times), keys
  that are empty, null, not UTF-8 or not the record's series: one entry on ``<topic>.dlq`` PER
  consuming service, carrying the original key and bytes, ``error.class``, ``error.reason`` and
  the source topic/partition/offset, and ``reftrain_dlq_total{service,topic,reason}`` counts it; a
  message too big to copy whole within the producers' limit (but under the broker's) gets a
  truncated copy with ``dlq.truncated``, ``dlq.original-size`` and ``dlq.original-sha256``;
* duplicate, conflicting and out-of-order candles on ``candles``: no DLQ entry, a per-outcome
  counter in each consumer (pivots, inference, coordinator) and no effect on what they emit;
* a candle on the topic that is not in the store: inference counts ``not_in_store``, makes no ref;
* pivots of a series nobody predicts: the coordinator accepts them (counted), emits no job;
* training jobs whose window is not (yet) in the store, is incomplete or differs from the ref:
  dead-lettered by the trainer with ``window_missing`` / ``row_count_mismatch`` /
  ``checksum_mismatch`` and never trained;
* bad rows in an ingest file (NaN/inf/negative/high<low/misaligned/duplicate/out-of-order, bytes
  that are not UTF-8):
  quarantined (store + ``candles.dlq`` with file and row) or counted, never published.

After the corpus each service must have processed the good input that followed it exactly as if
the bad input had not been there (pivots == batch detector, refs one per candle, jobs == oracle
``batch_join``, every valid job in the model lineage once), be running, answer /healthz and
/readyz with 200, and (stream services) have aborted no transaction: bad input never restarts a
session.

Real data: Binance BTCUSDT/ETHUSDT 1m candles from data/ (PROVENANCE.md); bad records are
deliberately corrupted copies of them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ops.analysis import Analysis
from ops.kafkaview import KafkaView, read_messages
from ops.report import collect
from reftrain.records import Candle, Pivot, series_key
from reftrain.settings import PlatformSettings
from reftrain.store import Store
from reftrain.streams import Serdes
from reftrain.topics import CANDLES, INFERENCE_REFS, PIVOTS, TRAINING_JOBS, TopicCatalogue
from services.pivots.detector import accepted_candles, detect_pivots
from tests.faults.support import (
    BROKER_MAX_MESSAGE_BYTES,
    SERVICE_PRODUCER_MAX_BYTES,
    DlqEntry,
    RawProducer,
    Service,
    read_dlq,
    schema_id_of,
    wait_for,
    wire,
)
from tests.faults.support import oversized as make_oversized
from tests.support import ensure_topics, real_candles

pytestmark = pytest.mark.kafka

BTC_FILE = "BTCUSDT-1m-2025-10-29_2025-11-01.csv"
ETH_FILE = "ETHUSDT-1m-2025-10-29_2025-11-01.csv"
BTC = "BTCUSDT:1m"
WINDOW = 20  # inference window of these tests: small, so a few dozen real candles make refs
STARTUP_S = 180.0  # services import torch/duckdb on a shared 2-core box: generous
CANDLE_CONSUMERS = ("pivots", "inference", "coordinator")


@pytest.fixture
def services(tmp_path: Path) -> Iterator[list[Service]]:
    """Services started by a test; killed at the end whatever happened."""
    started: list[Service] = []
    yield started
    for s in started:
        s.kill()


def start(started: list[Service], name: str, env: dict[str, str], log_dir: Path, **extra: str) -> Service:
    s = Service(name, env, log_dir, {"LOG_LEVEL": "INFO", **extra}).start()
    started.append(s)
    return s


def wait_ready(services: list[Service]) -> None:
    wait_for(lambda: all(s.status("/readyz") == 200 for s in services), STARTUP_S, "services ready", services)


# -- records ---------------------------------------------------------------------------------------
def changed(c: Candle, **fields: Any) -> dict[str, Any]:
    out = dict(copy.deepcopy(c))
    out.update(fields)
    return out


class Corpus:
    """Bad messages sent to one topic, and the DLQ entry each must produce in each consumer."""

    def __init__(self, platform: PlatformSettings, logical: str) -> None:
        self.platform = platform
        self.cat = TopicCatalogue(platform)
        self.logical = logical
        self.topic = self.cat.name(logical)
        self.serdes = Serdes(platform, self.cat)
        self.raw = RawProducer(platform)
        #: (name, partition, offset, error.class, error.reason, original key, original value)
        self.sent: list[tuple[str, int, int, str, str, bytes | None, bytes | None]] = []
        #: names of the bad messages whose DLQ copy must be truncated (too big to copy whole)
        self.truncated: set[str] = set()

    def encode(self, logical: str, value: dict[str, Any]) -> bytes:
        """Avro bytes of ``value`` as the record of ``logical`` (no validation on this side)."""
        return self.serdes.for_topic(logical).encode(value)

    def bad(self, name: str, key: bytes | None, value: bytes | None, cls: str, reason: str | None = None,
            truncated: bool = False) -> None:
        landed = self.raw.send(self.topic, key, value)
        self.sent.append((name, landed.partition, landed.offset, cls, reason or cls, key, value))
        if truncated:
            self.truncated.add(name)

    def good(self, key: str, value: dict[str, Any]) -> int:
        data = self.encode(self.logical, value)
        hdr = [("content-type", self.serdes.for_topic(self.logical).content_type.encode())]
        return self.raw.send(self.topic, key.encode(), data, hdr).offset

    def common(self, key: bytes, valid: dict[str, Any], other_logical: str, other: dict[str, Any]) -> None:
        """The byte-level corpus every topic gets: corrupt Avro, trailing bytes, foreign bytes, null
        and empty values, an unknown schema id, another record type, near-max-size garbage, and valid
        records under an empty, a null and a non-UTF-8 key."""
        data = self.encode(self.logical, valid)
        self.bad("truncated Avro", key, data[: len(data) // 2], "DecodeError")
        self.bad("trailing bytes", key, data + b"\x00\x01", "DecodeError")
        self.bad("not wire format", key, b'{"json": "not avro"}', "DecodeError")
        self.bad("null value", key, None, "DecodeError")
        self.bad("empty value", key, b"", "DecodeError")
        self.bad("unknown schema id", key, wire(987_654_321, data[5:]), "UnknownSchemaError")
        self.bad(f"{other_logical} record on {self.logical}", key, self.encode(other_logical, other),
                 "WrongRecordTypeError")
        # Near the limit: the DLQ copy (value + headers) still fits the services' producers.
        self.bad("oversized (~950 kB)", key, make_oversized(data, SERVICE_PRODUCER_MAX_BYTES - 50_000), "DecodeError")
        self.bad("non-UTF-8 key", b"\xff\xfe\x80BTC", data, "DecodeError")

    def check_dlq(self, services: tuple[str, ...], timeout: float, watch: list[Service]) -> list[DlqEntry]:
        """Each bad message has exactly one DLQ entry per consuming service, with the right headers
        and the original key and bytes."""
        assert self.sent, "no bad input was sent"
        want = len(self.sent) * len(services)
        entries: list[DlqEntry] = []

        def enough() -> bool:
            nonlocal entries
            entries = read_dlq(self.platform, self.cat.dlq(self.logical))
            return len(entries) >= want

        wait_for(enough, timeout, f"{want} entries on {self.logical}.dlq", watch, every=2.0)
        by_source = Counter((e.source, e.headers.get("service")) for e in entries)
        problems = []
        for name, partition, offset, cls, reason, key, value in self.sent:
            for svc in services:
                src = (self.topic, partition, offset)
                n = by_source[(src, svc)]
                if n != 1:
                    problems.append(f"{name}: {n} DLQ entries from {svc} (want 1)")
                    continue
                e = next(e for e in entries if e.source == src and e.headers.get("service") == svc)
                if (e.headers.get("error.class"), e.headers.get("error.reason")) != (cls, reason):
                    problems.append(f"{name} ({svc}): got {e.headers.get('error.class')}/"
                                    f"{e.headers.get('error.reason')}, want {cls}/{reason}")
                if name in self.truncated:
                    problems += truncation_problems(f"{name} ({svc})", e, key, value)
                elif e.key != key or e.value != value or "dlq.truncated" in e.headers:
                    problems.append(f"{name} ({svc}): original key/bytes not preserved")
        assert not problems, "\n".join(problems)
        assert len(entries) == want, f"{len(entries)} DLQ entries, want {want}"
        return entries

    def expected_dlq_counts(self) -> Counter[str]:
        return Counter(s[4] for s in self.sent)


def truncation_problems(name: str, e: DlqEntry, key: bytes | None, value: bytes | None) -> list[str]:
    """A truncated DLQ copy keeps the key, a prefix of the value that fits the producer limit, and
    headers naming the original's size and digest."""
    assert value is not None
    h = e.headers
    problems = []
    if e.key != key:
        problems.append(f"{name}: key not preserved")
    if h.get("dlq.truncated") != "true" or h.get("dlq.original-size") != str(len(value)):
        problems.append(f"{name}: truncation headers missing or wrong: {h}")
    if h.get("dlq.original-sha256") != hashlib.sha256(value).hexdigest():
        problems.append(f"{name}: dlq.original-sha256 is not the original's digest")
    if not e.value or not value.startswith(e.value) or len(e.value) >= len(value):
        problems.append(f"{name}: the copy is not a proper prefix of the original")
    elif len(e.value) < SERVICE_PRODUCER_MAX_BYTES // 2:
        problems.append(f"{name}: only {len(e.value)} bytes kept, far less than the limit allows")
    return problems


def dlq_counter(s: Service, topic: str) -> Counter[str]:
    m = s.metrics()
    return Counter({lab["reason"]: int(v) for lab, v in m.samples.get("reftrain_dlq_total", [])
                    if lab.get("service") == s.name and lab.get("topic") == topic and v})


def lag_zero(platform: PlatformSettings, group: str, logicals: tuple[str, ...]) -> bool:
    """The group committed every record of its inputs (ops.kafkaview: no AdminClient group calls,
    which can crash the process inside librdkafka)."""
    cat = TopicCatalogue(platform)
    probe = KafkaView(platform, timeout=5.0)
    try:
        topics = [cat.name(t) for t in logicals]
        return probe.effective_lag(f"{platform.topic_prefix}{group}", topics, timeout=20.0) == 0
    except Exception:
        return False
    finally:
        probe.close()


def assert_no_aborts(s: Service) -> None:
    aborted = s.metrics().total("reftrain_transactions_total", outcome="aborted")
    assert aborted == 0, f"{s.instance} aborted {aborted} transactions: bad input restarted a session\n{s.tail()}"


# -- the candles topic: pivots, inference and coordinator at once ---------------------------------------
def test_candles_corpus_dead_lettered_by_every_consumer_good_input_still_processed(
        platform: PlatformSettings, platform_env: dict[str, str], tmp_path: Path,
        services: list[Service]) -> None:
    candles = real_candles(BTC_FILE, limit=61)
    ensure_topics(platform)
    store = Store.from_settings(platform)
    try:
        store.append_candles(candles[:60])  # write before publish; candle 60 is published only
    finally:
        store.close()
    env = dict(platform_env)
    procs = [start(services, "pivots", env, tmp_path),
             start(services, "inference", env, tmp_path, INFERENCE_WINDOW=str(WINDOW), INFERENCE_DEVICE="cpu"),
             start(services, "coordinator", env, tmp_path)]
    wait_ready(procs)

    corpus = Corpus(platform, CANDLES)
    key = BTC.encode()
    for i in range(30):
        if i != 25:  # held back: arrives after 29, out of order
            corpus.good(BTC, dict(candles[i]))
    c = candles[10]
    pivot: Pivot = {"pivot_id": "x" * 32, "symbol": "BTCUSDT", "timeframe": "1m", "level": 1, "kind": "HIGH",
                    "pivot_time": c["open_time"], "price": c["high"], "confirmed_at": c["open_time"] + 120_000}
    corpus.common(key, dict(c), PIVOTS, dict(pivot))
    invalid = {
        "non_finite_price": [changed(c, close=math.nan), changed(c, high=math.inf), changed(c, open=-math.inf)],
        "non_positive_price": [changed(c, low=-1.0), changed(c, open=0.0)],
        "negative_volume": [changed(c, volume=-3.5)],
        "high_below_low": [changed(c, high=c["low"], low=c["high"])],
        "misaligned_open_time": [changed(c, open_time=c["open_time"] + 30_000, close_time=c["close_time"] + 30_000)],
        "bad_close_time": [changed(c, close_time=c["close_time"] + 60_000)],
    }
    for reason, values in invalid.items():
        for v in values:
            corpus.bad(reason, key, corpus.encode(CANDLES, v), "InvalidRecordError", reason)
    corpus.bad("empty key", b"", corpus.encode(CANDLES, dict(c)), "InvalidRecordError", "key_mismatch")
    corpus.bad("null key", None, corpus.encode(CANDLES, dict(c)), "InvalidRecordError", "key_mismatch")
    corpus.bad("key of another series", b"ETHUSDT:1m", corpus.encode(CANDLES, dict(c)), "InvalidRecordError",
               "key_mismatch")
    # duplicate, conflicting duplicate and out-of-order candles: counted, never dead-lettered
    corpus.good(BTC, dict(candles[25]))
    corpus.good(BTC, dict(candles[29]))
    mid = round((candles[29]["high"] + candles[29]["low"]) / 2, 2)
    corpus.good(BTC, changed(candles[29], close=mid))
    for i in range(30, 61):  # good input after the corpus; 60 is not in the store
        corpus.good(BTC, dict(candles[i]))

    corpus.check_dlq(CANDLE_CONSUMERS, 240, procs)
    wait_for(lambda: all(lag_zero(platform, s.name, tuple(TOPIC_INPUTS[s.name])) for s in procs), 240,
             "every consumer caught up", procs, every=2.0)

    want = corpus.expected_dlq_counts()
    for s in procs:
        assert dlq_counter(s, CANDLES) == want, f"{s.name}: reftrain_dlq_total differs"
    piv, inf, coord = (s.metrics() for s in procs)
    assert piv.total("reftrain_pivots_candles_total", outcome="duplicate") == 1
    assert piv.total("reftrain_pivots_candles_total", outcome="conflict") == 1
    assert piv.total("reftrain_pivots_candles_total", outcome="out_of_order") == 1
    assert inf.total("reftrain_inference_candles_total", outcome="duplicate") == 2  # 29 and its correction
    assert inf.total("reftrain_inference_candles_total", outcome="out_of_order") == 1
    assert inf.total("reftrain_inference_candles_total", outcome="not_in_store") == 1
    assert coord.total("reftrain_coordinator_inputs_total", kind="candle", outcome="duplicate") == 1
    assert coord.total("reftrain_coordinator_inputs_total", kind="candle", outcome="conflict") == 1

    # The good input around the corpus was processed as if the corpus had not been there.
    inp = collect(platform, stages_run=dict.fromkeys(("ingest", *CANDLE_CONSUMERS), True), read_store=False)
    a = Analysis(inp)
    # (Analysis.pivot_check would also read the mis-keyed copies of candle 10 as BTCUSDT candles.)
    topic_candles = [m.value for m in sorted(inp.messages[CANDLES], key=lambda m: (m.partition, m.offset))
                     if m.value is not None and m.key == BTC]
    batch = {p["pivot_id"] for p in detect_pivots(accepted_candles(topic_candles))}  # type: ignore[arg-type]
    assert {(m.value or {})["pivot_id"] for m in inp.messages[PIVOTS]} == batch
    assert any((m.value or {})["confirmed_at"] > candles[30]["open_time"] for m in inp.messages[PIVOTS])
    ref_ends = Counter((m.value or {})["data_range_end"] for m in inp.messages[INFERENCE_REFS])
    want_ends = {candles[i]["open_time"] for i in range(WINDOW - 1, 60) if i != 25}
    assert set(ref_ends) == want_ends and max(ref_ends.values()) == 1, "one ref per accepted stored candle"
    eo = a.exactly_once()
    assert eo["ok"] and eo["oracle"] > 0, eo
    for s in procs:
        s.assert_healthy()
        assert_no_aborts(s)


TOPIC_INPUTS: dict[str, list[str]] = {
    "pivots": [CANDLES], "inference": [CANDLES], "coordinator": [INFERENCE_REFS, PIVOTS, CANDLES],
    "trainer": [TRAINING_JOBS],
}


# -- refs and pivots: the coordinator ------------------------------------------------------------------
def test_refs_and_pivots_corpus_and_pivots_of_unknown_series(
        platform: PlatformSettings, platform_env: dict[str, str], tmp_path: Path, services: list[Service]) -> None:
    from tests.integration.coordinator.scenario import WINDOW as REF_WINDOW
    from tests.integration.coordinator.scenario import synthetic_ref

    candles = real_candles(ETH_FILE, limit=REF_WINDOW + 20)
    series = series_key("ETHUSDT", "1m")
    pivots = detect_pivots(candles)
    refs = [synthetic_ref(candles, i) for i in range(REF_WINDOW, REF_WINDOW + 16)]
    ensure_topics(platform)
    coord = start(services, "coordinator", dict(platform_env), tmp_path)
    wait_ready([coord])

    cand = Corpus(platform, CANDLES)
    refc = Corpus(platform, INFERENCE_REFS)
    pivc = Corpus(platform, PIVOTS)
    piv_at: dict[int, list[Pivot]] = {}
    for p in pivots:
        piv_at.setdefault(p["confirmed_at"], []).append(p)
    ref_at = {r["data_range_end"]: r for r in refs}
    key = series.encode()
    half = len(candles) - 12
    for n, part in enumerate((candles[:half], candles[half:])):
        for c in part:  # as a live system publishes: candle t, pivots confirmed at t, the ref made at t
            cand.good(series, dict(c))
            for p in piv_at.get(c["open_time"], []):
                pivc.good(series, dict(p))
            if c["open_time"] in ref_at:
                refc.good(series, dict(ref_at[c["open_time"]]))
        if n == 0:  # the corpus, in the middle of the stream
            r: dict[str, Any] = dict(refs[0])
            pv: dict[str, Any] = dict(pivots[-1])
            refc.common(key, r, CANDLES, dict(candles[0]))
            pivc.common(key, pv, INFERENCE_REFS, r)
            refc.bad("look-ahead ref", key, refc.encode(INFERENCE_REFS, {**r, "target_timestamp": r["data_range_end"]}),
                     "InvalidRecordError", "look_ahead")
            refc.bad("NaN probability", key, refc.encode(INFERENCE_REFS, {
                **r, "action_probs": {"buy": math.nan, "sell": 0.5, "hold": 0.5}}), "InvalidRecordError", "bad_probs")
            refc.bad("empty key", b"", refc.encode(INFERENCE_REFS, r), "InvalidRecordError", "key_mismatch")
            pivc.bad("confirmed before pivot", key, pivc.encode(PIVOTS, {**pv, "confirmed_at": pv["pivot_time"]}),
                     "InvalidRecordError", "confirmed_before_pivot")
            pivc.bad("misaligned pivot time", key, pivc.encode(PIVOTS, {**pv, "pivot_time": pv["pivot_time"] + 1}),
                     "InvalidRecordError", "misaligned_pivot_time")
            pivc.bad("null key", None, pivc.encode(PIVOTS, pv), "InvalidRecordError", "key_mismatch")
            pivc.good("NOSUCHCOIN:1m", {**pv, "symbol": "NOSUCHCOIN", "pivot_id": "unknown-series-pivot"})

    refc.check_dlq(("coordinator",), 180, [coord])
    pivc.check_dlq(("coordinator",), 60, [coord])
    wait_for(lambda: lag_zero(platform, "coordinator", (INFERENCE_REFS, PIVOTS, CANDLES)), 180,
             "the coordinator caught up", [coord], every=2.0)
    assert dlq_counter(coord, INFERENCE_REFS) == refc.expected_dlq_counts()
    assert dlq_counter(coord, PIVOTS) == pivc.expected_dlq_counts()
    m = coord.metrics()
    # every valid pivot is accepted, the unknown series' one included; it joins nothing
    slow = [p for p in pivots if p["confirmed_at"] - p["pivot_time"] > 500 * 60_000]  # D = 500 bars: not joinable
    assert m.total("reftrain_coordinator_inputs_total", kind="pivot", outcome="accepted") == \
        len(pivots) - len(slow) + 1, m.by_label("reftrain_coordinator_inputs_total", "outcome", kind="pivot")
    assert m.total("reftrain_coordinator_inputs_total", kind="ref", outcome="accepted") == len(refs)
    inp = collect(platform, stages_run=dict.fromkeys(("ingest", "pivots", "inference", "coordinator"), True),
                  read_store=False)
    assert all((j.value or {})["ref"]["symbol"] == "ETHUSDT" for j in inp.messages[TRAINING_JOBS])
    eo = Analysis(inp).exactly_once()
    assert eo["ok"] and eo["oracle"] >= len(refs), eo
    coord.assert_healthy()
    assert_no_aborts(coord)


# -- training jobs: the trainer ----------------------------------------------------------------------
def test_training_jobs_corpus_windows_not_in_store_never_train(
        platform: PlatformSettings, platform_env: dict[str, str], tmp_path: Path, services: list[Service]) -> None:
    from services.trainer.lineage import lineage_job_ids, manifest_relpath, read_manifest
    from services.trainer.spec import SPEC as TRAINER_SPEC
    from tests.unit.trainer.trainer_synth import candle_job, make_ref, synth_jobs

    window = 60
    candles = real_candles(BTC_FILE, limit=300)
    stored = candles[:160]  # 160..299 are "not yet" in the store
    cat = ensure_topics(platform)
    store = Store.from_settings(platform)
    try:
        store.append_candles(stored)
    finally:
        store.close()
    jobs = synth_jobs(stored, window, max_pivot_jobs=10)
    trainer = start(services, "trainer", dict(platform_env), tmp_path, TRAINER_DEVICE="cpu", TRAINER_BATCH="16",
                    TRAINER_CHECKPOINT_JOBS="32", TRAINER_CHECKPOINT_SECONDS="2")
    wait_ready([trainer])

    corpus = Corpus(platform, TRAINING_JOBS)
    key = BTC.encode()
    half = len(jobs) // 2
    for j in jobs[:half]:
        corpus.good(BTC, dict(j))
    j0 = copy.deepcopy(next(j for j in jobs[5:] if j["trigger"] == "CANDLE"))
    corpus.common(key, dict(j0), CANDLES, dict(candles[0]))

    def variant(tag: str, **ref: Any) -> dict[str, Any]:
        j = copy.deepcopy(j0)
        j["job_id"] = f"bad-{tag}"
        j["ref"].update(ref)  # type: ignore[typeddict-item]
        return dict(j)

    # Real windows of the exchange that the store does not hold (yet): wholly, or partly.
    future = candle_job(make_ref(candles, 298, window), candles[299])
    straddling = candle_job(make_ref(candles, 170, window), candles[171])
    corpus.bad("window not yet in the store", key, corpus.encode(TRAINING_JOBS, dict(future)),
               "WindowMismatchError", "window_missing")
    corpus.bad("window partly in the store", key, corpus.encode(TRAINING_JOBS, dict(straddling)),
               "WindowMismatchError", "row_count_mismatch")
    wrong_sum = variant("sum", window_checksum="0" * 64)
    corpus.bad("window differs from the ref", key, corpus.encode(TRAINING_JOBS, wrong_sum), "WindowMismatchError",
               "checksum_mismatch")
    corpus.bad("empty key", b"", corpus.encode(TRAINING_JOBS, dict(j0)), "InvalidRecordError", "key_mismatch")
    corpus.bad("key of another model", b"ETHUSDT:1m", corpus.encode(TRAINING_JOBS, dict(j0)), "InvalidRecordError",
               "key_mismatch")
    nan_job = copy.deepcopy(j0)
    nan_job["job_id"] = "bad-nan-candle"
    assert nan_job["actual_candle"] is not None
    nan_job["actual_candle"]["close"] = math.nan
    corpus.bad("NaN in the outcome candle", key, corpus.encode(TRAINING_JOBS, dict(nan_job)),
               "InvalidRecordError", "non_finite_price")
    for j in jobs[half:]:
        corpus.good(BTC, dict(j))

    corpus.check_dlq(("trainer",), 240, [trainer])
    topic = cat.name(TRAINING_JOBS)
    probe = KafkaView(platform, timeout=5.0)
    ends = {p: n for (_t, p), n in probe.end_offsets([topic]).items() if n > 0}
    probe.close()
    path = Path(platform.store_data_path)
    group = TRAINER_SPEC.group(platform.topic_prefix)

    def done() -> bool:
        ms = {p: read_manifest(path / manifest_relpath(group, topic, p)) for p in ends}
        return all(m is not None and m.next_offset >= ends[p] for p, m in ms.items())

    wait_for(done, 240, "the trainer to checkpoint every job", [trainer], every=2.0)
    manifest = next(m for p in ends if (m := read_manifest(path / manifest_relpath(group, topic, p))) is not None
                    and BTC in m.models)
    ids = lineage_job_ids(path, manifest.models[BTC].checkpoint_path)
    assert Counter(ids) == Counter(j["job_id"] for j in jobs), "every valid job trained once, no bad one"
    assert Counter(trainer.metrics().by_label("reftrain_trainer_rejected_total", "reason")) == \
        corpus.expected_dlq_counts()
    trainer.assert_healthy()


# -- ingest: bad rows in a file --------------------------------------------------------------------------
def test_ingest_file_corpus_quarantined_and_counted(
        platform: PlatformSettings, platform_env: dict[str, str], tmp_path: Path, services: list[Service]) -> None:
    from tests.support import DATA

    header, *rows = (DATA / BTC_FILE).read_text().splitlines()[:121]
    cells = [r.split(",") for r in rows]
    cols = ("t", "o", "h", "l", "c", "v", "n")

    def with_(i: int, **kw: str) -> str:
        d = dict(zip(cols, cells[i], strict=True))
        d.update(kw)
        return ",".join(d[k] for k in cols)

    lines = [header]
    where: dict[str, int] = {}

    def bad(reason: str, line: str) -> None:
        lines.append(line)
        where[reason] = len(lines)

    for i, line in enumerate(rows):
        if i == 60:
            continue  # arrives late (out of order) after row 70
        if i == 20:
            bad("non_finite_price", with_(20, c="nan"))
        if i == 30:
            bad("non_finite_price#inf", with_(30, h="inf"))
        if i == 40:
            bad("non_positive_price", with_(40, l="-1.0"))
        if i == 50:
            bad("high_below_low", with_(50, h=cells[50][3], l=cells[50][2]))
        if i == 55:
            bad("misaligned_open_time", with_(55, t=str(int(cells[55][0]) + 1)))
        if i == 65:
            bad("negative_volume", with_(65, v="-2"))
        lines.append(line)
        if i == 45:
            lines.append(line)  # exact duplicate
        if i == 70:
            lines.append(rows[60])  # out of order
    src = tmp_path / "BTCUSDT-1m-corpus.csv"
    src.write_text("\n".join(lines) + "\n")
    ingest = start(services, "ingest", dict(platform_env), tmp_path, INGEST_FILES=str(src), INGEST_DERIVE="",
                   INGEST_EXIT_WHEN_DONE="false", INGEST_PROGRESS="off")
    wait_for(lambda: ingest.metrics().total("reftrain_ingest_replay_complete") == 1, STARTUP_S,
             "the replay to finish", [ingest])
    m = ingest.metrics()
    reasons = Counter(r.split("#")[0] for r in where)
    for reason, n in reasons.items():
        assert m.total("reftrain_ingest_invalid_total", reason=reason) == n, reason
    assert m.total("reftrain_ingest_duplicates_total") == 1
    assert m.total("reftrain_ingest_out_of_order_total") == 1
    dlq = read_dlq(platform, TopicCatalogue(platform).dlq(CANDLES))
    got = sorted((e.headers["error.reason"], int(e.headers["source.row"])) for e in dlq)
    assert got == sorted((r.split("#")[0], line) for r, line in where.items())
    assert all(e.headers["source.file"] == src.name for e in dlq)
    published = collect(platform, stages_run={"ingest": True}, read_store=False).messages[CANDLES]
    times = [(m.value or {})["open_time"] for m in published]
    assert len(times) == len(set(times)) == len(rows) - 1, "every good row once; the late one not at all"
    ingest.assert_healthy()


# -- a message the DLQ cannot take as it is ------------------------------------------------------------
def test_message_too_big_for_the_dlq_copy_is_still_dead_lettered(
        platform: PlatformSettings, platform_env: dict[str, str], tmp_path: Path, services: list[Service]) -> None:
    candles = real_candles(BTC_FILE, limit=12)
    ensure_topics(platform)
    pivots = start(services, "pivots", dict(platform_env), tmp_path)
    wait_ready([pivots])
    corpus = Corpus(platform, CANDLES)
    data = corpus.encode(CANDLES, dict(candles[0]))
    corpus.good(BTC, dict(candles[0]))
    # Between the services' producer limit and the broker's: it reaches the topic, but a whole copy
    # plus error headers cannot be produced by the services; the DLQ gets a truncated copy.
    assert SERVICE_PRODUCER_MAX_BYTES < 1_040_000 < BROKER_MAX_MESSAGE_BYTES
    corpus.bad("near the broker's max", BTC.encode(), make_oversized(data, 1_040_000), "DecodeError",
               truncated=True)
    for c in candles[1:]:
        corpus.good(BTC, dict(c))
    assert schema_id_of(data) > 0
    wait_for(lambda: lag_zero(platform, "pivots", (CANDLES,)), 45, "pivots to move past the message", [pivots],
             every=2.0)
    corpus.check_dlq(("pivots",), 30, [pivots])
    pivots.assert_healthy()
    assert_no_aborts(pivots)


def test_ingest_file_with_a_non_utf8_row_quarantines_it(
        platform: PlatformSettings, platform_env: dict[str, str], tmp_path: Path, services: list[Service]) -> None:
    from tests.support import DATA

    header, *rows = (DATA / BTC_FILE).read_bytes().splitlines()[:41]
    bad_row = rows[20].split(b",")
    bad_row[1] = b"11\xff\xfe2"  # a corrupted byte in the open price
    src = tmp_path / "BTCUSDT-1m-latin1.csv"
    src.write_bytes(b"\n".join([header, *rows[:20], b",".join(bad_row), *rows[20:]]) + b"\n")
    ingest = start(services, "ingest", dict(platform_env), tmp_path, INGEST_FILES=str(src), INGEST_DERIVE="",
                   INGEST_EXIT_WHEN_DONE="false", INGEST_PROGRESS="off")
    wait_for(lambda: ingest.metrics().total("reftrain_ingest_replay_complete") == 1, STARTUP_S,
             "the replay to finish", [ingest])
    dlq = read_dlq(platform, TopicCatalogue(platform).dlq(CANDLES))
    assert [(int(e.headers["source.row"]), e.headers["error.reason"]) for e in dlq] == [(22, "bad_encoding")]
    assert ingest.metrics().total("reftrain_ingest_invalid_total", reason="bad_encoding") == 1
    published = collect(platform, stages_run={"ingest": True}, read_store=False).messages[CANDLES]
    assert len(published) == len(rows)
    ingest.assert_healthy()


# -- hostile writer schema ---------------------------------------------------------------------------
def schema_bomb(platform: PlatformSettings, valid: bytes) -> bytes:
    """A ~20-byte-longer message whose writer schema is reftrain.Candle plus an ``array<null>`` field
    with a default (BACKWARD compatible, so the registry accepts it) declaring 2^62 items: decoding it
    loops 2^62 times on zero bytes. Synthetic on purpose: real data never has this property."""
    from confluent_kafka.schema_registry import Schema

    from reftrain import schemas
    from reftrain.serde import registry_client

    evil = json.loads(schemas.schema_json("reftrain.Candle"))
    evil["fields"].append({"name": "pad", "type": {"type": "array", "items": "null"}, "default": []})
    client = registry_client(platform)
    schema_id = client.register_schema(f"{TopicCatalogue(platform).name(CANDLES)}-value",
                                       Schema(json.dumps(evil), "AVRO"))
    zigzag, out = (1 << 62) << 1, bytearray()  # Avro long: zig-zag, then base-128 varint
    while zigzag > 0x7F:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    block = bytes(out) + b"\x00"  # one block of 2^62 nulls, then the end-of-array marker
    return wire(schema_id, valid[5:] + block)


def test_schema_bomb_is_dead_lettered_within_a_second(
        platform: PlatformSettings, platform_env: dict[str, str], tmp_path: Path, services: list[Service]) -> None:
    candles = real_candles(BTC_FILE, limit=6)
    ensure_topics(platform)
    pivots = start(services, "pivots", dict(platform_env), tmp_path)
    wait_ready([pivots])
    corpus = Corpus(platform, CANDLES)
    data = corpus.encode(CANDLES, dict(candles[0]))
    corpus.good(BTC, dict(candles[0]))
    bomb = schema_bomb(platform, data)
    assert len(bomb) - len(data) < 16  # the payload adds a few bytes only
    corpus.bad("schema bomb (array<null> of 2^62 items)", BTC.encode(), bomb, "UnshippedSchemaError")
    for c in candles[1:]:
        corpus.good(BTC, dict(c))
    entries = corpus.check_dlq(("pivots",), 60, [pivots])
    assert "none of the" in entries[0].headers["error.message"]
    # within a second of the bomb's own timestamp (both set on this host when produced)
    msgs, _ = read_messages(platform, corpus.topic, timeout=30)
    sent_ms = next(m.timestamp()[1] for m in msgs if m.value() == bomb)
    dlq, _ = read_messages(platform, corpus.cat.dlq(CANDLES), timeout=30)
    assert len(dlq) == 1
    took_s = (dlq[0].timestamp()[1] - sent_ms) / 1000
    print(f"schema bomb dead-lettered {took_s:.3f}s after it was produced")
    assert took_s < 1.0, f"bomb dead-lettered after {took_s:.2f}s"
    wait_for(lambda: lag_zero(platform, "pivots", (CANDLES,)), 45, "pivots past the bomb", [pivots], every=1.0)
    pivots.assert_healthy()
    assert_no_aborts(pivots)
    assert dlq_counter(pivots, CANDLES) == Counter({"UnshippedSchemaError": 1})


def test_ingest_limits_overlong_line_and_too_many_series_are_quarantined(
        platform: PlatformSettings, platform_env: dict[str, str], tmp_path: Path, services: list[Service]) -> None:
    """Real files with one synthetic property each: a 1 MB line in BTCUSDT's file, and a second
    series (ETHUSDT) beyond INGEST_MAX_SERIES=1. Both quarantined with a reason and counted; the
    good BTCUSDT rows are all published."""
    from tests.support import DATA

    header, *rows = (DATA / BTC_FILE).read_text().splitlines()[:41]
    btc = tmp_path / BTC_FILE
    btc.write_text("\n".join([header, *rows[:20], "1" * 1_000_000, *rows[20:]]) + "\n")
    eth_header, *eth_rows = (DATA / ETH_FILE).read_text().splitlines()[:4]
    eth = tmp_path / ETH_FILE
    eth.write_text("\n".join([eth_header, *eth_rows]) + "\n")
    ingest = start(services, "ingest", dict(platform_env), tmp_path, INGEST_FILES=f"{btc},{eth}", INGEST_DERIVE="",
                   INGEST_EXIT_WHEN_DONE="false", INGEST_PROGRESS="off", INGEST_MAX_SERIES="1")
    wait_for(lambda: ingest.metrics().total("reftrain_ingest_replay_complete") == 1, STARTUP_S,
             "the replay to finish", [ingest])
    dlq = read_dlq(platform, TopicCatalogue(platform).dlq(CANDLES))
    reasons = Counter(e.headers["error.reason"] for e in dlq)
    assert reasons == Counter({"line_too_long": 1, "too_many_series": len(eth_rows)}), reasons
    assert all(len(e.value or b"") < 20_000 for e in dlq)  # the DLQ copy holds the line's start only
    assert ingest.metrics().total("reftrain_ingest_invalid_total", reason="line_too_long") == 1
    assert ingest.metrics().total("reftrain_ingest_invalid_total", reason="too_many_series") == len(eth_rows)
    published = collect(platform, stages_run={"ingest": True}, read_store=False).messages[CANDLES]
    assert len(published) == len(rows) and {m.key for m in published} == {BTC}
    ingest.assert_healthy()
