"""Every size limit of the engine in one place: spec numbers and lists, model size, data size.

The defaults suit one machine with a few GB of memory; the service overrides them from its settings
(``TUNER_MAX_*``) with :func:`configure` at start. A spec or a data file past a limit is refused before
anything is loaded or trained, with a ``field: must be at most N`` reason.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["Limits", "configure", "current"]


@dataclass(frozen=True)
class Limits:
    """Upper bounds checked at the door (spec validation, upload validation, data loading)."""

    # budget / early stopping
    max_timeout_s: float = 7 * 24 * 3600.0
    max_trials: int = 100_000
    max_epochs: int = 10_000
    max_patience: int = 10_000
    # model shape
    max_layers: int = 16
    max_width: int = 65_536
    max_conv_layers: int = 8
    max_channels: int = 1_024
    max_kernel_size: int = 15
    max_input_side: int = 4_096
    # search space
    max_choices: int = 1_000
    max_batch_size: int = 1_000_000
    # sampler / pruner arguments
    max_ei_candidates: int = 10_000
    max_startup_trials: int = 100_000
    max_warmup_steps: int = 100_000
    max_reduction_factor: int = 100
    max_bootstrap_count: int = 1_000
    max_popsize: int = 10_000
    # memory: largest model (parameters x batch size, float32 activations and weights) and the data
    max_model_bytes: int = 4 * 2**30
    max_features: int = 10_000  # input width after one-hot encoding
    max_decompressed_bytes: int = 2 * 2**30  # NPZ arrays / Parquet data as loaded in memory
    max_cells: int = 100_000_000  # rows x columns of a CSV, Parquet or NPZ file
    # search space
    max_dimensions: int = 64  # search dimensions of one job (core, optional and a plugin's own)
    max_grid_points: int = 1_000_000  # the grid sampler's points; also a stepped range's values

    def replace(self, **changes: object) -> Limits:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


_current = Limits()


def configure(limits: Limits) -> None:
    """Set the process-wide limits (the service calls this once at start from its settings)."""
    global _current
    _current = limits


def current() -> Limits:
    """The limits in force in this process."""
    return _current
