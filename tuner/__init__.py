"""tuneserve's tuning engine: Optuna studies over PyTorch MLPs/CNNs, usable without the service."""

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
