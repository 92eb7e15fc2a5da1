"""From consumed training jobs to training batches: validate each job, fetch and verify its window,
rebuild the exact model input with the ref's norm_params, build its target, and group the samples
into optimiser steps.

Why each rule:

* A TrainingJob is not validated by the serde (reftrain.serde validates Candle, Pivot and
  InferenceRef only), so the trainer checks the embedded records itself with reftrain.validation
  and checks that the outcome belongs to the ref (same series; a CANDLE job's candle is the ref's
  target candle). A job breaking any rule would train the model on a wrong target: it is rejected
  with a reason and dead-lettered instead.
* The input is ``build_input(window, ref.norm_params)`` on the verified window: the statistics are
  never recomputed, so the model trains on the very input inference saw.
* A step only ever holds jobs of ONE model key (a step updates one model) and of one window length
  (inputs are stacked); within a model, jobs keep their offset order, so a replay of the same
  partition produces the same steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from reftrain import validation
from reftrain.errors import InvalidRecordError, WindowMismatchError
from reftrain.model import build_input
from reftrain.model.training import SampleTarget, TargetBatch, job_target
from reftrain.records import TrainingJob
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
    x: npt.NDArray[np.float32]
    target: SampleTarget


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
            threshold: float | None = None) -> tuple[list[Sample], list[Rejection], FetchStats]:
    """Samples of the trainable jobs and rejections of the others, in input order.

    The windows of every job that passes ``check_job`` are fetched in one pass."""
    rejections: list[Rejection] = []
    valid: list[PendingJob] = []
    for p in jobs:
        try:
            check_job(p.job)
            valid.append(p)
        except InvalidRecordError as exc:
            rejections.append(Rejection(p.partition, p.offset, exc))
        except (KeyError, TypeError) as exc:  # a field of the wrong shape: the job is unusable as sent
            rejections.append(Rejection(p.partition, p.offset, InvalidRecordError("malformed_job", repr(exc))))
    windows, stats = fetcher.fetch([WindowRequest.from_ref(p.job["ref"]) for p in valid])
    samples: list[Sample] = []
    for p, window in zip(valid, windows, strict=True):
        if isinstance(window, WindowMismatchError):
            rejections.append(Rejection(p.partition, p.offset, window))
            continue
        job = p.job
        try:
            x = build_input(window, job["ref"]["norm_params"])
        except ValueError as exc:  # other scheme, malformed, or params of another window
            rejections.append(Rejection(p.partition, p.offset, InvalidRecordError("bad_norm_params", str(exc))))
            continue
        try:
            target = job_target(job, threshold)
        except ValueError as exc:
            rejections.append(Rejection(p.partition, p.offset, InvalidRecordError("bad_target", str(exc))))
            continue
        samples.append(Sample(p.partition, p.offset, job["job_id"], job["model_key"], job["trigger"], x, target))
    rejections.sort(key=lambda r: (r.partition, r.offset))
    return samples, rejections, stats


def training_batches(samples: Sequence[Sample], batch: int) -> list[list[Sample]]:
    """Optimiser steps: per (model key, window length), consecutive chunks of at most ``batch``
    samples in offset order. Models appear in the order of their first sample."""
    if batch < 1:
        raise ValueError("batch must be >= 1")
    groups: dict[tuple[str, int], list[Sample]] = {}
    for s in sorted(samples, key=lambda s: (s.partition, s.offset)):
        groups.setdefault((s.model_key, s.x.shape[0]), []).append(s)
    out: list[list[Sample]] = []
    for group in groups.values():
        out.extend(group[i:i + batch] for i in range(0, len(group), batch))
    return out


def stack(samples: Sequence[Sample]) -> tuple[npt.NDArray[np.float32], TargetBatch]:
    """Inputs ``[B, n, F]`` (one contiguous array, ready for a pinned copy) and their targets."""
    x = np.stack([s.x for s in samples]).astype(np.float32, copy=False)
    return x, TargetBatch.stack([s.target for s in samples])


def describe(job: TrainingJob) -> dict[str, Any]:
    """A few fields of a job for log lines."""
    return {"job_id": job.get("job_id"), "model_key": job.get("model_key"), "trigger": job.get("trigger")}
