"""Settings of the pivots service (environment ``PIVOTS_*``), validated at start-up so a bad value
stops the service with a clear message instead of producing wrong pivots."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from reftrain.settings import Settings
from services.pivots.detector import DEFAULT_STRENGTHS, validate_strengths


class PivotSettings(Settings):
    """``PIVOTS_STRENGTHS="2,2,2,2,2"``: neighbours on each side per level (index 0 = L1; the number of
    values is the number of levels). ``PIVOTS_BATCH_SIZE``: candles per Kafka transaction at most."""

    model_config = SettingsConfigDict(env_prefix="PIVOTS_")

    strengths: tuple[int, ...] = DEFAULT_STRENGTHS
    batch_size: int = Field(default=500, ge=1)

    @field_validator("strengths")
    @classmethod
    def _strengths(cls, strengths: tuple[int, ...]) -> tuple[int, ...]:
        return validate_strengths(strengths)  # ValueError: at least one level, each >= 1


def load(environ: Mapping[str, str] | None = None) -> PivotSettings:
    return PivotSettings.from_env(environ)
