"""Shared forward passes (#16): the jobs of one ref (one CANDLE, several PIVOT) train on ONE pass of
their common window. On real windows (Binance BTCUSDT 1m, refs and pivot jobs synthesised the way
inference and the coordinator make them): the shared loss equals the sum of the per-job losses (each
job on its own forward pass) and so do the gradients; the adapter's shared step equals the step
on the inputs repeated per job; steps never split a ref's jobs."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from reftrain.adapters import CandleExample
from reftrain.model import init_model
from reftrain.model.adapter import TorchAdapter, _candle_target
from reftrain.model.training import PIVOT_LOSS_WEIGHT, SampleTarget, TargetBatch, compute_losses, training_step
from reftrain.records import Candle, TrainingJob
from services.trainer.batch import PendingJob, Sample, prepare, training_batches
from services.trainer.windows import WindowFetcher
from tests.unit.trainer.trainer_synth import MemStore, synth_jobs

W = 48
ADAPTER = TorchAdapter.create(0, "cpu")


@pytest.fixture(scope="module")
def jobs(btc: Sequence[Candle]) -> list[TrainingJob]:
    return synth_jobs(btc[:200], W, max_pivot_jobs=10**6)


def samples_of(mem_store: MemStore, jobs: list[TrainingJob]) -> list[Sample]:
    samples, rejections, _ = prepare([PendingJob(0, i, j) for i, j in enumerate(jobs)], WindowFetcher(mem_store),
                                     ADAPTER)
    assert rejections == []
    return samples


def target(s: Sample) -> SampleTarget:
    e = s.example
    if isinstance(e, CandleExample):
        return SampleTarget(action=e.action, candle=_candle_target(e))
    return SampleTarget(pivot=e.label)


def grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def test_jobs_of_one_ref_share_one_input_array_and_one_step(mem_store: MemStore, jobs: list[TrainingJob]) -> None:
    samples = samples_of(mem_store, jobs)
    per_ref = Counter(j["ref"]["inference_id"] for j in jobs)
    assert max(per_ref.values()) >= 3 and {s.trigger for s in samples} == {"CANDLE", "PIVOT"}
    assert len({id(s.x) for s in samples}) == len(per_ref)  # one array per ref
    steps = training_batches(samples, 16, shared=True)
    assert sorted(s.offset for step in steps for s in step) == list(range(len(samples)))  # each job once
    assert [len({id(s.x) for s in step}) for step in steps][:-1] == [16] * (len(steps) - 1)  # windows per step
    assert 0 < len({id(s.x) for s in steps[-1]}) <= 16
    where = {id(s.x): i for i, step in enumerate(steps) for s in step}
    assert all(where[id(s.x)] == i for i, step in enumerate(steps) for s in step)  # a ref is never split
    assert any(len({s.trigger for s in step}) == 2 for step in steps)


def test_the_shared_loss_and_gradient_are_the_sums_over_jobs_on_their_own_passes(
        mem_store: MemStore, jobs: list[TrainingJob]) -> None:
    samples = samples_of(mem_store, jobs)
    step = training_batches(samples, 8, shared=True)[0]
    slot: dict[int, int] = {}
    inputs: list[np.ndarray] = []
    for s in step:
        if id(s.x) not in slot:
            slot[id(s.x)] = len(inputs)
            inputs.append(s.x)
    assert len(inputs) < len(step)  # something is shared
    index = torch.tensor([slot[id(s.x)] for s in step])
    model = init_model(0)
    dev = torch.device("cpu")
    model.zero_grad()
    lg, cd, pv = model.forward_all(torch.from_numpy(np.stack(inputs)))
    shared = compute_losses(lg[index], cd[index], pv[index], TargetBatch.stack([target(s) for s in step]), dev)
    shared["loss"].backward()  # type: ignore[no-untyped-call]
    g_shared = grads(model)

    n_candle = sum(s.trigger == "CANDLE" for s in step)
    n_pivot = len(step) - n_candle
    model.zero_grad()
    total = torch.zeros(())
    for s in step:  # one forward pass per job, its loss weighted by its trigger's share of the step
        one = compute_losses(*model.forward_all(torch.from_numpy(s.x[None])), TargetBatch.stack([target(s)]), dev)
        if s.trigger == "PIVOT":
            assert float(one["loss"].detach()) == pytest.approx(PIVOT_LOSS_WEIGHT * float(one["pivot_loss"].detach()))
        loss = one["loss"] / (n_candle if s.trigger == "CANDLE" else n_pivot)
        loss.backward()  # type: ignore[no-untyped-call]
        total = total + loss.detach()
    assert float(shared["loss"].detach()) == pytest.approx(float(total), rel=1e-5)
    for a, b in zip(g_shared, grads(model), strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    assert max(float(g.abs().max()) for g in g_shared) > 0


def test_the_adapters_shared_step_equals_the_step_on_inputs_repeated_per_job(
        mem_store: MemStore, jobs: list[TrainingJob]) -> None:
    samples = samples_of(mem_store, jobs)
    steps = [s for s in training_batches(samples, 8, shared=True) if len({x.trigger for x in s}) == 2][:3]
    a = TorchAdapter.create(0, "cpu")
    b = TorchAdapter.from_model(copy.deepcopy(a.model))
    for step in steps:
        out = a.train_shared([s.example for s in step])
        ref_stats, logits = training_step(b.model, b.optimizer, np.stack([s.x for s in step]),
                                          TargetBatch.stack([target(s) for s in step]), "cpu")
        for k in ("loss", "action_loss", "pivot_loss"):
            assert out[k] == pytest.approx(ref_stats[k], rel=1e-5)
        is_candle = np.array([s.trigger == "CANDLE" for s in step])
        assert np.allclose(a.calib_logits[-int(is_candle.sum()):], logits[is_candle], atol=1e-5)
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.allclose(pa, pb, rtol=1e-4, atol=1e-6)
    assert not torch.equal(next(a.model.parameters()), next(init_model(0).parameters()))  # it trained
