"""Settings of the dashboard's history: how far back it reaches, how finely, and where it lives."""

import math
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# 100,000 samples are ~7 MB: more than that is not "the recent past" of a 512 MB service.
MAX_SAMPLES = 100_000


class MonitoringSettings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # The history the dashboard draws on first paint: HISTORY_WINDOW_S / HISTORY_STEP_S samples.
    history_window_s: float = Field(default=3600, gt=0)
    history_step_s: float = Field(default=5, ge=0.1, le=3600)
    # Loads, evictions, refusals, watchdog actions, restarts; repeats in a row are merged into one.
    history_events: int = Field(default=256, ge=16, le=100_000)
    # A directory that outlives the worker (supervise.sh makes one): the history is a memory-mapped
    # file there and survives a recycle. Unset: anonymous memory, gone with the process.
    history_dir: Path | None = None

    @field_validator("history_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def history_samples(self) -> int:
        return math.ceil(self.history_window_s / self.history_step_s)

    @model_validator(mode="after")
    def _bounded(self) -> "MonitoringSettings":
        if self.history_samples > MAX_SAMPLES:
            raise ValueError(
                f"HISTORY_WINDOW_S / HISTORY_STEP_S is {self.history_samples} samples; at most {MAX_SAMPLES}"
            )
        return self


@lru_cache
def get_monitoring_settings() -> MonitoringSettings:
    return MonitoringSettings()
