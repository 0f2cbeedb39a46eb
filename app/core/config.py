"""The service's settings: one class, read from ``TUNER_*`` environment variables (and ``.env``)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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
    # --- security (issue 13): API keys, tenants, quotas, hosts; see README "Security" ---------------------
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default=["localhost", "127.0.0.1", "::1", "[::1]", "testserver"],
        description="Host header values accepted (TrustedHostMiddleware); comma-separated; '*' = any")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default=[], description="origins allowed by CORS (comma-separated); none: no CORS headers at all")
    require_keys: bool = Field(default=False, description="refuse every request (401) while no API key exists")
    admin_key: str | None = Field(default=None, description="`tuner keys bootstrap` stores this admin key")
    auth_cache_s: float = Field(default=3.0, ge=0, description="how long key look-ups are cached, seconds")
    quota_active_jobs: int = Field(default=100, ge=1, description="queued+running jobs per tenant")
    quota_queued_trials: int = Field(default=100_000, ge=1, description="trials not yet started per tenant")
    quota_upload_mb: float = Field(default=10_240, gt=0, description="upload bytes stored per tenant, MiB")
    quota_retry_after_s: int = Field(default=30, ge=1, description="Retry-After of a 429 (quota)")

    @field_validator("allowed_hosts", "cors_origins", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @property
    def quota_upload_bytes(self) -> int:
        return int(self.quota_upload_mb * 1024 * 1024)
    # --- end of security settings ------------------------------------------------------------------------

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
