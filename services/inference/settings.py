"""Settings of the inference service (environment ``INFERENCE_*``), validated at start-up so a bad
value stops the service with a clear message instead of producing refs the trainer cannot use."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from reftrain.records import split_series
from reftrain.settings import Settings


class InferenceSettings(Settings):
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

    model_config = SettingsConfigDict(env_prefix="INFERENCE_")

    #: >= 2: compute_norm_params needs two closes for a return scale; one row is no sequence.
    window: int = Field(default=600, ge=2)
    #: >= 1: no look-ahead, the target lies after the window (0 would be the window's own last candle).
    horizon: int = Field(default=1, ge=1)
    device: str = ""
    torch_threads: int = Field(default=1, ge=1)
    series: tuple[str, ...] = ()
    batch_size: int = Field(default=500, ge=1)
    max_predict_batch: int = Field(default=256, ge=1)

    @field_validator("series")
    @classmethod
    def _series_keys(cls, series: tuple[str, ...]) -> tuple[str, ...]:
        for s in series:
            split_series(s)  # ValueError names the malformed key
        return series


def load(environ: Mapping[str, str] | None = None) -> InferenceSettings:
    return InferenceSettings.from_env(environ)
