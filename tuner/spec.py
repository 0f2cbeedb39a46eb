"""The job spec: one pydantic model shared by the CLI, the API and the worker.

A spec is validated completely before any data is read or any model trained; every error names the
field (dotted path) and the reason, e.g. ``split.validation.k: must be at least 2``.
"""

from __future__ import annotations

import json
import math
import re
import typing
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import optuna
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuner.limits import current as current_limits

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
    "memory_errors",
    "model_memory_bytes",
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

# Input width of each builtin data set (the memory estimate needs it before any data is read).
BUILTIN_FEATURES: dict[str, int] = {"digits": 64, "iris": 4, "wine": 13, "breast_cancer": 30, "diabetes": 10}
OPTIMIZERS = ("adam", "adamw", "sgd")
ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu", "tanh", "sigmoid")


class SpecError(ValueError):
    """A spec (or the data it names) is invalid; ``errors`` holds ``field: reason`` lines."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("; ".join(errors))


class _Model(BaseModel):
    # JSON's Infinity/NaN are refused for every float field (json.loads accepts them).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _at_most(value: float, limit: float) -> None:
    """Raise ``must be at most N`` (the field's name is added by pydantic's location)."""
    if value > limit:
        raise ValueError(f"must be at most {limit:g}")


def _finite(value: Any) -> bool:
    return not (isinstance(value, float) and not math.isfinite(value))


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
        tabular = self.path is not None and Path(self.path).suffix.lower() in (".csv", ".parquet", ".pq")
        if tabular and not self.target:
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
    kind: Literal["mlp", "cnn", "plugin"] = "mlp"
    hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [128, 64])
    activation: Literal["relu", "leaky_relu", "elu", "gelu", "tanh", "sigmoid"] = "relu"
    # Built-in families' weight initialisation (tuner.models.init_weights). "auto": He for the ReLU family,
    # Xavier with the activation's gain for tanh/sigmoid; "glorot": Xavier-uniform with gain 1 on every layer
    # (Keras' and scikit-learn's default); "torch": the layers' own PyTorch initialisation.
    init: Literal["auto", "he", "xavier", "glorot", "torch"] = Field(
        default="auto", description="auto (He for ReLU-family, Xavier for tanh/sigmoid), he, xavier, glorot, torch")
    # CNN only: channels per conv block (conv -> activation -> Dropout2d -> maxpool) and the input's shape.
    channels: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [16, 32])
    kernel_size: int = Field(default=3, ge=1)
    input_shape: list[Annotated[int, Field(ge=1)]] | None = Field(
        default=None, description="(C, H, W) for a CNN; inferred for the digits data set (1x8x8)."
    )

    @field_validator("hidden")
    @classmethod
    def _hidden_size(cls, v: list[int]) -> list[int]:
        lim = current_limits()
        if len(v) > lim.max_layers:
            raise ValueError(f"must have at most {lim.max_layers} layers")
        if v and max(v) > lim.max_width:
            raise ValueError(f"each width must be at most {lim.max_width}")
        return v

    @field_validator("channels")
    @classmethod
    def _channels_size(cls, v: list[int]) -> list[int]:
        lim = current_limits()
        if len(v) > lim.max_conv_layers:
            raise ValueError(f"must have at most {lim.max_conv_layers} conv blocks")
        if v and max(v) > lim.max_channels:
            raise ValueError(f"each channel count must be at most {lim.max_channels}")
        return v

    @field_validator("kernel_size")
    @classmethod
    def _kernel(cls, v: int) -> int:
        _at_most(v, current_limits().max_kernel_size)
        return v
    # kind "plugin": an installed model family (entry point group "tuneserve.models") and its options.
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                             description="kind 'plugin': the installed family's entry-point name")
    options: dict[str, Any] = Field(default_factory=dict, description="kind 'plugin': the factory's options")

    @property
    def family(self) -> str:
        """The registry name of the model family: ``mlp``, ``cnn`` or the plugin's name."""
        return self.name if self.kind == "plugin" and self.name else self.kind

    @model_validator(mode="after")
    def _plugin(self) -> ModelSpec:
        from tuner.registry import BUILTIN_FAMILIES, option_errors

        if self.kind != "plugin":
            if self.name is not None or self.options:
                raise ValueError("name: 'name' and 'options' are for kind 'plugin'")
            return self
        if self.init != "auto":
            raise ValueError("init: applies to the built-in mlp and cnn families; a plugin initialises its own model")
        if self.name is None:
            raise ValueError("name: is required for kind 'plugin'")
        if self.name in BUILTIN_FAMILIES:
            raise ValueError(f"name: '{self.name}' is a built-in family; use kind '{self.name}'")
        if errors := option_errors(self.name, self.options):
            raise ValueError("\n".join(errors))
        return self

    @model_validator(mode="after")
    def _shape(self) -> ModelSpec:
        if self.input_shape is not None and len(self.input_shape) != 3:
            raise ValueError("input_shape: must be [channels, height, width]")
        if self.input_shape is not None and max(self.input_shape) > current_limits().max_input_side:
            raise ValueError(f"input_shape: each side must be at most {current_limits().max_input_side}")
        if self.kind == "mlp" and not self.hidden:
            raise ValueError("hidden: an MLP needs at least one hidden layer")
        if self.kind == "cnn" and self.kernel_size % 2 == 0:  # padding k // 2 keeps the map size for odd k only
            raise ValueError(f"kernel_size: must be odd (3, 5, 7, ...), got {self.kernel_size}")
        return self


# ----------------------------------------------------------------------------------------------- split
class HoldoutSpec(_Model):
    kind: Literal["holdout"] = "holdout"
    fraction: float = Field(default=0.2, ge=0.01, le=0.9)


class KFoldSpec(_Model):
    kind: Literal["kfold"]
    k: int = Field(default=5, ge=2, le=50)


class SplitSpec(_Model):
    test_fraction: float = Field(default=0.2, ge=0.01, le=0.9)
    validation: Annotated[HoldoutSpec | KFoldSpec, Field(discriminator="kind")] = Field(
        default_factory=HoldoutSpec
    )
    stratify: bool | None = Field(default=None, description="Defaults to true for classification.")
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="numpy's seed range")


# Rows and class counts of the builtin data sets (scikit-learn's loaders), for split checks at submit.
BUILTIN_ROWS: dict[str, int] = {"digits": 1797, "iris": 150, "wine": 178, "breast_cancer": 569, "diabetes": 442}
BUILTIN_CLASS_COUNTS: dict[str, list[int] | None] = {
    "digits": [178, 182, 177, 183, 181, 182, 181, 179, 174, 180], "iris": [50, 50, 50], "wine": [59, 71, 48],
    "breast_cancer": [212, 357], "diabetes": None,
}


def split_errors(split: SplitSpec, n_rows: int, class_counts: list[int] | None, task: str | None) -> list[str]:
    """What certainly cannot split, known from the row count (and class counts) alone: no test, training or
    validation row, or more folds than rows (stratified: than the largest class has non-test rows)."""
    test = math.ceil(split.test_fraction * n_rows)
    dev = n_rows - test
    if test < 1 or dev < 2:
        return [(f"split.test_fraction: {split.test_fraction:g} of {n_rows} rows leaves {test} test and {dev} "
                "other rows")]
    val = split.validation
    if isinstance(val, KFoldSpec):
        stratified = split.stratify if split.stratify is not None else (task or "classification") == "classification"
        most = max(math.floor(c * (1 - split.test_fraction)) for c in class_counts) if stratified and class_counts \
            else dev
        if val.k > most:
            what = "the largest class has" if stratified and class_counts else "there are"
            return [f"split.validation.k: {val.k} folds, but {what} only {most} non-test rows; use at most {most}"]
        return []
    n_val = math.ceil(val.fraction * dev)
    if n_val < 1 or dev - n_val < 1:
        return [(f"split.validation.fraction: {val.fraction:g} of {dev} non-test rows leaves no training or "
                "validation row")]
    return []


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
        if self.choices is not None and len(self.choices) > current_limits().max_choices:
            raise ValueError(f"choices: must have at most {current_limits().max_choices} entries")
        if self.choices is not None:
            seen: list[Any] = []
            for v in self.choices:
                if any(type(v) is type(w) and v == w for w in seen):
                    raise ValueError(f"choices: {v!r} is listed twice (a repeated choice would be sampled more often)")
                seen.append(v)
        if not all(_finite(v) for v in [*(self.choices or []), self.value]):
            raise ValueError("values must be finite numbers (no Infinity or NaN)")
        if forms[0]:
            if self.low is None or self.high is None:
                raise ValueError("give both low and high")
            if self.log and self.low <= 0:
                raise ValueError("low: must be > 0 on a log scale")
            if self.low > self.high:
                raise ValueError("low: must be <= high")
            if self.log and self.step is not None:
                raise ValueError("step: cannot be combined with log")
            if self.step is not None:
                if not (math.isfinite(self.step) and self.step > 0):
                    raise ValueError("step: must be a finite number > 0")
                limit = current_limits().max_grid_points
                if (self.high - self.low) / self.step > limit:
                    raise ValueError(f"step: {self.step:g} gives more than {limit:,} values between low and high; "
                                     f"use at least {(self.high - self.low) / limit:g}")
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
OPTIONAL_HYPERPARAMETERS = ("optimizer", "momentum", "n_layers", "hidden_units", "init")
# model.init's values, which search_space.init may choose from (built-in families only; the trial's value
# replaces model.init when the model is built, see tuner.models.build_model)
INIT_SCHEMES: tuple[str, ...] = typing.get_args(ModelSpec.model_fields["init"].annotation)
_INTEGER_PARAMS = ("batch_size", "n_layers", "hidden_units")
_BOUNDS: dict[str, tuple[float, float]] = {
    "lr": (0.0, 10.0),
    "dropout": (0.0, 0.95),
    "weight_decay": (0.0, 1.0),
    "momentum": (0.0, 0.999),
}


def _bounds(name: str) -> tuple[float, float]:
    """Allowed range of a search dimension (sizes come from :mod:`tuner.limits`)."""
    lim = current_limits()
    sizes = {"batch_size": lim.max_batch_size, "n_layers": lim.max_layers, "hidden_units": lim.max_width}
    if name in sizes:
        return (1, sizes[name])
    return _BOUNDS.get(name, (-math.inf, math.inf))


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
# Each pruner's and sampler's own keyword arguments a spec may set, with their types and bounds below.
_PRUNER_ARGS: dict[str, tuple[str, ...]] = {
    "median": ("n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials"),
    "percentile": ("percentile", "n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials"),
    "successive_halving": ("min_resource", "reduction_factor", "min_early_stopping_rate", "bootstrap_count"),
    "hyperband": ("min_resource", "max_resource", "reduction_factor", "bootstrap_count"),
    "wilcoxon": ("p_threshold", "n_startup_steps"),
    "patient": ("patience", "min_delta"),
    "none": (),
}
_SAMPLER_ARGS: dict[str, tuple[str, ...]] = {
    "tpe": ("n_startup_trials", "n_ei_candidates", "multivariate", "group", "consider_endpoints", "prior_weight",
            "consider_magic_clip", "constant_liar", "warn_independent_sampling"),
    "random": (),
    "gp": ("n_startup_trials", "deterministic_objective", "warn_independent_sampling"),
    "cmaes": ("sigma0", "n_startup_trials", "consider_pruned_trials", "restart_strategy", "popsize", "inc_popsize",
              "use_separable_cma", "with_margin", "lr_adapt", "warn_independent_sampling"),
    "qmc": ("qmc_type", "scramble", "warn_independent_sampling", "warn_asynchronous_seeding"),
    "grid": (),
}


def _known_args(data: Any, table: dict[str, tuple[str, ...]], default: str, what: str) -> Any:
    """Refuse, before typing, any argument that the chosen pruner/sampler does not take."""
    if isinstance(data, dict):
        kind = data.get("kind", default)
        allowed = table.get(kind) if isinstance(kind, str) else None
        if allowed is not None:
            errors = [f"{key}: not a parameter of the {kind} {what} (known: {', '.join(allowed) or 'none'})"
                      for key, value in data.items() if key not in ("kind", "seed", *allowed) and value is not None]
            if errors:
                raise ValueError("\n".join(errors))
    return data


def _check_ranges(model: BaseModel, ranges: dict[str, tuple[float, float]]) -> None:
    errors: list[str] = []
    for name, (lo, hi) in ranges.items():
        v = getattr(model, name, None)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not lo <= v <= hi:
            errors.append(f"{name}: must be at least {lo:g}" if v < lo else f"{name}: must be at most {hi:g}")
    if errors:
        raise ValueError("\n".join(errors))


class _Args(_Model):
    def _params(self, table: dict[str, tuple[str, ...]], kind: str) -> dict[str, Any]:
        return {k: getattr(self, k) for k in table[kind] if getattr(self, k) is not None}


class PrunerSpec(_Args):
    """``{"kind": "median", ...}``: further keys are the Optuna pruner's own typed, bounded arguments."""

    # Default from bench/pruning.py (docs/BENCHMARKS.md): Optuna's successive halving saves >= 3x epochs at
    # <= 0.5 test points on both the holdout and the K-fold example; median as shipped saved < 2x.
    kind: Literal["median", "percentile", "successive_halving", "hyperband", "wilcoxon", "patient", "none"] = (
        "successive_halving"
    )
    n_startup_trials: int | None = Field(default=None, ge=0)
    n_warmup_steps: int | None = Field(default=None, ge=0)
    interval_steps: int | None = Field(default=None, ge=1)
    n_min_trials: int | None = Field(default=None, ge=1)
    percentile: float | None = Field(default=None, ge=0, le=100)
    min_resource: int | Literal["auto"] | None = Field(default=None, description="an integer >= 1 or 'auto'")
    max_resource: int | Literal["auto"] | None = Field(default=None, description="an integer >= 1 or 'auto'")
    reduction_factor: int | None = Field(default=None, ge=2)
    min_early_stopping_rate: int | None = Field(default=None, ge=0)
    bootstrap_count: int | None = Field(default=None, ge=0)
    p_threshold: float | None = Field(default=None, ge=0, le=1)
    n_startup_steps: int | None = Field(default=None, ge=0)
    patience: int | None = Field(default=None, ge=0)
    min_delta: float | None = Field(default=None, ge=0.0)

    @property
    def params(self) -> dict[str, Any]:
        """The arguments this spec sets for its pruner (unset ones keep Optuna's defaults)."""
        return self._params(_PRUNER_ARGS, self.kind)

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data: Any) -> Any:
        return _known_args(data, _PRUNER_ARGS, "successive_halving", "pruner")  # the default kind

    @model_validator(mode="after")
    def _check(self) -> PrunerSpec:
        lim = current_limits()
        _check_ranges(self, {
            "n_startup_trials": (0, lim.max_startup_trials), "n_warmup_steps": (0, lim.max_warmup_steps),
            "interval_steps": (1, lim.max_warmup_steps), "n_min_trials": (1, lim.max_trials),
            "min_resource": (1, lim.max_epochs), "max_resource": (1, lim.max_epochs),
            "reduction_factor": (2, lim.max_reduction_factor), "min_early_stopping_rate": (0, 64),
            "bootstrap_count": (0, lim.max_bootstrap_count), "n_startup_steps": (0, lim.max_warmup_steps),
            "patience": (0, lim.max_patience), "min_delta": (0.0, 1e12),
        })
        if self.kind == "percentile" and self.percentile is None:
            raise ValueError("percentile: is required for the percentile pruner")
        if self.kind == "hyperband" and self.min_resource == "auto":
            raise ValueError("min_resource: must be an integer for the hyperband pruner")
        if self.kind == "successive_halving" and self.max_resource is not None:
            raise ValueError("max_resource: not a parameter of the successive_halving pruner")
        try:
            self.build()
        except (ValueError, TypeError) as exc:
            raise ValueError(str(exc)) from None
        return self

    def build(self, first_rung: int | Literal["auto"] | None = None) -> optuna.pruners.BasePruner:
        """The Optuna pruner this spec names (``patient`` wraps a median pruner). ``first_rung`` is successive
        halving's ``min_resource`` when the spec sets none (``tuner.runner.open_study`` passes the study's
        :func:`default_min_resource`)."""
        cls = _PRUNERS[self.kind]
        assert cls is not None
        params = dict(self.params)
        if self.kind == "successive_halving" and self.min_resource is None and first_rung is not None:
            params["min_resource"] = first_rung
        with warnings.catch_warnings():  # Wilcoxon/Patient are "experimental" in Optuna; that is not news here
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if self.kind == "patient":
                return optuna.pruners.PatientPruner(optuna.pruners.MedianPruner(), **{"patience": 3, **params})
            return cls(**params)


def default_min_resource(max_steps: int) -> int | Literal["auto"]:
    """Successive halving's first rung when a spec sets none: 1/32 of the steps a trial can report (its
    epoch budget; K for K-fold trained fold after fold), from 64 steps up; Optuna's ``"auto"`` below.

    Optuna's ``"auto"`` takes 1/100 of the first finished trial's length, which early stopping makes
    short: the first rung lands at epoch 1, where a slow learning rate looks worst and is cut. Below 64
    steps (every shipped example) 1/32 is epoch 1 anyway, and ``"auto"`` is kept as it was measured (it
    also prunes nothing before the first trial finishes); a 200-epoch budget gets rungs at 6, 24 and 96
    (bench part 11, docs/BENCHMARKS.md).
    """
    return max_steps // 32 if max_steps >= 64 else "auto"


class SamplerSpec(_Args):
    """``{"kind": "tpe", "seed": 0, ...}``: further keys are the Optuna sampler's own typed, bounded arguments."""

    kind: Literal["tpe", "random", "gp", "cmaes", "qmc", "grid"] = "tpe"
    seed: int | None = Field(default=0, ge=0, le=2**32 - 1)
    n_startup_trials: int | None = Field(default=None, ge=0)
    n_ei_candidates: int | None = Field(default=None, ge=1)
    multivariate: bool | None = None
    group: bool | None = None
    consider_endpoints: bool | None = None
    prior_weight: float | None = Field(default=None, gt=0.0, le=1e6)
    consider_magic_clip: bool | None = None
    constant_liar: bool | None = None
    warn_independent_sampling: bool | None = None
    deterministic_objective: bool | None = None
    sigma0: float | None = Field(default=None, gt=0.0, le=1e6)
    consider_pruned_trials: bool | None = None
    restart_strategy: Literal["ipop", "bipop"] | None = None
    popsize: int | None = Field(default=None, ge=1)
    inc_popsize: int | None = Field(default=None, ge=1, le=100)
    use_separable_cma: bool | None = None
    with_margin: bool | None = None
    lr_adapt: bool | None = None
    qmc_type: Literal["sobol", "halton"] | None = None
    scramble: bool | None = None
    warn_asynchronous_seeding: bool | None = None

    @property
    def params(self) -> dict[str, Any]:
        """The arguments this spec sets for its sampler besides ``seed`` (unset ones keep Optuna's defaults)."""
        return self._params(_SAMPLER_ARGS, self.kind)

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data: Any) -> Any:
        return _known_args(data, _SAMPLER_ARGS, "tpe", "sampler")

    @model_validator(mode="after")
    def _check(self) -> SamplerSpec:
        lim = current_limits()
        _check_ranges(self, {"n_startup_trials": (0, lim.max_startup_trials),
                             "n_ei_candidates": (1, lim.max_ei_candidates), "popsize": (1, lim.max_popsize)})
        return self

    def build(self, search_space: dict[str, ParamSpec] | None = None) -> optuna.samplers.BaseSampler:
        cls = _SAMPLERS[self.kind]
        if self.kind == "grid":
            grid = {n: (p.choices if p.kind == "choices" else [p.value]) for n, p in (search_space or {}).items()}
            return optuna.samplers.GridSampler(grid, seed=self.seed, **self.params)
        return cls(seed=self.seed, **self.params)


# -------------------------------------------------------------------------------------------- the rest
class BudgetSpec(_Model):
    n_trials: int = Field(default=30, ge=1)
    timeout_s: float | None = Field(default=600.0, gt=0, description="finite; see the service's limits")
    max_epochs: int = Field(default=50, ge=1)

    @model_validator(mode="after")
    def _limits(self) -> BudgetSpec:
        lim = current_limits()
        _check_ranges(self, {"n_trials": (1, lim.max_trials), "timeout_s": (0, lim.max_timeout_s),
                             "max_epochs": (1, lim.max_epochs)})
        return self


class EarlyStoppingSpec(_Model):
    patience: int = Field(default=5, ge=1)
    min_delta: float = Field(default=0.0, ge=0.0)

    @field_validator("patience")
    @classmethod
    def _patience(cls, v: int) -> int:
        _at_most(v, current_limits().max_patience)
        return v


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
    # weight decay on weight matrices/kernels only (not biases, normalisation weights), or on every parameter
    weight_decay_on: Literal["weights", "all"] = "weights"
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)

    @model_validator(mode="after")
    def _check(self) -> JobSpec:
        errors: list[str] = []
        known = (*CORE_HYPERPARAMETERS, *OPTIONAL_HYPERPARAMETERS)
        for name, p in self.search_space.items():
            if name not in known and self.model.kind == "plugin":
                errors.extend(plugin_param_errors(name, p))
                continue
            if name == "init" and self.model.kind == "plugin":
                errors.append("search_space.init: applies to the built-in mlp and cnn families; a plugin "
                              "initialises its own model")
                continue
            if name not in known:
                errors.append(f"search_space.{name}: unknown hyperparameter (known: {', '.join(known)})")
                continue
            errors.extend(_check_param(name, p))
        if "momentum" in self.search_space:
            opt = self.search_space.get("optimizer")
            optimizers = (opt.choices if opt.kind == "choices" else [opt.value]) if opt is not None else ["adam"]
            if "sgd" not in (optimizers or []):
                errors.append("search_space.momentum: only the SGD optimizer uses momentum; add 'sgd' to "
                              "search_space.optimizer (the optimizer is adam by default)")
            elif self.sampler.kind == "grid" and set(optimizers or []) != {"sgd"}:
                # momentum is suggested only in sgd trials; the grid tries every combination of every
                # dimension, so each adam/adamw point would be trained once per momentum value
                errors.append("search_space.momentum: the grid sampler tries every combination, but momentum "
                              "applies to sgd trials only (each adam/adamw point would run once per momentum "
                              "value); fix search_space.optimizer to 'sgd', drop momentum (sgd then uses 0.9) "
                              "or use another sampler")
        task = self.dataset.known_task()
        if task is not None:
            errors.extend(objective_errors(self.objective, task))
        if self.model.kind == "cnn" and self.model.input_shape is None and self.dataset.builtin not in (None, "digits"):
            errors.append("model.input_shape: required for a CNN on this data set")
        space = self.effective_search_space()
        if len(space) > current_limits().max_dimensions:
            errors.append(f"search_space: {len(space)} dimensions, more than the limit of "
                          f"{current_limits().max_dimensions}")
        if self.sampler.kind == "grid":
            points = 1
            for name, p in space.items():
                if p.kind == "range":
                    errors.append(f"search_space.{name}: the grid sampler needs choices or a fixed value")
                points *= len(p.choices) if p.kind == "choices" and p.choices else 1
            if points > current_limits().max_grid_points:
                errors.append(f"search_space: the grid has {points:.3g} points, more than the limit of "
                              f"{current_limits().max_grid_points:,}; use fewer choices or another sampler")
        if self.dataset.builtin is not None:
            errors.extend(split_errors(self.split, BUILTIN_ROWS[self.dataset.builtin],
                                       BUILTIN_CLASS_COUNTS[self.dataset.builtin], self.dataset.known_task()))
        if self.pruner.kind == "wilcoxon" and self.split.validation.kind != "kfold":
            errors.append("pruner.kind: the wilcoxon pruner compares per-fold scores and needs split.validation.kind 'kfold'")
        if self.dataset.builtin is not None and not errors:
            errors.extend(memory_errors(self, BUILTIN_FEATURES[self.dataset.builtin]))
        if errors:
            raise ValueError("\n".join(errors))
        return self

    @model_validator(mode="before")
    @classmethod
    def _no_control_characters(cls, data: Any) -> Any:
        if errors := control_character_errors(data):
            raise ValueError("\n".join(errors))
        return data

    def effective_search_space(self) -> dict[str, ParamSpec]:
        """The core four (defaults unless overridden) plus any optional dimensions the job added."""
        return {**CORE_HYPERPARAMETERS, **self.search_space}

    @property
    def direction(self) -> Literal["minimize", "maximize"]:
        return METRIC_DIRECTIONS[self.objective][0]


CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")  # C0 controls and DEL: NUL, escapes, line breaks


def control_character_errors(data: Any, where: str = "") -> list[str]:
    """``field: reason`` lines for every string (value or key) holding NUL or another control character:
    PostgreSQL cannot store NUL in text, and control characters in names end up in logs and terminals."""
    if isinstance(data, str):
        if CONTROL_CHARACTERS.search(data):
            return [f"{where or '(spec)'}: must not contain NUL or other control characters"]
        return []
    errors: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            name = f"{where}.{key}" if where else str(key)
            if isinstance(key, str) and CONTROL_CHARACTERS.search(key):
                errors.append(f"{where or '(spec)'}: a key must not contain NUL or other control characters")
                continue
            errors.extend(control_character_errors(value, name))
    elif isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            errors.extend(control_character_errors(value, f"{where}[{i}]"))
    return errors[:20]


def _upper(p: ParamSpec | None) -> float | None:
    """The largest value a numeric search dimension can take (None when absent or not numeric)."""
    if p is None:
        return None
    values = p.choices if p.kind == "choices" else [p.value] if p.kind == "fixed" else [p.high]
    numbers = [float(v) for v in values or [] if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return max(numbers) if numbers else None


def model_memory_bytes(spec: JobSpec, n_features: int, n_outputs: int = 10) -> int:
    """A rough upper estimate of the training memory of the largest model the search can build.

    float32 weights with their gradient and two Adam moments (4 x parameters) plus three copies of every
    layer's output (forward, activation/dropout, backward) for the largest batch size.
    """
    space = spec.effective_search_space()
    m = spec.model
    params: dict[str, Any] = {k: _upper(space.get(k)) for k in ("n_layers", "hidden_units")}
    depth = params["n_layers"]
    width = params["hidden_units"]
    hidden = list(m.hidden) or [64]
    if width is not None:
        hidden = [int(width)] * int(depth if depth is not None else len(hidden))
    elif depth is not None:
        hidden = (hidden + [hidden[-1]] * int(depth))[: int(depth)]
    batch = int(_upper(space.get("batch_size")) or 1)
    n_params = 0
    activations = 0
    if m.kind == "cnn":
        if m.input_shape is not None:
            c, h, w = m.input_shape
        elif spec.dataset.builtin == "digits":
            c, h, w = 1, 8, 8
        else:  # an image NPZ with unknown sides: assume a square single-channel image
            c, side = 1, max(1, math.isqrt(max(1, n_features)))
            h = w = side
        for out in m.channels:
            n_params += c * out * m.kernel_size**2 + out
            activations += out * h * w
            if h >= 2 and w >= 2:
                h, w = h // 2, w // 2
            c = out
        n_in = c * h * w
    else:
        n_in = n_features
    for width_ in [*hidden, n_outputs]:
        n_params += n_in * width_ + width_
        activations += width_
        n_in = width_
    return 4 * (4 * n_params + 3 * batch * (activations + n_features))


def memory_errors(spec: JobSpec, n_features: int) -> list[str]:
    """``model: ...`` when the largest model of the search would obviously not fit the memory limit."""
    limit = current_limits().max_model_bytes
    need = model_memory_bytes(spec, n_features)
    if need <= limit:
        return []
    return [(f"model: the largest model this search can build needs about {need / 2**30:.3g} GiB "
             f"(parameters and activations x batch size), more than the limit of {limit / 2**30:.3g} GiB; "
             "use fewer or narrower layers or a smaller batch_size")]


def objective_errors(objective: str, task: str) -> list[str]:
    """``objective: ...`` errors when the objective does not fit the task."""
    tasks = METRIC_DIRECTIONS[objective][1]
    if task not in tasks:
        return [f"objective: '{objective}' needs a {' or '.join(tasks)} task, but the task is {task}"]
    return []


def plugin_param_errors(name: str, p: ParamSpec) -> list[str]:
    """A plugin's own search dimension: an identifier; choices/value are JSON scalars Optuna can store."""
    where = f"search_space.{name}"
    if not name.isidentifier():
        return [f"{where}: a plugin's dimension needs an identifier as its name"]
    values = (p.choices or []) if p.kind == "choices" else [p.value] if p.kind == "fixed" else []
    bad = [v for v in values if v is not None and not isinstance(v, (bool, int, float, str))]
    return [f"{where}: choices must be numbers, strings, booleans or null, got {bad[0]!r}"] if bad else []


def is_integer_dimension(name: str, p: ParamSpec) -> bool:
    """Integer-valued search dimension: the built-in integer ones, or a range whose low, high and step
    are all whole numbers (how a plugin asks for one, e.g. ``{"low": 1, "high": 4, "step": 1}``)."""
    if name in _INTEGER_PARAMS:
        return True
    if name in CORE_HYPERPARAMETERS or name in OPTIONAL_HYPERPARAMETERS or p.kind != "range" or p.step is None:
        return False
    return all(float(v).is_integer() for v in (p.low, p.high, p.step))  # type: ignore[arg-type]


def _check_param(name: str, p: ParamSpec) -> list[str]:
    where = f"search_space.{name}"
    lo, hi = _bounds(name)
    if name == "optimizer":
        values = p.choices if p.kind == "choices" else [p.value] if p.kind == "fixed" else None
        if values is None:
            return [f"{where}: give choices from {', '.join(OPTIMIZERS)}"]
        bad = [v for v in values if v not in OPTIMIZERS]
        return [f"{where}: unknown optimizer {bad[0]!r} (known: {', '.join(OPTIMIZERS)})"] if bad else []
    if name == "init":
        values = p.choices if p.kind == "choices" else [p.value] if p.kind == "fixed" else None
        if values is None:
            return [f"{where}: give choices from {', '.join(INIT_SCHEMES)}"]
        bad = [v for v in values if not isinstance(v, str) or v not in INIT_SCHEMES]
        return [f"{where}: unknown initialisation {bad[0]!r} (known: {', '.join(INIT_SCHEMES)})"] if bad else []
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
        if name == "lr" and v <= 0:  # a zero learning rate trains nothing
            errors.append(f"{where}: {v!r} must be > 0")
            break
    integer = name in ("batch_size", "n_layers", "hidden_units") and p.kind == "range" and p.step is not None
    if integer and float(p.step) != int(p.step):  # type: ignore[arg-type]
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
    "finite_number": "must be a finite number (no Infinity or NaN)",
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
