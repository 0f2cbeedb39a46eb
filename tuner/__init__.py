"""tuneserve's tuning engine: Optuna studies over PyTorch MLPs/CNNs, usable without the service."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Heavy modules (torch, scikit-learn, Optuna) load on first use of a name, as Optuna's own _LazyImport does:
# `import tuner.client` and the CLI's --help stay fast (tests/tuner/test_client.py checks it in a subprocess).
_EXPORTS = {
    "LoadedModel": "tuner.artifacts", "load_model": "tuner.artifacts", "save_model": "tuner.artifacts",
    "PreparedData": "tuner.data", "Preprocessor": "tuner.data", "Standardizer": "tuner.data",
    "infer_task": "tuner.data", "load_dataset": "tuner.data", "prepare_data": "tuner.data",
    "split_indices": "tuner.data",
    "StopRequested": "tuner.errors", "TrialConfigError": "tuner.errors",
    "compute_metrics": "tuner.metrics",
    "build_model": "tuner.models", "init_scheme": "tuner.models",
    "Objective": "tuner.objective", "resolve_device": "tuner.objective", "suggest_params": "tuner.objective",
    "TrialCounts": "tuner.runner", "build_result": "tuner.runner", "finalize": "tuner.runner",
    "open_study": "tuner.runner", "optimize": "tuner.runner", "run": "tuner.runner", "trial_counts": "tuner.runner",
    "JobSpec": "tuner.spec", "SpecError": "tuner.spec", "load_spec": "tuner.spec", "parse_spec": "tuner.spec",
    "TrainConfig": "tuner.training", "evaluate": "tuner.training", "fit": "tuner.training",
}

if TYPE_CHECKING:
    from tuner.artifacts import LoadedModel, load_model, save_model
    from tuner.data import (
        PreparedData,
        Preprocessor,
        Standardizer,
        infer_task,
        load_dataset,
        prepare_data,
        split_indices,
    )
    from tuner.errors import StopRequested, TrialConfigError
    from tuner.metrics import compute_metrics
    from tuner.models import build_model, init_scheme
    from tuner.objective import Objective, resolve_device, suggest_params
    from tuner.runner import TrialCounts, build_result, finalize, open_study, optimize, run, trial_counts
    from tuner.spec import JobSpec, SpecError, load_spec, parse_spec
    from tuner.training import TrainConfig, evaluate, fit


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tuner' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "JobSpec",
    "LoadedModel",
    "Objective",
    "PreparedData",
    "Preprocessor",
    "SpecError",
    "Standardizer",
    "StopRequested",
    "TrainConfig",
    "TrialConfigError",
    "TrialCounts",
    "build_model",
    "build_result",
    "compute_metrics",
    "evaluate",
    "finalize",
    "fit",
    "infer_task",
    "init_scheme",
    "load_dataset",
    "load_model",
    "load_spec",
    "open_study",
    "optimize",
    "parse_spec",
    "prepare_data",
    "resolve_device",
    "run",
    "save_model",
    "split_indices",
    "suggest_params",
    "trial_counts",
]
