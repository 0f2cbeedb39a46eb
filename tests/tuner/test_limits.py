"""Bounds at the door: every spec number and list has a limit, named in the error with its value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuner import limits
from tuner.limits import Limits
from tuner.spec import SpecError, model_memory_bytes, parse_spec

BASE = {"name": "b", "dataset": {"builtin": "iris"}}


def _errors(**over: object) -> list[str]:
    with pytest.raises(SpecError) as exc:
        parse_spec({**BASE, **over})
    return exc.value.errors


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"budget": {"timeout_s": 1e12}}, "budget.timeout_s: must be at most 604800"),
        ({"budget": {"timeout_s": float("inf")}}, "budget.timeout_s: must be a finite number (no Infinity or NaN)"),
        ({"budget": {"timeout_s": float("nan")}}, "budget.timeout_s: must be a finite number (no Infinity or NaN)"),
        ({"budget": {"n_trials": 10**9}}, "budget.n_trials: must be at most 100000"),
        ({"budget": {"max_epochs": 10**6}}, "budget.max_epochs: must be at most 10000"),
        ({"early_stopping": {"patience": 10**9}}, "early_stopping.patience: must be at most 10000"),
        ({"early_stopping": {"min_delta": float("inf")}},
         "early_stopping.min_delta: must be a finite number (no Infinity or NaN)"),
        ({"model": {"hidden": [10**6]}}, "model.hidden: each width must be at most 65536"),
        ({"model": {"hidden": [8] * 17}}, "model.hidden: must have at most 16 layers"),
        ({"model": {"kind": "cnn", "channels": [4] * 9, "input_shape": [1, 8, 8]}},
         "model.channels: must have at most 8 conv blocks"),
        ({"model": {"kind": "cnn", "channels": [5000], "input_shape": [1, 8, 8]}},
         "model.channels: each channel count must be at most 1024"),
        ({"model": {"kind": "cnn", "kernel_size": 99, "input_shape": [1, 8, 8]}}, "model.kernel_size: must be at most 15"),
        ({"search_space": {"batch_size": {"choices": list(range(1, 1002))}}},
         "search_space.batch_size.choices: must have at most 1000 entries"),
        ({"search_space": {"lr": {"low": 1e-3, "high": float("inf")}}},
         "search_space.lr.high: must be a finite number (no Infinity or NaN)"),
        ({"search_space": {"momentum": {"choices": [float("nan")]}}},
         "search_space.momentum: values must be finite numbers (no Infinity or NaN)"),
        ({"search_space": {"hidden_units": {"value": 10**6}}},
         "search_space.hidden_units: 1000000 is outside the allowed range [1, 65536]"),
        ({"sampler": {"kind": "tpe", "n_ei_candidates": 10**12}}, "sampler.n_ei_candidates: must be at most 10000"),
        ({"sampler": {"kind": "tpe", "n_startup_trials": 10**9}}, "sampler.n_startup_trials: must be at most 100000"),
        ({"sampler": {"kind": "tpe", "n_ei_candidates": "many"}},
         "sampler.n_ei_candidates: Input should be a valid integer, unable to parse string as an integer"),
        ({"sampler": {"kind": "cmaes", "popsize": 10**9}}, "sampler.popsize: must be at most 10000"),
        ({"sampler": {"kind": "random", "n_ei_candidates": 5}},
         "sampler.n_ei_candidates: not a parameter of the random sampler (known: none)"),
        ({"pruner": {"kind": "median", "n_warmup_steps": 10**12}}, "pruner.n_warmup_steps: must be at most 100000"),
        ({"pruner": {"kind": "hyperband", "reduction_factor": 1000}}, "pruner.reduction_factor: must be at most 100"),
        ({"pruner": {"kind": "hyperband", "max_resource": 10**9}}, "pruner.max_resource: must be at most 10000"),
        ({"pruner": {"kind": "successive_halving", "bootstrap_count": 10**6}},
         "pruner.bootstrap_count: must be at most 1000"),
        ({"pruner": {"kind": "percentile", "percentile": 150}}, "pruner.percentile: must be at most 100.0"),
        ({"pruner": {"kind": "percentile"}}, "pruner.percentile: is required for the percentile pruner"),
        ({"pruner": {"kind": "patient", "patience": 10**9}}, "pruner.patience: must be at most 10000"),
    ],
)
def test_each_bound_names_field_and_limit(over: dict, message: str) -> None:
    assert message in _errors(**over)


def test_memory_estimate_refuses_a_model_that_cannot_fit() -> None:
    errs = _errors(search_space={"hidden_units": {"value": 60000}, "n_layers": {"value": 16},
                                 "batch_size": {"value": 100000}})
    assert errs[0].startswith("model: the largest model this search can build needs about ")
    assert "more than the limit of 4 GiB" in errs[0]
    # The estimate uses the search space's upper bounds, not the model's fixed hidden sizes.
    small = parse_spec({**BASE, "model": {"hidden": [8]}})
    wide = parse_spec({**BASE, "model": {"hidden": [8]}, "search_space": {"hidden_units": {"low": 8, "high": 4096}}})
    assert model_memory_bytes(wide, 4) > 100 * model_memory_bytes(small, 4)


def test_limits_can_be_overridden() -> None:
    try:
        limits.configure(Limits(max_timeout_s=60, max_width=32))
        errs = _errors(budget={"timeout_s": 61}, model={"hidden": [64]})
        assert "budget.timeout_s: must be at most 60" in errs and "model.hidden: each width must be at most 32" in errs
    finally:
        limits.configure(Limits())
    parse_spec({**BASE, "budget": {"timeout_s": 61}, "model": {"hidden": [64]}})


@pytest.mark.parametrize("kind", ["median", "percentile", "successive_halving", "hyperband", "patient", "none"])
def test_typed_pruner_arguments_round_trip(kind: str) -> None:
    extra = {"percentile": 40.0} if kind == "percentile" else {}
    spec = parse_spec({**BASE, "pruner": {"kind": kind, **extra}, "sampler": {"kind": "cmaes", "popsize": 8}})
    again = parse_spec(spec.model_dump(mode="json"))  # what the service stores and the worker reads
    assert again == spec
    assert type(again.pruner.build()) is type(spec.pruner.build())
    assert again.sampler.build()._popsize == 8


def test_examples_are_within_the_limits() -> None:
    for path in Path(__file__).parents[2].joinpath("examples").glob("*.json"):
        parse_spec(json.loads(path.read_text()))
