"""Settings of the inference service (environment ``INFERENCE_*``), validated at start-up so a bad
value stops the service with a clear message instead of producing refs the trainer cannot use."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reftrain import settings
from reftrain.errors import ConfigError
from reftrain.records import split_series


@dataclass(frozen=True)
class InferenceSettings:
    """Environment ``INFERENCE_<FIELD>``:

    * ``window``: candles (rows) per model input; a ref's ``window_size`` (docs/semantics.md, Records: 600).
    * ``horizon``: bars from the inference time to ``target_timestamp`` (1 = the next candle).
    * ``device``: torch device ('cpu', 'cuda', 'cuda:1'); empty = CUDA when available, else CPU.
    * ``torch_threads``: intra-op threads. 1 by default: on a small shared box extra threads spin
      against each other and make inference slower, not faster (measured in tests/unit/model).
    * ``series``: comma-separated series this instance predicts (``BTCUSDT:1m,ETHUSDT:1m``);
      empty = every series of the assigned partitions.
    * ``batch_size``: Kafka messages per transaction at most (also the largest predict batch of one
      transaction, since every candle of a transaction is predicted in one pass).
    * ``max_predict_batch``: windows per forward pass (bounds memory; larger batches are chunked).
    """

    window: int = 600
    horizon: int = 1
    device: str = ""
    torch_threads: int = 1
    series: tuple[str, ...] = ()
    batch_size: int = 500
    max_predict_batch: int = 256

    def __post_init__(self) -> None:
        if self.window < 2:
            # compute_norm_params needs two closes for a return scale; one row is no sequence.
            raise ConfigError(f"INFERENCE_WINDOW must be >= 2, got {self.window}")
        if self.horizon < 1:
            raise ConfigError(f"INFERENCE_HORIZON must be >= 1 (no look-ahead: target after the window), "
                              f"got {self.horizon}")
        if self.torch_threads < 1:
            raise ConfigError(f"INFERENCE_TORCH_THREADS must be >= 1, got {self.torch_threads}")
        if self.batch_size < 1 or self.max_predict_batch < 1:
            raise ConfigError("INFERENCE_BATCH_SIZE and INFERENCE_MAX_PREDICT_BATCH must be >= 1")
        for s in self.series:
            try:
                split_series(s)
            except ValueError as exc:
                raise ConfigError(f"INFERENCE_SERIES: {exc}") from exc


def load(environ: Mapping[str, str] | None = None) -> InferenceSettings:
    return settings.load(InferenceSettings, "INFERENCE_", environ)
