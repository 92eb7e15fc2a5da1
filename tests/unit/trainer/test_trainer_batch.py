"""Batch assembly: the exact input inference saw, the right targets, rejected jobs with reasons,
and optimiser steps that never mix models and keep offset order."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from reftrain import labels
from reftrain.adapters import CandleExample, PivotExample
from reftrain.errors import InvalidRecordError
from reftrain.model import build_input, compute_norm_params
from reftrain.model.adapter import TorchAdapter
from reftrain.records import Candle, TrainingJob
from services.trainer.batch import PendingJob, check_job, prepare, training_batches
from services.trainer.windows import WindowFetcher
from tests.unit.trainer.trainer_synth import MemStore, synth_jobs, window_of

W = 48
ADAPTER = TorchAdapter.create(0, "cpu")


@pytest.fixture(scope="module")
def btc_jobs(btc: Sequence[Candle]) -> list[TrainingJob]:
    return synth_jobs(btc[:160], W, max_pivot_jobs=6)


def pending(jobs: Sequence[TrainingJob], partition: int = 0, first_offset: int = 0) -> list[PendingJob]:
    return [PendingJob(partition, first_offset + i, j) for i, j in enumerate(jobs)]


def test_inputs_are_rebuilt_with_the_refs_params_and_targets_follow_the_trigger(
        mem_store: MemStore, btc: Sequence[Candle], btc_jobs: list[TrainingJob]) -> None:
    assert {j["trigger"] for j in btc_jobs} == {"CANDLE", "PIVOT"}
    samples, rejections, stats = prepare(pending(btc_jobs), WindowFetcher(mem_store), ADAPTER)
    assert rejections == [] and len(samples) == len(btc_jobs) and stats.store_calls == 1
    by_time = {c["open_time"]: i for i, c in enumerate(btc)}
    for s, job in zip(samples, btc_jobs, strict=True):
        end = by_time[job["ref"]["data_range_end"]]
        window = window_of(btc[end - W + 1:end + 1])
        assert np.array_equal(s.x, build_input(window, job["ref"]["norm_params"]))
        closes = np.asarray(window.values)[:, 3]
        if job["trigger"] == "PIVOT":
            pivot = job["pivot"]
            assert isinstance(s.example, PivotExample) and pivot is not None
            future = pivot["pivot_time"] > job["ref"]["data_range_end"]
            expect = ("FUTURE_LOW" if pivot["kind"] == "LOW" else "FUTURE_HIGH") if future else "PAST"
            assert labels.PIVOT_CLASSES[s.example.label] == expect
        else:
            assert isinstance(s.example, CandleExample) and job["actual_candle"] is not None
            # the one label rule: log move against 0.3 x the window's own volatility
            move = np.log(job["actual_candle"]["close"] / closes[-1])
            band = labels.HOLD_BAND * np.std(np.diff(np.log(closes)))
            expect = "BUY" if move > band else "SELL" if move < -band else "HOLD"
            assert labels.ACTIONS[s.example.action] == expect
    mix = {labels.PIVOT_CLASSES[s.example.label] for s in samples if isinstance(s.example, PivotExample)}
    assert "PAST" in mix and mix - {"PAST"}  # both negatives and future pivots occur in real data


def bad(job: TrainingJob, path: Sequence[str], value: Any) -> TrainingJob:
    out = copy.deepcopy(job)
    node: Any = out
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return out


def test_each_bad_job_is_rejected_with_its_reason(mem_store: MemStore, btc: Sequence[Candle],
                                                  btc_jobs: list[TrainingJob]) -> None:
    candle_job = next(j for j in btc_jobs if j["trigger"] == "CANDLE")
    pivot_job = next(j for j in btc_jobs if j["trigger"] == "PIVOT")
    other_params = compute_norm_params(window_of(btc[300:300 + W]))
    t = candle_job["ref"]["target_timestamp"]
    cases = [
        (bad(candle_job, ["ref", "window_checksum"], "f" * 64), "checksum_mismatch"),
        (bad(candle_job, ["ref", "window_size"], W - 1), "row_count_mismatch"),
        (bad(bad(candle_job, ["ref", "data_range_start"], 10**12), ["ref", "data_range_end"], 10**12 + 60_000),
         "window_missing"),
        (bad(candle_job, ["ref", "norm_params"], other_params), "bad_norm_params"),
        (bad(candle_job, ["ref", "norm_params", "scheme"], "zscore-v9"), "scheme_mismatch"),
        (bad(candle_job, ["model_key"], "ETHUSDT:1m"), "model_key_mismatch"),
        (bad(candle_job, ["actual_candle"], None), "missing_outcome"),
        (bad(bad(candle_job, ["actual_candle", "open_time"], t + 60_000), ["actual_candle", "close_time"],
             t + 120_000 - 1), "target_mismatch"),
        (bad(candle_job, ["actual_candle", "high"], -1.0), "non_positive_price"),
        (bad(pivot_job, ["pivot", "level"], 0), "bad_level"),
        (bad(pivot_job, ["pivot", "symbol"], "ETHUSDT"), "target_mismatch"),
        (bad(candle_job, ["ref", "target_timestamp"], candle_job["ref"]["data_range_end"]), "look_ahead"),
        (bad(candle_job, ["trigger"], "MOON"), "bad_trigger"),
    ]
    jobs = [candle_job] + [c for c, _ in cases]
    samples, rejections, _ = prepare(pending(jobs), WindowFetcher(mem_store), ADAPTER)
    assert [s.offset for s in samples] == [0]
    assert [(r.offset, r.reason) for r in rejections] == [(i + 1, reason) for i, (_, reason) in enumerate(cases)]


def test_check_job_accepts_what_the_coordinator_emits(btc_jobs: list[TrainingJob]) -> None:
    for job in btc_jobs:
        check_job(job)
    with pytest.raises(InvalidRecordError):
        check_job(bad(btc_jobs[0], ["ref", "norm_params", "params", "ret_scale"], float("nan")))


def test_steps_never_mix_models_and_keep_offset_order(mem_store: MemStore, btc: Sequence[Candle],
                                                       eth_1h: Sequence[Candle]) -> None:
    btc_jobs = synth_jobs(btc[:120], W, max_pivot_jobs=0)
    eth_jobs = synth_jobs(eth_1h[:100], W, max_pivot_jobs=0)
    mixed = [j for pair in zip(btc_jobs, eth_jobs, strict=False) for j in pair]
    items = pending(mixed, partition=3, first_offset=100)
    samples, rejections, _ = prepare(list(reversed(items)), WindowFetcher(mem_store), ADAPTER)
    assert not rejections
    steps = training_batches(samples, 16)
    for step in steps:
        assert len({s.model_key for s in step}) == 1 and 1 <= len(step) <= 16
        assert len({s.trigger for s in step}) == 1  # train_candle and train_pivot never share a step
        assert [s.offset for s in step] == sorted(s.offset for s in step)
    btc_offsets = [s.offset for step in steps for s in step if s.model_key == "BTCUSDT:1m"]
    assert btc_offsets == sorted(btc_offsets) and len(btc_offsets) == len(btc_jobs[:len(eth_jobs)])
    assert all(s.x.shape == (W, 5) and s.x.dtype == np.float32 for s in steps[0])
