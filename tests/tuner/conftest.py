"""Shared helpers for the engine tests: tiny specs that train in well under a second."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch

from tuner.spec import JobSpec, parse_spec

BASE: dict[str, Any] = {
    "name": "tiny",
    "dataset": {"builtin": "iris"},
    "model": {"kind": "mlp", "hidden": [8], "activation": "relu"},
    "split": {"test_fraction": 0.2, "validation": {"kind": "holdout", "fraction": 0.25}, "seed": 0},
    "search_space": {"lr": {"low": 1e-3, "high": 3e-2, "log": True}, "batch_size": {"choices": [16, 32]}},
    "budget": {"n_trials": 3, "max_epochs": 4, "timeout_s": 60},
    "early_stopping": {"patience": 3},
    "pruner": {"kind": "none"},
    "sampler": {"kind": "random", "seed": 1},
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _make_spec(**over: Any) -> JobSpec:
    return parse_spec(_merge(BASE, over))


def _spec_dict(**over: Any) -> dict[str, Any]:
    return _merge(BASE, over)


# Helpers are fixtures (not imports) so the test folder needs no __init__.py: a package named
# ``tuner`` under tests/ would shadow the real ``tuner`` package.
@pytest.fixture
def make_spec() -> Callable[..., JobSpec]:
    """``make_spec(**over)``: the tiny base spec with top-level sections updated key by key (dicts) or
    replaced (other values)."""
    return _make_spec


@pytest.fixture
def spec_dict() -> Callable[..., dict[str, Any]]:
    """``spec_dict(**over)``: like ``make_spec`` but the raw dict, unvalidated."""
    return _spec_dict


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)
