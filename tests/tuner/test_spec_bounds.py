"""Spec bounds checked at submit (issue 20): every number that could fail later is refused up front, naming
the field: seeds, fractions, folds against the data's rows, stepped ranges, dimension counts, grid sizes."""

from __future__ import annotations

from typing import Any

import pytest

from tuner.limits import current as current_limits
from tuner.spec import SpecError, parse_spec, split_errors


def _spec(**over: Any) -> Any:
    return parse_spec({"name": "bounds", "dataset": {"builtin": "iris"}, **over})


@pytest.mark.parametrize(("over", "message"), [
    ({"split": {"seed": 2**64}}, "split.seed: must be at most 4294967295"),
    ({"split": {"seed": -1}}, "split.seed: must be at least 0"),
    ({"split": {"test_fraction": 1e-300}}, "split.test_fraction: must be at least 0.01"),
    ({"split": {"validation": {"kind": "holdout", "fraction": 0.999}}}, "split.validation.fraction: must be at most 0.9"),
    ({"split": {"validation": {"kind": "kfold", "k": 50}}},
     "split.validation.k: 50 folds, but the largest class has only 40 non-test rows; use at most 40"),
    ({"search_space": {"dropout": {"low": 0, "high": 0.5, "step": 5e-324}}},
     "search_space.dropout.step: 4.94066e-324 gives more than 1,000,000 values between low and high; use at least 5e-07"),
    ({"search_space": {"dropout": {"low": 0, "high": 0.5, "step": -0.1}}},
     "search_space.dropout.step: must be a finite number > 0"),
    ({"search_space": {"dropout": {"low": 0, "high": 0.5, "step": 0}}},
     "search_space.dropout.step: must be a finite number > 0"),
    ({"search_space": {"dropout": {"low": 0, "high": 0.5, "step": float("inf")}}},
     "search_space.dropout.step: must be a finite number (no Infinity or NaN)"),
    ({"split": {"seed": float("inf")}}, "split.seed: must be a finite number (no Infinity or NaN)"),
    ({"split": {"test_fraction": float("nan")}}, "split.test_fraction: must be a finite number (no Infinity or NaN)"),
    ({"weight_decay_on": ""}, "weight_decay_on: Input should be 'weights' or 'all'"),
    ({"search_space": {"init": {"choices": []}}}, "search_space.init.choices: must not be empty"),
    ({"search_space": {"init": {"choices": ["HE"]}}},
     "search_space.init: unknown initialisation 'HE' (known: auto, he, xavier, glorot, torch)"),
])
def test_numbers_that_would_fail_later_are_refused_naming_the_field(over: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as exc:
        _spec(**over)
    assert message in exc.value.errors, exc.value.errors


def test_the_edges_still_pass() -> None:
    _spec(split={"seed": 2**32 - 1, "test_fraction": 0.01, "validation": {"kind": "kfold", "k": 40}})
    _spec(split={"stratify": False, "validation": {"kind": "kfold", "k": 50}})  # 120 rows, 50 folds: fine unstratified
    _spec(search_space={"dropout": {"low": 0, "high": 0.5, "step": 5e-7}})


def test_grid_size_is_bounded() -> None:
    big = {"choices": list(range(1, 1001))}
    space = {"lr": {"choices": [0.001, 0.01]}, "dropout": {"choices": [0.1, 0.2]},
             "batch_size": big, "weight_decay": {"value": 0.0}, "hidden_units": big}
    with pytest.raises(SpecError) as exc:
        _spec(sampler={"kind": "grid"}, search_space=space, model={"hidden": [8]})
    assert ("search_space: the grid has 4e+06 points, more than the limit of 1,000,000; use fewer choices or "
            "another sampler") in exc.value.errors
    space["hidden_units"] = {"choices": [8, 16]}
    _spec(sampler={"kind": "grid"}, search_space=space, model={"hidden": [8]})


def test_plugin_dimensions_are_counted(resmlp_plugin: str) -> None:
    limit = current_limits().max_dimensions
    extra = {f"p{i}": {"low": 0.0, "high": 1.0} for i in range(limit)}
    with pytest.raises(SpecError) as exc:
        _spec(model={"kind": "plugin", "name": resmlp_plugin}, search_space=extra)
    assert f"search_space: {limit + 4} dimensions, more than the limit of {limit}" in exc.value.errors


def test_split_errors_from_row_counts() -> None:
    split = _spec().split
    assert split_errors(split, 3, None, "regression") == []  # 1 test row, 2 others
    assert split_errors(split, 2, None, "regression")[0].startswith("split.test_fraction: 0.2 of 2 rows")
    kfold = _spec(split={"validation": {"kind": "kfold", "k": 10}}).split
    assert split_errors(kfold, 12, None, "regression")[0].startswith("split.validation.k: 10 folds, but there are only 9")
    assert split_errors(kfold, 100, [5, 95], "classification") == []  # the largest class has 76 rows
