"""The inference processor without a broker, on real candles: one ref per completed candle once the
window is full (waiting counted, never padded), no look-ahead (the future in the store changes
nothing), batched == one-by-one, many series in one predict call, hot reload in stream order
without dropped or duplicated refs, unusable checkpoints dead-lettered, store failures restart."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
import torch

from reftrain import schemas
from reftrain.adapters import AdapterMismatchError, TrainingAdapter, load_checkpoint, save_checkpoint
from reftrain.errors import InvalidRecordError
from reftrain.model import build_input, compute_norm_params, init_model, predict_batch
from reftrain.model.adapter import TorchAdapter
from reftrain.records import Candle, inference_id
from reftrain.streams import Record, RestartSession
from reftrain.topics import INFERENCE_REFS
from reftrain.validation import validate_inference_ref
from services.inference import metrics
from services.inference.models import ModelRegistry
from services.inference.processor import InferenceProcessor
from tests.support import real_candles
from tests.unit.inference.conftest import FakeCtx, MemStore, candle_record, model_version_record, to_window

MIN = 60_000
KEY = "BTCUSDT:1m"


class SpyPredict:
    """The adapter's predict, recording the batch size of each call."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, adapter: TrainingAdapter, x: np.ndarray, params: Any) -> Any:
        self.sizes.append(int(x.shape[0]))
        return adapter.predict(x, params)


def make(store: MemStore, **kw: Any) -> tuple[InferenceProcessor, SpyPredict]:
    spy = SpyPredict()
    proc = InferenceProcessor(store, ModelRegistry(store, torch.device("cpu")), predict=spy, **kw)
    return proc, spy


def run_batches(proc: InferenceProcessor, records: list[Record], batch: int = 100) -> FakeCtx:
    ctx = FakeCtx()
    for i in range(0, len(records), batch):
        for r in records[i:i + batch]:
            proc.process(r, ctx)  # type: ignore[arg-type]
        proc.end_batch(ctx)  # type: ignore[arg-type]
    return ctx


def value(counter: Any, *labels: str) -> float:
    return float(counter.labels(*labels)._value.get())


def checkpoint(store: MemStore, key: str, version: int, seed: int) -> str:
    rel = f"checkpoints/{key.replace(':', '_')}/v{version}.pt"
    save_checkpoint(Path(store.data_path) / rel, TorchAdapter.from_model(init_model(seed)),
                    {"model_key": key, "version": version})
    return rel


def probs(ref: dict[str, Any]) -> np.ndarray:
    p = ref["action_probs"]
    return np.array([p["buy"], p["sell"], p["hold"]])


def test_one_ref_per_candle_once_the_window_is_full(tmp_path: Path, btc: list[Candle]) -> None:
    candles = btc[:700]
    store = MemStore(tmp_path, candles)
    proc, _ = make(store)
    waiting = value(metrics.WAITING_FOR_HISTORY, KEY)
    refs_before = value(metrics.REFS_TOTAL, KEY)
    ctx = run_batches(proc, [candle_record(c, i) for i, c in enumerate(candles)], batch=50)
    refs = ctx.refs()
    assert [r["data_range_end"] for r in refs] == [c["open_time"] for c in candles[599:]]
    assert {(t, k) for t, k, _ in ctx.emitted} == {(INFERENCE_REFS, KEY)}
    assert value(metrics.WAITING_FOR_HISTORY, KEY) - waiting == 599
    assert value(metrics.REFS_TOTAL, KEY) - refs_before == 101
    for i, r in zip(range(599, 700), refs, strict=True):
        validate_inference_ref(r)
        assert r["window_size"] == 600 and r["data_range_start"] == candles[i - 599]["open_time"]
        assert r["target_timestamp"] == r["data_range_end"] + MIN
        assert (r["model_key"], r["model_version"]) == (KEY, 0)
        assert r["inference_id"] == inference_id(KEY, r["data_range_end"], KEY, 0)
        assert r["window_checksum"] == to_window(candles[i - 599:i + 1]).checksum()
        assert r["confidence"] == max(probs(r)) and abs(probs(r).sum() - 1) < 1e-12
        pc = r["predicted_candle"]
        assert pc["high"] >= max(pc["open"], pc["close"]) >= min(pc["open"], pc["close"]) >= pc["low"] > 0


def test_a_ref_is_a_few_hundred_bytes_whatever_the_window(tmp_path: Path, btc: list[Candle]) -> None:
    store = MemStore(tmp_path, btc[:601])
    proc, _ = make(store)
    (ref,) = run_batches(proc, [candle_record(btc[600])]).refs()
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schemas.parsed_plain("reftrain.InferenceRef"), ref)
    assert len(buf.getvalue()) < 500 < 600 * 5 * 8  # the window as raw float64 alone is 24 000 bytes


def test_no_look_ahead_the_future_in_the_store_changes_nothing(tmp_path: Path, btc: list[Candle]) -> None:
    """Ingest may be far ahead of inference: the store already holds candles after the inference
    time. Refs made with the true future and with a fabricated one are identical, and equal what a
    window of past rows alone gives."""
    real_future = MemStore(tmp_path, btc)  # 1000 candles; we infer at 610..629
    fabricated: list[Candle] = [Candle(**{**c, "open": c["open"] * 3, "high": c["high"] * 3,  # type: ignore[typeddict-item]
                                          "low": c["low"] * 3, "close": c["close"] * 3, "volume": 1e9})
                                for c in btc[630:]]
    fake_future = MemStore(tmp_path, btc[:630] + fabricated)
    stream = [candle_record(c, i) for i, c in enumerate(btc[610:630])]
    a = run_batches(make(real_future)[0], stream).refs()
    b = run_batches(make(fake_future)[0], stream).refs()
    strip = [{k: v for k, v in r.items() if k != "created_at"} for r in a]
    assert strip == [{k: v for k, v in r.items() if k != "created_at"} for r in b]
    model = init_model(0)
    for i, r in zip(range(610, 630), a, strict=True):
        past = to_window(btc[i - 599:i + 1])
        assert r["data_range_end"] == btc[i]["open_time"] < r["target_timestamp"] == btc[i + 1]["open_time"]
        assert r["window_checksum"] == past.checksum()
        params = compute_norm_params(past)
        assert r["norm_params"] == params
        ((p, _),) = predict_batch(model, build_input(past, params)[None], "cpu")
        assert np.max(np.abs(probs(r) - np.array([p["buy"], p["sell"], p["hold"]]))) < 1e-6


def test_many_series_closing_at_once_are_one_batch_and_equal_one_by_one(tmp_path: Path) -> None:
    files = ["BTCUSDT-1m-2025-09-22_2025-09-25.csv", "ETHUSDT-1m-2025-09-22_2025-09-25.csv",
             "BTCUSD-1m-2017-09-03_2017-09-04.csv", "ETHUSD-1m-2017-09-03_2017-09-04.csv",
             "LTCUSD-1m-2018-04-05_2018-04-06.csv"]
    series = {f: real_candles(f, limit=620) for f in files}
    store = MemStore(tmp_path, [c for cs in series.values() for c in cs])
    # 10 closes of each of 5 series, interleaved as they would arrive, in ONE transaction
    stream = [candle_record(series[f][i], i) for i in range(605, 615) for f in files]
    batched, spy = make(store)
    reads_before = len(store.reads)
    together = run_batches(batched, stream, batch=len(stream)).refs()
    assert spy.sizes == [50]  # every series still on version 0 shares one network: one forward pass
    assert len(store.reads) - reads_before == 5  # one store read per series for its 10 windows
    single, spy1 = make(store)
    alone = run_batches(single, stream, batch=1).refs()
    assert spy1.sizes == [1] * 50
    assert [r["inference_id"] for r in together] == [r["inference_id"] for r in alone]
    for a, b in zip(together, alone, strict=True):
        assert (a["window_checksum"], a["norm_params"], a["target_timestamp"]) == (
            b["window_checksum"], b["norm_params"], b["target_timestamp"])
        assert np.max(np.abs(probs(a) - probs(b))) < 1e-6
        assert a["predicted_action"] == b["predicted_action"] or abs(a["confidence"] - b["confidence"]) < 1e-6


def test_hot_reload_in_stream_order_drops_and_duplicates_nothing(tmp_path: Path, btc: list[Candle]) -> None:
    store = MemStore(tmp_path, btc[:700])
    rel = checkpoint(store, KEY, 1, seed=1)
    proc, spy = make(store)
    batch = ([candle_record(c, i) for i, c in enumerate(btc[600:610])] + [model_version_record(KEY, 1, rel)]
             + [candle_record(c, 10 + i) for i, c in enumerate(btc[610:620])])
    refs = run_batches(proc, batch, batch=len(batch)).refs()
    assert [r["data_range_end"] for r in refs] == [c["open_time"] for c in btc[600:620]]
    assert [r["model_version"] for r in refs] == [0] * 10 + [1] * 10
    assert spy.sizes == [10, 10]  # one call per network
    assert len({r["inference_id"] for r in refs}) == 20
    assert metrics.MODEL_VERSION.labels(KEY)._value.get() == 1
    assert proc.model_versions() == {KEY: 1}
    v1 = init_model(1)
    for i, r in zip(range(610, 620), refs[10:], strict=True):
        w = to_window(btc[i - 599:i + 1])
        ((p, _),) = predict_batch(v1, build_input(w, r["norm_params"])[None], "cpu")
        assert np.max(np.abs(probs(r) - np.array([p["buy"], p["sell"], p["hold"]]))) < 1e-6
    assert np.max(np.abs(probs(refs[9]) - probs(refs[10]))) > 1e-4  # another model indeed


def test_stale_model_versions_are_ignored(tmp_path: Path, btc: list[Candle]) -> None:
    store = MemStore(tmp_path, btc[:610])
    rel2 = checkpoint(store, KEY, 2, seed=2)
    rel1 = checkpoint(store, KEY, 1, seed=1)
    proc, _ = make(store)
    stale = value(metrics.MODEL_LOADS, "stale")
    ctx = FakeCtx()
    for r in (model_version_record(KEY, 2, rel2), model_version_record(KEY, 1, rel1),
              model_version_record(KEY, 2, rel2), candle_record(btc[605])):
        proc.process(r, ctx)  # type: ignore[arg-type]
    proc.end_batch(ctx)  # type: ignore[arg-type]
    assert [r["model_version"] for r in ctx.refs()] == [2]
    assert value(metrics.MODEL_LOADS, "stale") - stale == 2


def test_the_newest_version_in_the_store_is_used_from_the_start(tmp_path: Path, btc: list[Candle]) -> None:
    store = MemStore(tmp_path, btc[:610])
    store.versions[KEY] = {"model_key": KEY, "version": 3, "checkpoint_path": checkpoint(store, KEY, 3, seed=3)}
    proc, _ = make(store)
    refs = run_batches(proc, [candle_record(btc[605]), candle_record(btc[606])]).refs()
    assert [r["model_version"] for r in refs] == [3, 3]


def test_an_unusable_newest_version_in_the_store_falls_back_to_version_0(tmp_path: Path, btc: list[Candle]) -> None:
    store = MemStore(tmp_path, btc[:610])
    store.versions[KEY] = {"model_key": KEY, "version": 4, "checkpoint_path": "checkpoints/gone.pt"}
    failed = value(metrics.MODEL_LOADS, "failed")
    (ref,) = run_batches(make(store)[0], [candle_record(btc[605])]).refs()
    assert ref["model_version"] == 0 and value(metrics.MODEL_LOADS, "failed") == failed + 1


@pytest.mark.parametrize(("path", "reason"), [
    ("checkpoints/none.pt", "checkpoint_missing"),
    ("junk.pt", "checkpoint_unreadable"),
    ("other.pt", "checkpoint_mismatch"),
    ("../outside.pt", "checkpoint_path_outside_store"),
    ("/etc/passwd", "checkpoint_path_absolute"),
])
def test_an_unusable_checkpoint_is_invalid_input_and_the_old_model_stays(
        tmp_path: Path, btc: list[Candle], path: str, reason: str) -> None:
    store = MemStore(tmp_path / "lake", btc[:610])
    (tmp_path / "lake").mkdir(exist_ok=True)
    (tmp_path / "lake" / "junk.pt").write_bytes(b"not a checkpoint")
    save_checkpoint(tmp_path / "lake" / "other.pt", TorchAdapter.from_model(init_model(1)),
                    {"model_key": "ETHUSDT:1m", "version": 1})
    save_checkpoint(tmp_path / "outside.pt", TorchAdapter.from_model(init_model(1)), {"model_key": KEY, "version": 1})
    proc, _ = make(store)
    ctx = FakeCtx()
    with pytest.raises(InvalidRecordError) as err:
        proc.process(model_version_record(KEY, 1, path), ctx)  # type: ignore[arg-type]
    assert err.value.reason == reason
    proc.process(candle_record(btc[605]), ctx)  # type: ignore[arg-type]
    proc.end_batch(ctx)  # type: ignore[arg-type]
    assert [r["model_version"] for r in ctx.refs()] == [0]


def test_mis_keyed_records_are_invalid(tmp_path: Path, btc: list[Candle]) -> None:
    proc, _ = make(MemStore(tmp_path, btc[:610]))
    with pytest.raises(InvalidRecordError, match="key_mismatch"):
        proc.process(candle_record(btc[605], key="ETHUSDT:1m"), FakeCtx())  # type: ignore[arg-type]
    with pytest.raises(InvalidRecordError, match="key_mismatch"):
        proc.process(model_version_record(KEY, 1, "x.pt", key="ETHUSDT:1m"), FakeCtx())  # type: ignore[arg-type]
    assert proc.pending == 0


def test_duplicates_and_late_candles_make_no_second_ref(tmp_path: Path, btc: list[Candle]) -> None:
    store = MemStore(tmp_path, btc[:620])
    dup = value(metrics.CANDLES_TOTAL, "duplicate")
    late = value(metrics.CANDLES_TOTAL, "out_of_order")
    stream = [candle_record(c) for c in (btc[605], btc[606], btc[606], btc[604], btc[607])]
    refs = run_batches(make(store)[0], stream, batch=2).refs()
    assert [r["data_range_end"] for r in refs] == [btc[i]["open_time"] for i in (605, 606, 607)]
    assert value(metrics.CANDLES_TOTAL, "duplicate") == dup + 1
    assert value(metrics.CANDLES_TOTAL, "out_of_order") == late + 1


def test_a_candle_not_in_the_store_is_counted_and_gets_no_ref(tmp_path: Path, btc: list[Candle]) -> None:
    store = MemStore(tmp_path, btc[:605])  # published before written: 605 is not there
    before = value(metrics.CANDLES_TOTAL, "not_in_store")
    refs = run_batches(make(store)[0], [candle_record(btc[604]), candle_record(btc[605])]).refs()
    assert [r["data_range_end"] for r in refs] == [btc[604]["open_time"]]
    assert value(metrics.CANDLES_TOTAL, "not_in_store") == before + 1


def test_a_store_failure_restarts_the_session(tmp_path: Path, btc: list[Candle]) -> None:
    store = MemStore(tmp_path, btc[:610])
    proc, _ = make(store)
    ctx = FakeCtx()
    proc.process(candle_record(btc[605]), ctx)  # type: ignore[arg-type]
    store.fail = True
    with pytest.raises(RestartSession):
        proc.end_batch(ctx)  # type: ignore[arg-type]
    with pytest.raises(RestartSession):  # first candle of an unseen series asks the store for its model
        proc.process(candle_record(real_candles("ETHUSDT-1m-2025-09-22_2025-09-25.csv", limit=1)[0]), ctx)  # type: ignore[arg-type]
    assert ctx.refs() == [] and proc.pending == 0


def test_series_filter_and_revocation(tmp_path: Path, btc: list[Candle], eth: list[Candle]) -> None:
    store = MemStore(tmp_path, btc[:610] + eth[:610])
    proc, _ = make(store, series=("ETHUSDT:1m",))
    refs = run_batches(proc, [candle_record(btc[605]), candle_record(eth[605], partition=3)]).refs()
    assert [r["model_key"] for r in refs] == ["ETHUSDT:1m"]
    ctx = FakeCtx()
    proc.process(candle_record(eth[606], partition=3), ctx)  # type: ignore[arg-type]
    proc.revoked(3)  # the partition moved away: its pending candle and model go with it
    proc.end_batch(ctx)  # type: ignore[arg-type]
    assert ctx.refs() == [] and proc.model_versions() == {}


def test_gap_in_the_window_the_ref_tells_the_truth(tmp_path: Path, ltc: list[Candle]) -> None:
    store = MemStore(tmp_path, ltc[:1100])
    proc, _ = make(store, horizon=2)
    stream = [candle_record(ltc[i], i) for i in (599, 1090, 1091)]
    gapped = value(metrics.GAPPED_WINDOWS, "LTCUSD:1m")
    refs = run_batches(proc, stream).refs()
    spans = [(r["data_range_end"] - r["data_range_start"]) // MIN + 1 for r in refs]
    assert [r["window_size"] for r in refs] == [600, 600, 600]
    assert spans == [601, 601, 600]
    assert [r["data_range_start"] for r in refs] == [ltc[0]["open_time"], ltc[491]["open_time"],
                                                     ltc[492]["open_time"]]
    assert [r["target_timestamp"] - r["data_range_end"] for r in refs] == [2 * MIN] * 3
    assert value(metrics.GAPPED_WINDOWS, "LTCUSD:1m") == gapped + 2


class OtherAdapter(TorchAdapter):
    """The same network under another feature-scheme name: its checkpoints must not load."""

    name = "other-adapter"
    scheme = "other-v1"


def test_checkpoint_sha256_is_checked_before_any_load_and_a_mismatch_is_refused_and_counted(
        tmp_path: Path, btc: list[Candle]) -> None:
    store = MemStore(tmp_path, btc[:620])
    rel = checkpoint(store, KEY, 1, seed=1)
    good = hashlib.sha256((Path(store.data_path) / rel).read_bytes()).hexdigest()
    proc, _ = make(store)
    ctx = FakeCtx()
    before = value(metrics.MODEL_LOADS, "sha256_mismatch")
    with pytest.raises(InvalidRecordError) as err:
        proc.process(model_version_record(KEY, 1, rel, sha256="0" * 64), ctx)  # type: ignore[arg-type]
    assert err.value.reason == "checkpoint_sha256_mismatch"
    assert value(metrics.MODEL_LOADS, "sha256_mismatch") == before + 1
    assert proc.model_versions() == {KEY: 0}  # the old model stays
    # A file that is not even a checkpoint is refused on its hash alone: nothing parses it.
    (Path(store.data_path) / "evil.pt").write_bytes(b"\x80\x04 pickle that would run code")
    with pytest.raises(InvalidRecordError, match="checkpoint_sha256_mismatch"):
        proc.process(model_version_record(KEY, 1, "evil.pt", sha256=good), ctx)  # type: ignore[arg-type]
    proc.process(model_version_record(KEY, 1, rel, sha256=good, adapter=TorchAdapter.kind()), ctx)  # type: ignore[arg-type]
    assert proc.model_versions() == {KEY: 1}


def test_a_checkpoint_of_another_adapter_or_scheme_is_refused_with_a_clear_error(
        tmp_path: Path, btc: list[Candle]) -> None:
    store = MemStore(tmp_path, btc[:620])
    rel = "checkpoints/other.ckpt"
    save_checkpoint(Path(store.data_path) / rel, OtherAdapter.from_model(init_model(1)),
                    {"model_key": KEY, "version": 1})
    with pytest.raises(AdapterMismatchError, match=r"other-adapter.*other-v1.*builtin-gru-v2.*logret-v1"):
        load_checkpoint(Path(store.data_path) / rel, TorchAdapter)
    proc, _ = make(store)
    before = value(metrics.MODEL_LOADS, "adapter_mismatch")
    with pytest.raises(InvalidRecordError) as err:
        proc.process(model_version_record(KEY, 1, rel), FakeCtx())  # type: ignore[arg-type]
    assert err.value.reason == "adapter_mismatch" and "other-adapter" in str(err.value)
    with pytest.raises(InvalidRecordError, match="adapter_mismatch"):  # named in the record: refused unread
        proc.process(model_version_record(KEY, 1, rel, adapter=OtherAdapter.kind()), FakeCtx())  # type: ignore[arg-type]
    assert value(metrics.MODEL_LOADS, "adapter_mismatch") == before + 2
    assert proc.model_versions() == {KEY: 0}


def test_a_repeated_model_version_is_one_version_and_a_conflicting_repeat_is_refused(
        tmp_path: Path, btc: list[Candle]) -> None:
    """docs/semantics.md "Repeated ModelVersions": the trainer re-announces committed versions (e.g.
    after a kill -9); the same (key, version, checkpoint) again is ignored, another checkpoint for a
    version already seen is refused (dead letter), counted, and the model in use is kept."""
    store = MemStore(tmp_path, btc[:620])
    rel1 = checkpoint(store, KEY, 1, seed=1)
    sha1 = hashlib.sha256((Path(store.data_path) / rel1).read_bytes()).hexdigest()
    other = checkpoint(store, KEY, 9, seed=9)  # another file (its meta says v9: never loaded here)
    proc, _ = make(store)
    ctx = FakeCtx()
    loads, stale, conflict = (value(metrics.MODEL_LOADS, o) for o in ("hot_reload", "stale", "conflict"))
    for _ in range(3):
        proc.process(model_version_record(KEY, 1, rel1, sha256=sha1), ctx)  # type: ignore[arg-type]
    assert value(metrics.MODEL_LOADS, "hot_reload") == loads + 1  # loaded once
    assert value(metrics.MODEL_LOADS, "stale") == stale + 2
    for bad in (model_version_record(KEY, 1, rel1, sha256="f" * 64),  # same file named, other checksum
                model_version_record(KEY, 1, other, sha256=sha1)):  # another file
        with pytest.raises(InvalidRecordError) as err:
            proc.process(bad, ctx)  # type: ignore[arg-type]
        assert err.value.reason == "model_version_conflict"
    assert value(metrics.MODEL_LOADS, "conflict") == conflict + 2
    assert proc.model_versions() == {KEY: 1}
    # a repeat without a checksum (an older producer) naming the same file is the same version
    proc.process(model_version_record(KEY, 1, rel1), ctx)  # type: ignore[arg-type]
    assert value(metrics.MODEL_LOADS, "conflict") == conflict + 2
