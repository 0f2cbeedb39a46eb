"""The service's settings: one class, read from ``TUNER_*`` environment variables (and ``.env``)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    """Shared by the API, the workers and ``migrations/env.py``."""

    model_config = SettingsConfigDict(env_prefix="TUNER_", env_file=".env", extra="ignore")

    database_url: str = Field(default="sqlite:///./data/tuner.db", description="SQLAlchemy URL (SQLite or Postgres)")
    artifacts_dir: Path = Path("./data/artifacts")
    uploads_dir: Path = Path("./data/uploads")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    embedded_workers: int = Field(default=1, ge=0, description="worker processes started by `tuner serve`")
    worker_concurrency: int = Field(default=1, ge=1, description="processes started by `tuner worker`")
    max_upload_mb: float = Field(default=100, gt=0)
    heartbeat_interval: int = Field(default=10, ge=1, description="Optuna trial heartbeat, seconds")
    grace_period: int = Field(default=30, ge=1, description="a trial without heartbeat this long is stale")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int | None = Field(default=None, ge=1, description="default: cores / worker processes")
    poll_interval_s: float = Field(default=0.5, gt=0, description="how often an idle worker looks for work")
    predict_max_rows: int = Field(default=10_000, ge=1, description="rows per POST /jobs/{id}/predict request")

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def threads_for(self, processes: int) -> int:
        """torch threads per worker process so ``processes`` workers do not oversubscribe the cores."""
        if self.torch_threads is not None:
            return self.torch_threads
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
        return max(1, cores // max(1, processes))


@lru_cache
def get_settings() -> Settings:
    return Settings()
