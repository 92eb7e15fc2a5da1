"""From consumed training jobs to training batches: validate each job, fetch and verify its window,
rebuild the exact model input with the ref's norm_params, build its target, and group the samples
into optimiser steps.

Why each rule:

* A TrainingJob is not validated by the serde (reftrain.serde validates Candle, Pivot and
  InferenceRef only), so the trainer checks the embedded records itself with reftrain.validation
  and checks that the outcome belongs to the ref (same series; a CANDLE job's candle is the ref's
  target candle). A job breaking any rule would train the model on a wrong target: it is rejected
  with a reason and dead-lettered instead.
* The input is ``adapter.features(window, ref.norm_params)`` on the verified window: the statistics
  are never recomputed, so the model trains on the very input inference saw. A ref of another
  feature scheme than the running adapter's is rejected (``scheme_mismatch``), never trained.
* Labels come from ``reftrain.labels`` (the one rule the report and backtest score with), computed
  here from the verified window, so every adapter learns the same targets.
* A step only ever holds jobs of ONE model key (a step updates one model), of one trigger
  (``train_candle`` / ``train_pivot``) and of one window length (inputs are stacked); within a model,
  jobs keep their offset order, so a replay of the same partition produces the same steps.
* Shared passes (``TRAINER_SHARED_PASS``, #16): a ref yields ~3.4 jobs (one CANDLE, several PIVOT)
  on one window. ``prepare`` builds the input once per ref (the jobs of one ref get the SAME array)
  and ``training_batches(shared=True)`` keeps all jobs of a ref in one step of both triggers, so the
  adapter's ``train_shared`` forwards each window once (multi-head loss = the CANDLE step's loss +
  the PIVOT step's loss of the same jobs).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from reftrain import labels, validation
from reftrain.adapters import CandleExample, PivotExample, TrainingAdapter
from reftrain.errors import InvalidRecordError, WindowMismatchError
from reftrain.records import TrainingJob
from reftrain.window import Window
from services.trainer.windows import FetchStats, WindowFetcher, WindowRequest


@dataclass(frozen=True)
class PendingJob:
    """A decoded job and where it came from."""

    partition: int
    offset: int
    job: TrainingJob


@dataclass(frozen=True, eq=False)
class Sample:
    """One verified, ready-to-train job."""

    partition: int
    offset: int
    job_id: str
    model_key: str
    trigger: str
    example: CandleExample | PivotExample

    @property
    def x(self) -> npt.NDArray[np.float32]:
        return self.example.x


@dataclass(frozen=True)
class Rejection:
    """A job that never trains; ``error.reason`` names why (counter label and DLQ header)."""

    partition: int
    offset: int
    error: Exception

    @property
    def reason(self) -> str:
        return str(getattr(self.error, "reason", type(self.error).__name__))


def check_job(job: TrainingJob) -> None:
    """Raise ``InvalidRecordError(reason)`` unless the job is trainable as far as its own fields go."""
    ref = job["ref"]
    validation.validate_inference_ref(dict(ref))
    if job["model_key"] != ref["model_key"]:
        raise InvalidRecordError("model_key_mismatch", f"job {job['model_key']!r} != ref {ref['model_key']!r}")
    series = (ref["symbol"], ref["timeframe"])
    if job["trigger"] == "CANDLE":
        candle = job["actual_candle"]
        if candle is None:
            raise InvalidRecordError("missing_outcome", "CANDLE job without actual_candle")
        validation.validate_candle(dict(candle))
        if (candle["symbol"], candle["timeframe"]) != series or candle["open_time"] != ref["target_timestamp"]:
            raise InvalidRecordError("target_mismatch", f"candle {candle['symbol']}:{candle['timeframe']}@"
                                                        f"{candle['open_time']} is not the ref's target "
                                                        f"{series[0]}:{series[1]}@{ref['target_timestamp']}")
    elif job["trigger"] == "PIVOT":
        pivot = job["pivot"]
        if pivot is None:
            raise InvalidRecordError("missing_outcome", "PIVOT job without pivot")
        validation.validate_pivot(dict(pivot))
        if (pivot["symbol"], pivot["timeframe"]) != series:
            raise InvalidRecordError("target_mismatch", f"pivot of {pivot['symbol']}:{pivot['timeframe']} "
                                                        f"for a ref of {series[0]}:{series[1]}")
    else:
        raise InvalidRecordError("bad_trigger", repr(job["trigger"]))


def prepare(jobs: Sequence[PendingJob], fetcher: WindowFetcher,
            adapter: TrainingAdapter) -> tuple[list[Sample], list[Rejection], FetchStats]:
    """Samples of the trainable jobs and rejections of the others, in input order.

    The windows of every job that passes ``check_job`` are fetched in one pass. A PIVOT job whose
    pivot is below ``labels.MIN_PIVOT_LEVEL`` is neither a sample nor a rejection (it teaches nothing)."""
    rejections: list[Rejection] = []
    valid: list[PendingJob] = []
    for p in jobs:
        try:
            check_job(p.job)
            scheme = p.job["ref"]["norm_params"]["scheme"]
            if scheme != adapter.scheme:
                raise InvalidRecordError("scheme_mismatch", f"ref made with feature scheme {scheme!r}; this trainer "
                                                            f"runs {type(adapter).name!r} with {adapter.scheme!r}")
            valid.append(p)
        except InvalidRecordError as exc:
            rejections.append(Rejection(p.partition, p.offset, exc))
        except (KeyError, TypeError) as exc:  # a field of the wrong shape: the job is unusable as sent
            rejections.append(Rejection(p.partition, p.offset, InvalidRecordError("malformed_job", repr(exc))))
    windows, stats = fetcher.fetch([WindowRequest.from_ref(p.job["ref"]) for p in valid])
    samples: list[Sample] = []
    inputs: dict[str, npt.NDArray[np.float32]] = {}  # the ref -> its input: one array per ref
    for p, window in zip(valid, windows, strict=True):
        if isinstance(window, WindowMismatchError):
            rejections.append(Rejection(p.partition, p.offset, window))
            continue
        job = p.job
        try:
            ref = job["ref"]  # same ref = same id, range, checksum AND params (a job may carry others)
            same = json.dumps([ref["inference_id"], ref["data_range_start"], ref["data_range_end"],
                               ref["window_checksum"], ref["norm_params"]], sort_keys=True, default=str)
            x = inputs.get(same)
            if x is None:
                x = inputs[same] = adapter.features(window, ref["norm_params"])
        except ValueError as exc:  # other scheme, malformed, or params of another window
            rejections.append(Rejection(p.partition, p.offset, InvalidRecordError("bad_norm_params", str(exc))))
            continue
        try:
            example = job_example(job, window, x)
        except ValueError as exc:
            rejections.append(Rejection(p.partition, p.offset, InvalidRecordError("bad_target", str(exc))))
            continue
        if example is not None:
            samples.append(Sample(p.partition, p.offset, job["job_id"], job["model_key"], job["trigger"], example))
    rejections.sort(key=lambda r: (r.partition, r.offset))
    return samples, rejections, stats


def job_example(job: TrainingJob, window: Window, x: npt.NDArray[np.float32]) -> CandleExample | PivotExample | None:
    """The adapter's example of a job, labelled with ``reftrain.labels`` on the verified window."""
    ref = job["ref"]
    if job["trigger"] == "CANDLE":
        candle = job["actual_candle"]
        if candle is None:
            raise ValueError("CANDLE job without actual_candle")
        closes = np.asarray(window.values, dtype=np.float64)[:, 3]
        action = labels.action_label(float(closes[-1]), float(candle["close"]), labels.window_vol(closes))
        return CandleExample(job["job_id"], x, ref["norm_params"], candle, labels.ACTION_INDEX[action])
    pivot = job["pivot"]
    if pivot is None:
        raise ValueError("PIVOT job without pivot")
    label = labels.pivot_label(int(ref["data_range_end"]), pivot)
    if label is None:
        return None
    return PivotExample(job["job_id"], x, ref["norm_params"], pivot, labels.PIVOT_INDEX[label])


def training_batches(samples: Sequence[Sample], batch: int, shared: bool = False) -> list[list[Sample]]:
    """Optimiser steps: per (model key, trigger, input shape), consecutive chunks of at most ``batch``
    samples in offset order. Models appear in the order of their first sample.

    ``shared``: per (model key, input shape), both triggers together; the jobs of one input (one
    ref) are never split across steps, refs in the order of their first job, at most ``batch``
    distinct inputs per step. ``batch`` then counts forward-pass rows, the unit a step's time and
    memory scale with, so a step trains ~3.4x ``batch`` jobs for the cost of ``batch`` windows: with
    ``batch`` jobs per step the pass would shrink to ~``batch``/3.4 rows and a GRU step on CPU costs
    nearly as much for 9 rows as for 32 (measured: 1.5x instead of >2x samples/s)."""
    if batch < 1:
        raise ValueError("batch must be >= 1")
    if shared:
        return _shared_batches(samples, batch)
    groups: dict[tuple[str, str, tuple[int, ...]], list[Sample]] = {}
    for s in sorted(samples, key=lambda s: (s.partition, s.offset)):
        groups.setdefault((s.model_key, s.trigger, tuple(s.x.shape)), []).append(s)
    out: list[list[Sample]] = []
    for group in groups.values():
        out.extend(group[i:i + batch] for i in range(0, len(group), batch))
    return out


def _shared_batches(samples: Sequence[Sample], batch: int) -> list[list[Sample]]:
    groups: dict[tuple[str, tuple[int, ...]], dict[int, list[Sample]]] = {}
    for s in sorted(samples, key=lambda s: (s.partition, s.offset)):
        groups.setdefault((s.model_key, tuple(s.x.shape)), {}).setdefault(id(s.x), []).append(s)
    out: list[list[Sample]] = []
    for refs in groups.values():
        ref_jobs = list(refs.values())
        out.extend([s for jobs in ref_jobs[i:i + batch] for s in jobs] for i in range(0, len(ref_jobs), batch))
    return out


def describe(job: TrainingJob) -> dict[str, Any]:
    """A few fields of a job for log lines."""
    return {"job_id": job.get("job_id"), "model_key": job.get("model_key"), "trigger": job.get("trigger")}
