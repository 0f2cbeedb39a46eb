"""The job spec: one pydantic model shared by the CLI, the API and the worker.

A spec is validated completely before any data is read or any model trained; every error names the
field (dotted path) and the reason, e.g. ``split.validation.k: must be at least 2``.
"""

from __future__ import annotations

import inspect
import json
import math
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import optuna
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "BUILTIN_DATASETS",
    "CORE_HYPERPARAMETERS",
    "METRIC_DIRECTIONS",
    "DatasetSpec",
    "JobSpec",
    "ParamSpec",
    "SpecError",
    "error_reason",
    "format_validation_error",
    "load_spec",
    "parse_spec",
]

Task = Literal["classification", "regression"]
BUILTIN_DATASETS: dict[str, Task] = {
    "digits": "classification",
    "iris": "classification",
    "wine": "classification",
    "breast_cancer": "classification",
    "diabetes": "regression",
}

# Objective name -> (direction, tasks it applies to).
METRIC_DIRECTIONS: dict[str, tuple[Literal["minimize", "maximize"], tuple[Task, ...]]] = {
    "val_loss": ("minimize", ("classification", "regression")),
    "accuracy": ("maximize", ("classification",)),
    "f1_macro": ("maximize", ("classification",)),
    "roc_auc": ("maximize", ("classification",)),
    "mae": ("minimize", ("regression",)),
    "mse": ("minimize", ("regression",)),
    "r2": ("maximize", ("regression",)),
}

OPTIMIZERS = ("adam", "adamw", "sgd")
ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu", "tanh", "sigmoid")


class SpecError(ValueError):
    """A spec (or the data it names) is invalid; ``errors`` holds ``field: reason`` lines."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("; ".join(errors))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------------------- dataset
class DatasetSpec(_Model):
    """Where the data comes from: exactly one of ``builtin``, ``path`` (CLI only) or ``id`` (an upload)."""

    builtin: Literal["digits", "iris", "wine", "breast_cancer", "diabetes"] | None = None
    path: str | None = None
    id: str | None = None
    target: str | None = Field(default=None, description="Target column (CSV/Parquet); NPZ uses X and y.")
    task: Task | None = Field(default=None, description="Inferred from the target when not set.")
    impute: Literal["none", "mean", "median"] = Field(
        default="none", description="How to fill NaN features (statistics from the training part only)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        given = [k for k in ("builtin", "path", "id") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'builtin', 'path' or 'id'")
        if self.path is not None and Path(self.path).suffix.lower() in (".csv", ".parquet", ".pq"):
            if not self.target:
                raise ValueError("target: is required for a CSV or Parquet file")
        if self.builtin is not None and self.task is not None and self.task != BUILTIN_DATASETS[self.builtin]:
            raise ValueError(f"task: the builtin data set '{self.builtin}' is {BUILTIN_DATASETS[self.builtin]}")
        return self

    def known_task(self) -> Task | None:
        """The task if it is known without reading the data."""
        if self.task is not None:
            return self.task
        if self.builtin is not None:
            return BUILTIN_DATASETS[self.builtin]
        return None


# ----------------------------------------------------------------------------------------------- model
class ModelSpec(_Model):
    kind: Literal["mlp", "cnn"] = "mlp"
    hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [128, 64])
    activation: Literal["relu", "leaky_relu", "elu", "gelu", "tanh", "sigmoid"] = "relu"
    # CNN only: channels per conv block (conv -> activation -> Dropout2d -> maxpool) and the input's shape.
    channels: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [16, 32])
    kernel_size: int = Field(default=3, ge=1, le=15)
    input_shape: list[Annotated[int, Field(ge=1)]] | None = Field(
        default=None, description="(C, H, W) for a CNN; inferred for the digits data set (1x8x8)."
    )

    @model_validator(mode="after")
    def _shape(self) -> ModelSpec:
        if self.input_shape is not None and len(self.input_shape) != 3:
            raise ValueError("input_shape: must be [channels, height, width]")
        if self.kind == "mlp" and not self.hidden:
            raise ValueError("hidden: an MLP needs at least one hidden layer")
        return self


# ----------------------------------------------------------------------------------------------- split
class HoldoutSpec(_Model):
    kind: Literal["holdout"] = "holdout"
    fraction: float = Field(default=0.2, gt=0.0, lt=1.0)


class KFoldSpec(_Model):
    kind: Literal["kfold"]
    k: int = Field(default=5, ge=2, le=50)


class SplitSpec(_Model):
    test_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    validation: Annotated[HoldoutSpec | KFoldSpec, Field(discriminator="kind")] = Field(
        default_factory=HoldoutSpec
    )
    stratify: bool | None = Field(default=None, description="Defaults to true for classification.")
    seed: int = 0


# ---------------------------------------------------------------------------------------- search space
class ParamSpec(_Model):
    """One search dimension: a range (``low``/``high``/``log``/``step``), ``choices``, or a fixed ``value``."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None
    value: Any = None

    @model_validator(mode="after")
    def _one_form(self) -> ParamSpec:
        forms = [self.low is not None or self.high is not None, self.choices is not None, self.value is not None]
        if sum(forms) != 1:
            raise ValueError("give exactly one of low/high, choices, or value")
        if self.choices is not None and len(self.choices) == 0:
            raise ValueError("choices: must not be empty")
        if forms[0]:
            if self.low is None or self.high is None:
                raise ValueError("give both low and high")
            if self.log and self.low <= 0:
                raise ValueError("low: must be > 0 on a log scale")
            if self.low > self.high:
                raise ValueError("low: must be <= high")
            if self.log and self.step is not None:
                raise ValueError("step: cannot be combined with log")
        return self

    @property
    def kind(self) -> Literal["range", "choices", "fixed"]:
        if self.value is not None:
            return "fixed"
        if self.choices is not None:
            return "choices"
        return "range"


CORE_HYPERPARAMETERS: dict[str, ParamSpec] = {
    "lr": ParamSpec(low=1e-5, high=1e-1, log=True),
    "dropout": ParamSpec(low=0.0, high=0.5),
    "batch_size": ParamSpec(choices=[16, 32, 64, 128, 256]),
    "weight_decay": ParamSpec(low=1e-6, high=1e-2, log=True),
}
# Optional dimensions a job may add (they take the model's fixed values when absent).
OPTIONAL_HYPERPARAMETERS = ("optimizer", "momentum", "n_layers", "hidden_units")
_INTEGER_PARAMS = ("batch_size", "n_layers", "hidden_units")
_BOUNDS: dict[str, tuple[float, float]] = {
    "lr": (0.0, 10.0),
    "dropout": (0.0, 0.95),
    "batch_size": (1, 1_000_000),
    "weight_decay": (0.0, 1.0),
    "momentum": (0.0, 0.999),
    "n_layers": (1, 16),
    "hidden_units": (1, 65_536),
}


# -------------------------------------------------------------------------------------- pruner/sampler
_PRUNERS: dict[str, type[optuna.pruners.BasePruner] | None] = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "wilcoxon": optuna.pruners.WilcoxonPruner,
    "patient": optuna.pruners.PatientPruner,
    "none": optuna.pruners.NopPruner,
}
_SAMPLERS: dict[str, type[optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "gp": optuna.samplers.GPSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "qmc": optuna.samplers.QMCSampler,
    "grid": optuna.samplers.GridSampler,
}
# Parameters the spec does not let a user pass (they are built from other parts of the spec).
_HIDDEN_ARGS = {"self", "search_space", "wrapped_pruner", "seed"}


def _plain_kwargs(cls: type) -> dict[str, inspect.Parameter]:
    return {
        n: p
        for n, p in inspect.signature(cls.__init__).parameters.items()
        if n not in _HIDDEN_ARGS and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        and (p.default is p.empty or p.default is None or isinstance(p.default, (int, float, str, bool)))
    }


class PrunerSpec(BaseModel):
    """``{"kind": "median", ...}``: any further keys are the Optuna pruner's own keyword arguments."""

    model_config = ConfigDict(extra="allow")
    # Default from bench/pruning.py (docs/BENCHMARKS.md): Optuna's successive halving saves >= 3x epochs at
    # <= 0.5 test points on both the holdout and the K-fold example; median as shipped saved < 2x.
    kind: Literal["median", "percentile", "successive_halving", "hyperband", "wilcoxon", "patient", "none"] = (
        "successive_halving"
    )

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _check(self) -> PrunerSpec:
        cls = _PRUNERS[self.kind]
        assert cls is not None
        allowed = _plain_kwargs(cls)
        if self.kind == "patient":
            allowed.pop("wrapped_pruner", None)
        for key in self.params:
            if key not in allowed:
                raise ValueError(f"{key}: not a parameter of the {self.kind} pruner (known: {', '.join(allowed)})")
        try:
            self.build()
        except (ValueError, TypeError) as exc:
            raise ValueError(str(exc)) from None
        return self

    def build(self) -> optuna.pruners.BasePruner:
        """The Optuna pruner this spec names (``patient`` wraps a median pruner)."""
        cls = _PRUNERS[self.kind]
        assert cls is not None
        with warnings.catch_warnings():  # Wilcoxon/Patient are "experimental" in Optuna; that is not news here
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if self.kind == "patient":
                params = {"patience": 3, **self.params}
                return optuna.pruners.PatientPruner(optuna.pruners.MedianPruner(), **params)
            return cls(**self.params)


class SamplerSpec(BaseModel):
    """``{"kind": "tpe", "seed": 0, ...}``: further keys are the Optuna sampler's keyword arguments."""

    model_config = ConfigDict(extra="allow")
    kind: Literal["tpe", "random", "gp", "cmaes", "qmc", "grid"] = "tpe"
    seed: int | None = 0

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _check(self) -> SamplerSpec:
        allowed = _plain_kwargs(_SAMPLERS[self.kind])
        for key in self.params:
            if key not in allowed:
                raise ValueError(f"{key}: not a parameter of the {self.kind} sampler (known: {', '.join(allowed)})")
        return self

    def build(self, search_space: dict[str, ParamSpec] | None = None) -> optuna.samplers.BaseSampler:
        cls = _SAMPLERS[self.kind]
        if self.kind == "grid":
            grid = {n: (p.choices if p.kind == "choices" else [p.value]) for n, p in (search_space or {}).items()}
            return optuna.samplers.GridSampler(grid, seed=self.seed, **self.params)
        return cls(seed=self.seed, **self.params)


# -------------------------------------------------------------------------------------------- the rest
class BudgetSpec(_Model):
    n_trials: int = Field(default=30, ge=1, le=100_000)
    timeout_s: float | None = Field(default=600.0, gt=0)
    max_epochs: int = Field(default=50, ge=1, le=10_000)


class EarlyStoppingSpec(_Model):
    patience: int = Field(default=5, ge=1)
    min_delta: float = Field(default=0.0, ge=0.0)


class JobSpec(_Model):
    """A tuning job: data, model, split, search space, objective, budget, pruner and sampler."""

    name: str = Field(min_length=1, max_length=200)
    dataset: DatasetSpec
    model: ModelSpec = Field(default_factory=ModelSpec)
    split: SplitSpec = Field(default_factory=SplitSpec)
    search_space: dict[str, ParamSpec] = Field(default_factory=dict)
    objective: Literal["val_loss", "accuracy", "f1_macro", "roc_auc", "mae", "mse", "r2"] = "val_loss"
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    early_stopping: EarlyStoppingSpec = Field(default_factory=EarlyStoppingSpec)
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)

    @model_validator(mode="after")
    def _check(self) -> JobSpec:
        errors: list[str] = []
        known = (*CORE_HYPERPARAMETERS, *OPTIONAL_HYPERPARAMETERS)
        for name, p in self.search_space.items():
            if name not in known:
                errors.append(f"search_space.{name}: unknown hyperparameter (known: {', '.join(known)})")
                continue
            errors.extend(_check_param(name, p))
        task = self.dataset.known_task()
        if task is not None:
            errors.extend(objective_errors(self.objective, task))
        if self.model.kind == "cnn" and self.model.input_shape is None and self.dataset.builtin not in (None, "digits"):
            errors.append("model.input_shape: required for a CNN on this data set")
        if self.sampler.kind == "grid":
            for name, p in self.effective_search_space().items():
                if p.kind == "range":
                    errors.append(f"search_space.{name}: the grid sampler needs choices or a fixed value")
        if self.pruner.kind == "wilcoxon" and self.split.validation.kind != "kfold":
            errors.append("pruner.kind: the wilcoxon pruner compares per-fold scores and needs split.validation.kind 'kfold'")
        if errors:
            raise ValueError("\n".join(errors))
        return self

    def effective_search_space(self) -> dict[str, ParamSpec]:
        """The core four (defaults unless overridden) plus any optional dimensions the job added."""
        return {**CORE_HYPERPARAMETERS, **self.search_space}

    @property
    def direction(self) -> Literal["minimize", "maximize"]:
        return METRIC_DIRECTIONS[self.objective][0]


def objective_errors(objective: str, task: str) -> list[str]:
    """``objective: ...`` errors when the objective does not fit the task."""
    tasks = METRIC_DIRECTIONS[objective][1]
    if task not in tasks:
        return [f"objective: '{objective}' needs a {' or '.join(tasks)} task, but the task is {task}"]
    return []


def _check_param(name: str, p: ParamSpec) -> list[str]:
    where = f"search_space.{name}"
    lo, hi = _BOUNDS.get(name, (-math.inf, math.inf))
    if name == "optimizer":
        values = p.choices if p.kind == "choices" else [p.value] if p.kind == "fixed" else None
        if values is None:
            return [f"{where}: give choices from {', '.join(OPTIMIZERS)}"]
        bad = [v for v in values if v not in OPTIMIZERS]
        return [f"{where}: unknown optimizer {bad[0]!r} (known: {', '.join(OPTIMIZERS)})"] if bad else []
    values = p.choices if p.kind == "choices" else [p.value] if p.kind == "fixed" else [p.low, p.high]
    errors: list[str] = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return [f"{where}: values must be numbers, got {v!r}"]
        if name in _INTEGER_PARAMS and float(v) != int(v):
            return [f"{where}: values must be integers, got {v!r}"]
        if not lo <= v <= hi:
            errors.append(f"{where}: {v!r} is outside the allowed range [{lo:g}, {hi:g}]")
            break
    if name in ("batch_size", "n_layers", "hidden_units") and p.kind == "range" and p.step is not None:
        if float(p.step) != int(p.step):
            errors.append(f"{where}.step: must be an integer")
    return errors


# ------------------------------------------------------------------------------------------ utilities
_FRIENDLY = {
    "greater_than_equal": "must be at least {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be at most {le}",
    "less_than": "must be < {lt}",
    "missing": "is required",
    "extra_forbidden": "unknown field",
    "string_too_short": "must not be empty",
}


def error_reason(err: Any) -> str:
    """The reason of one pydantic error, in the spec's wording (shared with the API's 422 replies)."""
    ctx = err.get("ctx") or {}
    template = _FRIENDLY.get(err["type"])
    msg = template.format(**ctx) if template else err["msg"]
    if err["type"] == "value_error" and "error" in ctx:
        msg = str(ctx["error"])
    return str(msg)


def format_validation_error(exc: ValidationError) -> list[str]:
    """Turn pydantic's errors into ``dotted.field: reason`` lines."""
    lines: list[str] = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and p in ("holdout", "kfold"))]
        msg = error_reason(err)
        for part in msg.split("\n"):
            # Model validators phrase their own "field: reason"; prefix the location they belong to.
            if ":" in part and not loc:
                lines.append(part)
            elif ":" in part.split(" ")[0]:
                lines.append(".".join([*loc, part]))
            else:
                lines.append(f"{'.'.join(loc) or '(spec)'}: {part}")
    return lines


def parse_spec(data: dict[str, Any]) -> JobSpec:
    """Validate a spec dict; raise :class:`SpecError` with ``field: reason`` lines."""
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc)) from None


def load_spec(path: str | Path) -> JobSpec:
    """Read a spec from a JSON or YAML file and validate it."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError([f"(spec): cannot read {path}: {exc.strerror or exc}"]) from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError([f"(spec): {path} is not valid YAML: {exc}"]) from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError([f"(spec): {path} is not valid JSON: {exc}"]) from None
    if not isinstance(data, dict):
        raise SpecError([f"(spec): {path} must hold a mapping"])
    return parse_spec(data)
