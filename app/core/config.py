"""The service's settings: one class, read from ``TUNER_*`` environment variables (and ``.env``)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tuner.limits import Limits

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    """Shared by the API, the workers and ``migrations/env.py``."""

    model_config = SettingsConfigDict(env_prefix="TUNER_", env_file=".env", extra="ignore")

    database_url: str = Field(default="sqlite:///./data/tuner.db", description="SQLAlchemy URL (SQLite or Postgres)")
    artifacts_dir: Path = Path("./data/artifacts")
    uploads_dir: Path = Path("./data/uploads")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    embedded_workers: int = Field(
        default_factory=lambda: _cores(), ge=0, description="worker processes started by `tuner serve` (default: cores)"
    )
    worker_concurrency: int = Field(default=1, ge=1, description="processes started by `tuner worker`")
    max_upload_mb: float = Field(default=100, gt=0)
    heartbeat_interval: int = Field(default=10, ge=1, description="Optuna trial heartbeat, seconds")
    grace_period: int = Field(default=30, ge=1, description="a trial without heartbeat this long is stale")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int | None = Field(default=None, ge=1, description="default: cores / worker processes")
    poll_interval_s: float = Field(default=0.5, gt=0, description="how often an idle worker looks for work")
    # --- robustness (issue 8): failure bounds, worker heartbeats, restarts
    job_max_failures: int = Field(
        default=3, ge=1, description="job-level failures (start, data loading, finalisation) before a job fails"
    )
    worker_heartbeat_s: float = Field(default=5, gt=0, description="how often a worker writes its heartbeat row")
    worker_restart_backoff_s: float = Field(
        default=1, gt=0, description="`tuner serve`: first delay before restarting a dead embedded worker"
    )
    worker_restart_backoff_max_s: float = Field(
        default=60, gt=0, description="`tuner serve`: the restart delay doubles up to this"
    )

    # --- limits (README "Limits"): request bodies, spec numbers and lists, model and data size
    max_json_kb: float = Field(default=256, gt=0, description="request body except uploads (413 beyond)")
    max_timeout_s: float = Field(default=Limits.max_timeout_s, gt=0, allow_inf_nan=False)
    max_trials: int = Field(default=Limits.max_trials, ge=1)
    max_epochs: int = Field(default=Limits.max_epochs, ge=1)
    max_patience: int = Field(default=Limits.max_patience, ge=1)
    max_layers: int = Field(default=Limits.max_layers, ge=1)
    max_width: int = Field(default=Limits.max_width, ge=1)
    max_conv_layers: int = Field(default=Limits.max_conv_layers, ge=1)
    max_channels: int = Field(default=Limits.max_channels, ge=1)
    max_kernel_size: int = Field(default=Limits.max_kernel_size, ge=1)
    max_choices: int = Field(default=Limits.max_choices, ge=1)
    max_batch_size: int = Field(default=Limits.max_batch_size, ge=1)
    max_ei_candidates: int = Field(default=Limits.max_ei_candidates, ge=1)
    max_model_mb: float = Field(default=Limits.max_model_bytes / 2**20, gt=0, description="training memory estimate")
    max_features: int = Field(default=Limits.max_features, ge=1, description="input width after one-hot encoding")
    max_decompressed_mb: float = Field(default=Limits.max_decompressed_bytes / 2**20, gt=0)
    max_cells: int = Field(default=Limits.max_cells, ge=1, description="rows x columns of a data file")

    @property
    def max_json_bytes(self) -> int:
        return int(self.max_json_kb * 1024)

    def limits(self) -> Limits:
        """The engine's limits with this service's overrides."""
        return Limits().replace(
            max_timeout_s=self.max_timeout_s, max_trials=self.max_trials, max_epochs=self.max_epochs,
            max_patience=self.max_patience, max_layers=self.max_layers, max_width=self.max_width,
            max_conv_layers=self.max_conv_layers, max_channels=self.max_channels,
            max_kernel_size=self.max_kernel_size, max_choices=self.max_choices, max_batch_size=self.max_batch_size,
            max_ei_candidates=self.max_ei_candidates, max_model_bytes=int(self.max_model_mb * 2**20),
            max_features=self.max_features, max_decompressed_bytes=int(self.max_decompressed_mb * 2**20),
            max_cells=self.max_cells,
        )
    predict_max_rows: int = Field(default=10_000, ge=1, description="rows per POST /jobs/{id}/predict request")

    # --- security (issue 13): API keys, tenants, quotas, hosts; see README "Security" ---------------------
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default=["localhost", "127.0.0.1", "::1", "[::1]"],
        description="Host header values accepted (TrustedHostMiddleware); comma-separated; '*' = any")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default=[], description="origins allowed by CORS (comma-separated); none: no CORS headers at all")
    require_keys: bool = Field(default=False, description="refuse every request (401) while no API key exists")
    open_when_all_keys_revoked: bool = Field(
        default=False, description="serve anonymous callers again once every key is revoked (default: stay closed)")
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
        return max(1, _cores() // max(1, processes))


def _cores() -> int:
    """The cores this process may use (as ``tuner run --jobs``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@lru_cache
def get_settings() -> Settings:
    return Settings()
