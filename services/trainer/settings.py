"""Settings of the trainer (environment ``TRAINER_*``), validated at start-up so a bad value stops
the service with a clear message instead of training wrongly."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reftrain import settings
from reftrain.errors import ConfigError
from reftrain.failpoint import Failpoint

FAILPOINT_STAGES = ("after_model_files", "after_fence", "after_manifest", "after_rows", "after_publish")
"""Points inside a checkpoint where ``TRAINER_FAILPOINT`` can SIGKILL the process (fault tests)."""


@dataclass(frozen=True)
class TrainerSettings:
    """Knobs of the trainer; each maps to ``TRAINER_<NAME>``."""

    #: Jobs per optimiser step (per model; a step only ever mixes jobs of one model key).
    batch: int = 32
    #: One forward pass per ref: the CANDLE and PIVOT jobs of one ref in a batch train in ONE step
    #: (multi-head loss) when the adapter has ``train_shared``; off = one step per trigger (#16).
    #: Shared, ``batch`` counts the distinct windows (forward rows) of a step, not its jobs.
    shared_pass: bool = True
    #: Messages taken per consume call; their windows are fetched from the store in ONE pass.
    fetch_jobs: int = 256
    #: Checkpoint a partition after this many consumed jobs (trained or rejected) ...
    checkpoint_jobs: int = 512
    #: ... or when it has unsaved work this many seconds after its last checkpoint (0 = only by count).
    checkpoint_seconds: float = 30.0
    #: '' = CUDA when available, else CPU; or an explicit torch device ('cpu', 'cuda:1').
    device: str = ""
    #: bfloat16 autocast on CUDA (ignored on CPU).
    amp: bool = True
    #: torch intra-op threads. 1 is fastest on a small shared box (2 threads spin against each other);
    #: raise it on a dedicated many-core CPU host. 0 = leave torch's default.
    torch_threads: int = 1
    #: AdamW learning rate (reftrain.model.training.DEFAULT_LR).
    lr: float = 1e-3
    #: Rows of each series kept in the in-memory window cache (consecutive jobs share most rows).
    cache_rows: int = 50_000
    #: Poll timeout of the runtime (reftrain.streams); bounds how late a time-based checkpoint can be.
    poll_timeout_s: float = 0.5
    #: torch.use_deterministic_algorithms(True): any non-deterministic op raises (slower GRU backward);
    #: on CUDA also deterministic cuDNN/cuBLAS kernels (off by default: they cost throughput).
    strict_determinism: bool = False
    #: Fault tests only: '<stage>:<n>' SIGKILLs the process the n-th time a checkpoint reaches
    #: <stage> (one of FAILPOINT_STAGES). Empty = off.
    failpoint: str = ""

    def __post_init__(self) -> None:
        for name in ("batch", "fetch_jobs", "checkpoint_jobs", "cache_rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TRAINER_{name.upper()} must be >= 1, got {getattr(self, name)}")
        if self.checkpoint_seconds < 0:
            raise ConfigError(f"TRAINER_CHECKPOINT_SECONDS must be >= 0, got {self.checkpoint_seconds}")
        if self.torch_threads < 0:
            raise ConfigError(f"TRAINER_TORCH_THREADS must be >= 0, got {self.torch_threads}")
        if not self.lr > 0:
            raise ConfigError(f"TRAINER_LR must be > 0, got {self.lr}")
        if self.poll_timeout_s <= 0:
            raise ConfigError(f"TRAINER_POLL_TIMEOUT_S must be > 0, got {self.poll_timeout_s}")
        Failpoint(self.failpoint, FAILPOINT_STAGES, "TRAINER_FAILPOINT")  # refuses a malformed one now


def load(environ: Mapping[str, str] | None = None) -> TrainerSettings:
    return settings.load(TrainerSettings, "TRAINER_", environ)
