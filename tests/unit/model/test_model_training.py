"""Loss (masked heads), determinism, and learning on real BTCUSDT 1m candles."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reftrain import labels
from reftrain.model import (
    SampleTarget,
    TargetBatch,
    build_input,
    candle_logrets,
    compute_norm_params,
    evaluate,
    init_model,
    make_optimizer,
    set_determinism,
    training_step,
)
from reftrain.model.training import PIVOT_LOSS_WEIGHT, compute_losses
from reftrain.records import NormParams
from reftrain.window import Window

N = 600


def _sample(w: Window, t: int, n: int = N) -> tuple[np.ndarray, NormParams]:
    """Input and params of the window of the ``n`` candles before candle ``t`` (its target)."""
    win = Window(w.symbol, w.timeframe, w.open_time[t - n : t], w.values[t - n : t])
    prev = float(w.values[t - n - 1, 3]) if t - n >= 1 else None
    params = compute_norm_params(win, prev_close=prev)
    return build_input(win, params), params


def _candle(w: Window, t: int) -> dict[str, float]:
    return dict(zip(("open", "high", "low", "close"), map(float, w.values[t, :4]), strict=True))


def candle_target(params: NormParams, candle: dict[str, float]) -> SampleTarget:
    """CANDLE target as the trainer builds it: label from reftrain.labels, candle in ret_scale units."""
    p = params["params"]
    action = labels.action_label(p["last_close"], candle["close"], p["ret_scale"])
    z = candle_logrets(params, candle["open"], candle["high"], candle["low"], candle["close"])
    return SampleTarget(action=labels.ACTION_INDEX[action], candle=z.astype(np.float32))


def _dataset(w: Window, ts: np.ndarray) -> tuple[np.ndarray, list[SampleTarget]]:
    xs, targets = [], []
    for t in ts:
        x, params = _sample(w, int(t))
        xs.append(x)
        targets.append(candle_target(params, _candle(w, int(t))))
    return np.stack(xs), targets


def test_each_head_is_a_mean_over_its_own_samples_and_pivots_never_touch_the_action_head() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    candle = torch.tensor([[0.1, 0.5, -0.5, 0.2], [9.0, 9.0, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0]])
    pivot = torch.tensor([[5.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 2.0]])
    cand_t = np.array([0.0, 0.6, -0.4, 0.1], dtype=np.float32)
    batch = TargetBatch.stack([SampleTarget(action=0, candle=cand_t), SampleTarget(pivot=1), SampleTarget(pivot=2)])
    assert batch.candle_mask.tolist() == [1.0, 0.0, 0.0]
    assert batch.action_mask.tolist() == [1.0, 0.0, 0.0]
    assert batch.pivot_mask.tolist() == [0.0, 1.0, 1.0]
    out = compute_losses(logits, candle, pivot, batch, torch.device("cpu"))
    ce = torch.nn.functional.cross_entropy(logits[:1], torch.tensor([0]))
    assert float(out["action_loss"]) == pytest.approx(float(ce), rel=1e-6)  # the pivot rows do not count
    assert float(out["candle_loss"]) == pytest.approx(0.5 * 0.1**2, rel=1e-5)  # Huber, |err| = 0.1 < 1
    pce = torch.nn.functional.cross_entropy(pivot[1:], torch.tensor([1, 2]))
    assert float(out["pivot_loss"]) == pytest.approx(float(pce), rel=1e-6)
    assert float(out["loss"]) == pytest.approx(
        float(out["action_loss"]) + float(out["candle_loss"]) + PIVOT_LOSS_WEIGHT * float(pce), rel=1e-6)
    pivots_only = TargetBatch.stack([SampleTarget(pivot=0)])
    zero = compute_losses(logits[:1], candle[:1], pivot[:1], pivots_only, torch.device("cpu"))
    assert float(zero["action_loss"]) == 0.0 and float(zero["candle_loss"]) == 0.0


def _train(
    x: np.ndarray, batch: TargetBatch, steps: int, amp: bool = False, strict: bool = False
) -> dict[str, torch.Tensor]:
    set_determinism(7, "cpu", strict=strict)
    model = init_model(0)
    opt = make_optimizer(model)
    for _ in range(steps):
        training_step(model, opt, x, batch, "cpu", amp=amp)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_training_is_deterministic_on_cpu(btc_1m: Window) -> None:
    x, targets = _dataset(btc_1m, np.array([700, 1500, 2300, 3100]))
    targets[1] = SampleTarget(pivot=labels.PIVOT_INDEX["FUTURE_LOW"])
    batch = TargetBatch.stack(targets)
    a = _train(x, batch, 4)
    b = _train(x, batch, 4)
    c = _train(x, batch, 4, amp=True)  # amp is a no-op on CPU
    d = _train(x, batch, 4, strict=True)  # torch's deterministic kernels change nothing here
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert all(torch.equal(a[k], d[k]) for k in a)
    assert any(not torch.equal(a[k], init_model(0).state_dict()[k]) for k in a)


def test_training_step_rejects_misaligned_batches(btc_1m: Window) -> None:
    x, targets = _dataset(btc_1m, np.array([700, 800]))
    model = init_model(0)
    with pytest.raises(ValueError):
        training_step(model, make_optimizer(model), x, TargetBatch.stack(targets[:1]), "cpu")


def test_loss_falls_on_real_btcusdt_1m_and_report_held_out_accuracy(btc_1m: Window) -> None:
    """Train on the first 70% of targets (by time), evaluate on the last 30%.

    Asserted: the training objective falls (on a fixed training subset) and the held-out loss falls.
    Only reported: action and direction accuracy, which for 1-minute BTC are near chance.
    """
    steps, bsz = 150, 32
    n = len(btc_1m)
    split = N + int(0.7 * (n - N))
    rng = np.random.default_rng(0)
    train_ts = np.arange(N + 1, split)
    test_ts = np.arange(split, n)
    x_test, t_test = _dataset(btc_1m, test_ts)
    probe_ts = rng.choice(train_ts, 256, replace=False)
    x_probe, t_probe = _dataset(btc_1m, probe_ts)
    x_train, t_train = _dataset(btc_1m, train_ts)
    test_batch, probe_batch = TargetBatch.stack(t_test), TargetBatch.stack(t_probe)

    set_determinism(0)
    model = init_model(0)
    opt = make_optimizer(model)
    v0_test = evaluate(model, x_test, test_batch, "cpu")
    v0_probe = evaluate(model, x_probe, probe_batch, "cpu")
    losses = []
    for _ in range(steps):
        idx = rng.choice(len(train_ts), bsz, replace=False)
        batch = TargetBatch.stack([t_train[i] for i in idx])
        losses.append(training_step(model, opt, x_train[idx], batch, "cpu")[0])
    tr_test = evaluate(model, x_test, test_batch, "cpu")
    tr_probe = evaluate(model, x_probe, probe_batch, "cpu")

    shares = np.bincount(test_batch.action, minlength=3) / len(test_batch)
    # Constant baseline fitted on the training targets: class prior logits and the mean candle.
    train_batch = TargetBatch.stack(t_train)
    prior = np.bincount(train_batch.action, minlength=3) / len(train_batch)
    const_logits = torch.tensor(np.log(prior), dtype=torch.float32).repeat(len(test_batch), 1)
    const_candle = torch.tensor(train_batch.candle.mean(axis=0)).repeat(len(test_batch), 1)
    const = compute_losses(const_logits, const_candle, torch.zeros(len(test_batch), 3), test_batch,
                           torch.device("cpu"))
    const_action, const_cand = const["action_loss"], const["candle_loss"]
    first = np.mean([m["loss"] for m in losses[:20]])
    last = np.mean([m["loss"] for m in losses[-20:]])
    print(
        f"\n[model] BTCUSDT 1m: {len(train_ts)} train / {len(test_ts)} held-out targets,"
        f" {steps} steps x {bsz}"
        f"\n[model] step loss first20={first:.4f} last20={last:.4f}"
        f"\n[model] train-probe loss v0={v0_probe['loss']:.4f} trained={tr_probe['loss']:.4f}"
        f"\n[model] held-out loss v0={v0_test['loss']:.4f} trained={tr_test['loss']:.4f}"
        f" (action {v0_test['action_loss']:.4f}->{tr_test['action_loss']:.4f},"
        f" candle {v0_test['candle_loss']:.4f}->{tr_test['candle_loss']:.4f})"
        f"\n[model] held-out constant baseline: action {float(const_action):.4f},"
        f" candle {float(const_cand):.4f}"
        f"\n[model] held-out action acc v0={v0_test['action_acc']:.3f} trained={tr_test['action_acc']:.3f}"
        f" (class shares BUY/SELL/HOLD {shares[0]:.3f}/{shares[1]:.3f}/{shares[2]:.3f},"
        f" majority={shares.max():.3f})"
        f"\n[model] held-out close-direction acc v0={v0_test['direction_acc']:.3f}"
        f" trained={tr_test['direction_acc']:.3f} (chance 0.5)"
    )
    assert tr_probe["loss"] < v0_probe["loss"]
    assert last < first
    assert tr_test["loss"] < v0_test["loss"]
