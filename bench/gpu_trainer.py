"""Trainer throughput on a GPU: samples/s and GPU utilisation, in under 5 minutes.

Two measurements per batch size, on REAL candles held in memory (no Kafka, no store needed, so it
runs on a bare GPU host with the repo and torch):

* ``step``: ``reftrain.model.training_step`` on pre-built inputs (bfloat16 autocast when
  ``--amp``, inputs copied through pinned memory by ``to_device``): the ceiling of the model.
* ``pipeline``: the trainer's own engine (``TrainerEngine.process``): per consumed pass, windows
  sliced from an in-memory source, row count + checksum verified, ``build_input`` with the refs'
  norm_params, targets, then the steps. The gap to ``step`` is the CPU work per job.

GPU utilisation is sampled every 0.2 s during each measurement (NVML through
``torch.cuda.utilization`` when pynvml is installed, else ``nvidia-smi``); peak memory from
``torch.cuda.max_memory_allocated``.

    python bench/gpu_trainer.py                 # CUDA (fails if there is none), ~3-4 minutes
    python bench/gpu_trainer.py --cpu           # small CPU run that shows the script works (~1-2 min)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ops.fixtures.support import real_candles
from ops.fixtures.trainer import BTC_1M, synth_jobs, window_of
from reftrain.model import build_input, init_model, make_optimizer, training_step
from reftrain.model.training import TargetBatch, job_target
from reftrain.records import TrainingJob
from reftrain.window import Window
from services.trainer.batch import PendingJob
from services.trainer.engine import TrainerEngine
from services.trainer.settings import TrainerSettings

WINDOW = 600
FILES = (BTC_1M, "BTCUSDT-1m-2025-10-29_2025-11-01.csv", "ETHUSDT-1m-2025-09-22_2025-09-25.csv")


class ArraySource:
    """An in-memory stand-in for the store's batched read (the bench host has no catalog)."""

    def __init__(self, windows: dict[tuple[str, str], Window]) -> None:
        self.windows = windows
        self.data_path = tempfile.mkdtemp(prefix="gpu-trainer-")

    def read_ranges(self, requests: Iterable[tuple[str, str, int, int]]) -> dict[tuple[str, str], Window]:
        spans: dict[tuple[str, str], tuple[int, int]] = {}
        for symbol, tf, start, end in requests:
            lo, hi = spans.get((symbol, tf), (start, end))
            spans[(symbol, tf)] = (min(lo, start), max(hi, end))
        return {k: self.windows[k].slice_range(lo, hi) for k, (lo, hi) in spans.items()}

    def record_model_version(self, *args: object, **kwargs: object) -> None:
        return None

    def latest_model_version(self, model_key: str) -> None:
        return None


class UtilSampler:
    """Samples GPU utilisation (percent) in a background thread."""

    def __init__(self, device: torch.device, period: float = 0.2) -> None:
        self.device, self.period = device, period
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> float | None:
        try:
            return float(torch.cuda.utilization(self.device))
        except Exception:
            pass
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                  "-i", str(self.device.index or 0)], capture_output=True, text=True, timeout=5)
            return float(out.stdout.strip().splitlines()[0])
        except Exception:
            return None

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            v = self._read()
            if v is not None:
                self.samples.append(v)

    def __enter__(self) -> UtilSampler:
        if self.device.type == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def summary(self) -> str:
        if self.device.type != "cuda":
            return "gpu util n/a (CPU)"
        if not self.samples:
            return "gpu util unavailable (no NVML / nvidia-smi)"
        return f"gpu util mean {statistics.fmean(self.samples):.0f}% max {max(self.samples):.0f}%"


def build_jobs(n_per_file: int, window: int) -> tuple[list[TrainingJob], dict[tuple[str, str], Window]]:
    jobs: list[TrainingJob] = []
    windows: dict[tuple[str, str], Window] = {}
    for i, f in enumerate(FILES):
        candles = real_candles(f, limit=window + n_per_file + 1)
        if i == 1:  # the second BTC file is another period: give it its own model key / series name
            candles = [{**c, "symbol": "BTCUSDT2"} for c in candles]
        windows[(candles[0]["symbol"], candles[0]["timeframe"])] = window_of(candles)
        jobs.extend(j for j in synth_jobs(candles, window, max_pivot_jobs=0) if j["trigger"] == "CANDLE")
    return jobs, windows


def measure_step(device: torch.device, x_all: np.ndarray, targets: list, batch: int, seconds: float,
                 amp: bool) -> tuple[float, str]:
    model = init_model().to(device)
    opt = make_optimizer(model)
    n_all = x_all.shape[0]
    order = np.arange(n_all)

    def step(i: int) -> None:
        idx = order[(i * batch) % n_all:(i * batch) % n_all + batch]
        if len(idx) < batch:
            idx = order[:batch]
        training_step(model, opt, x_all[idx], TargetBatch.stack([targets[k] for k in idx]), device, amp=amp)

    for i in range(3):  # warm-up (kernels, allocator, autocast caches)
        step(i)
    sync(device)
    done, i = 0, 0
    with UtilSampler(device) as util:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            step(i)
            done += batch
            i += 1
        sync(device)
        rate = done / (time.perf_counter() - t0)
    return rate, util.summary()


def measure_pipeline(device: torch.device, jobs: list[TrainingJob], source: ArraySource, batch: int, fetch: int,
                     seconds: float, amp: bool) -> tuple[float, str]:
    settings = TrainerSettings(batch=batch, fetch_jobs=fetch, device=str(device), amp=amp, torch_threads=0)
    engine = TrainerEngine(source, settings, group="bench", topic="bench", publish=lambda v: None, device=device)
    engine.assign(0)
    offset = 0
    done = 0

    def one_pass() -> int:
        nonlocal offset
        part = [PendingJob(0, offset + k, jobs[(offset + k) % len(jobs)]) for k in range(fetch)]
        offset += fetch
        rejected = engine.process(part)
        assert not rejected, rejected[:3]
        return len(part)

    one_pass()  # warm-up
    sync(device)
    with UtilSampler(device) as util:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            done += one_pass()
        sync(device)
        rate = done / (time.perf_counter() - t0)
    return rate, util.summary()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="run small on CPU (to show the script works)")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (default 64,256,1024; CPU 16,32)")
    ap.add_argument("--seconds", type=float, default=None, help="per measurement (default 25; CPU 6)")
    ap.add_argument("--jobs-per-file", type=int, default=None, help="default 3000 (CPU 200)")
    ap.add_argument("--fetch", type=int, default=None, help="jobs per pipeline pass (default 2048; CPU 64)")
    ap.add_argument("--no-amp", action="store_true", help="float32 instead of bfloat16 autocast")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU runs)")
    args = ap.parse_args()
    if args.cpu:
        device = torch.device("cpu")
        torch.set_num_threads(args.threads)
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run with --cpu to check the script on a CPU")
        device = torch.device("cuda")
    batches = [int(b) for b in (args.batches or ("16,32" if args.cpu else "64,256,1024")).split(",")]
    seconds = args.seconds or (6.0 if args.cpu else 25.0)
    per_file = args.jobs_per_file or (200 if args.cpu else 3000)
    fetch = args.fetch or (64 if args.cpu else 2048)
    amp = not args.no_amp and device.type == "cuda"
    started = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name} | torch {torch.__version__} | amp(bf16) {amp} | window {WINDOW} rows | "
          f"{seconds:.0f}s per measurement")
    jobs, windows = build_jobs(per_file, WINDOW)
    source = ArraySource(windows)
    x_all = np.stack([build_input(windows[(j["ref"]["symbol"], j["ref"]["timeframe"])].slice_range(
        j["ref"]["data_range_start"], j["ref"]["data_range_end"]), j["ref"]["norm_params"]) for j in jobs])
    targets = [job_target(j) for j in jobs]  # type: ignore[arg-type]
    print(f"{len(jobs)} real CANDLE jobs from {len(FILES)} files; inputs {x_all.nbytes / 2**20:.0f} MiB "
          f"(prepared in {time.perf_counter() - started:.1f}s)")
    for batch in batches:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rate, util = measure_step(device, x_all, targets, batch, seconds, amp)
        mem = f" | peak mem {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB" if device.type == "cuda" else ""
        print(f"step      batch {batch:5d}: {rate:10,.0f} samples/s | {util}{mem}")
        rate, util = measure_pipeline(device, jobs, source, batch, max(fetch, batch), seconds, amp)
        print(f"pipeline  batch {batch:5d}: {rate:10,.0f} samples/s | {util} "
              f"(engine: verify + build_input + targets + steps, {max(fetch, batch)} jobs per pass)")
    print(f"total {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
