"""Settings of the trainer (environment ``TRAINER_*``), validated at start-up so a bad value stops
the service with a clear message instead of training wrongly."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from reftrain.failpoint import Failpoint
from reftrain.settings import Settings

FAILPOINT_STAGES = ("after_model_files", "after_fence", "after_manifest", "after_rows", "after_publish")
"""Points inside a checkpoint where ``TRAINER_FAILPOINT`` can SIGKILL the process (fault tests)."""


class TrainerSettings(Settings):
    """Knobs of the trainer; each maps to ``TRAINER_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="TRAINER_")

    #: Jobs per optimiser step (per model; a step only ever mixes jobs of one model key).
    batch: int = Field(default=32, ge=1)
    #: One forward pass per ref: the CANDLE and PIVOT jobs of one ref in a batch train in ONE step
    #: (multi-head loss) when the adapter has ``train_shared``; off = one step per trigger (#16).
    #: Shared, ``batch`` counts the distinct windows (forward rows) of a step, not its jobs.
    shared_pass: bool = True
    #: Messages taken per consume call; their windows are fetched from the store in ONE pass.
    fetch_jobs: int = Field(default=256, ge=1)
    #: Checkpoint a partition after this many consumed jobs (trained or rejected) ...
    checkpoint_jobs: int = Field(default=512, ge=1)
    #: ... or when it has unsaved work this many seconds after its last checkpoint (0 = only by count).
    checkpoint_seconds: float = Field(default=30.0, ge=0)
    #: '' = CUDA when available, else CPU; or an explicit torch device ('cpu', 'cuda:1').
    device: str = ""
    #: bfloat16 autocast on CUDA (ignored on CPU).
    amp: bool = True
    #: torch intra-op threads. 1 is fastest on a small shared box (2 threads spin against each other);
    #: raise it on a dedicated many-core CPU host. 0 = leave torch's default.
    torch_threads: int = Field(default=1, ge=0)
    #: AdamW learning rate (reftrain.model.training.DEFAULT_LR).
    lr: float = Field(default=1e-3, gt=0)
    #: Rows of each series kept in the in-memory window cache (consecutive jobs share most rows).
    cache_rows: int = Field(default=50_000, ge=1)
    #: Poll timeout of the runtime (reftrain.streams); bounds how late a time-based checkpoint can be.
    poll_timeout_s: float = Field(default=0.5, gt=0)
    #: torch.use_deterministic_algorithms(True): any non-deterministic op raises (slower GRU backward);
    #: on CUDA also deterministic cuDNN/cuBLAS kernels (off by default: they cost throughput).
    strict_determinism: bool = False
    #: Fault tests only: '<stage>:<n>' SIGKILLs the process the n-th time a checkpoint reaches
    #: <stage> (one of FAILPOINT_STAGES). Empty = off.
    failpoint: str = ""

    @field_validator("failpoint")
    @classmethod
    def _failpoint(cls, spec: str) -> str:
        Failpoint(spec, FAILPOINT_STAGES, "TRAINER_FAILPOINT")  # refuses a malformed one now (ConfigError)
        return spec


def load(environ: Mapping[str, str] | None = None) -> TrainerSettings:
    return TrainerSettings.from_env(environ)
