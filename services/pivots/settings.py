"""Settings of the pivots service (environment ``PIVOTS_*``), validated at start-up so a bad value
stops the service with a clear message instead of producing wrong pivots."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reftrain import settings
from reftrain.errors import ConfigError
from services.pivots.detector import DEFAULT_STRENGTHS, validate_strengths


@dataclass(frozen=True)
class PivotSettings:
    """``PIVOTS_STRENGTHS="2,2,2,2,2"``: neighbours on each side per level (index 0 = L1; the number of
    values is the number of levels). ``PIVOTS_BATCH_SIZE``: candles per Kafka transaction at most."""

    strengths: tuple[int, ...] = DEFAULT_STRENGTHS
    batch_size: int = 500

    def __post_init__(self) -> None:
        try:
            validate_strengths(self.strengths)
        except ValueError as exc:
            raise ConfigError(f"PIVOTS_STRENGTHS: {exc}") from exc
        if self.batch_size < 1:
            raise ConfigError(f"PIVOTS_BATCH_SIZE must be >= 1, got {self.batch_size}")


def load(environ: Mapping[str, str] | None = None) -> PivotSettings:
    return settings.load(PivotSettings, "PIVOTS_", environ)
