"""Model families: built-ins and installed plugins through one registry; the example plugin tuned end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tuner import registry
from tuner.artifacts import load_model
from tuner.models import MLP, build_model
from tuner.runner import run
from tuner.spec import ModelSpec, SpecError, load_spec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plugin-resmlp"


def test_builtins_go_through_the_registry() -> None:
    assert registry.get_factory("mlp") is registry.get_factory("mlp")
    model = build_model(ModelSpec(hidden=[4]), {"dropout": 0.0}, 3, 2)
    assert isinstance(model, MLP)
    with pytest.raises(KeyError, match="no model family 'nope'"):
        registry.get_factory("nope")


def test_unknown_plugin_is_refused_with_the_installed_names(make_spec) -> None:
    with pytest.raises(SpecError) as err:
        make_spec(model={"kind": "plugin", "name": "nope"})
    [line] = err.value.errors
    assert line.startswith("model.name: no installed model plugin 'nope' (installed: ")
    for bad in ("tuner.models:mlp_factory", "os.system", "../x"):
        with pytest.raises(SpecError):
            make_spec(model={"kind": "plugin", "name": bad})
    with pytest.raises(SpecError, match="model.name: is required for kind 'plugin'"):
        make_spec(model={"kind": "plugin"})
    with pytest.raises(SpecError, match="model.name: 'mlp' is a built-in family"):
        make_spec(model={"kind": "plugin", "name": "mlp"})
    with pytest.raises(SpecError, match="model.name: 'name' and 'options' are for kind 'plugin'"):
        make_spec(model={"kind": "mlp", "options": {"width": 3}})
    with pytest.raises(SpecError, match="search_space.n_blocks: unknown hyperparameter"):
        make_spec(search_space={"n_blocks": {"low": 1, "high": 3, "step": 1}})


def test_plugin_options_are_checked_against_its_factory(make_spec, resmlp_plugin: str) -> None:
    assert registry.installed_plugins() == ["resmlp"]
    with pytest.raises(SpecError) as err:
        make_spec(model={"kind": "plugin", "name": resmlp_plugin, "options": {"widht": 8}})
    assert err.value.errors == ["model.options.widht: not an option of the 'resmlp' plugin (known: width, n_blocks)"]
    spec = make_spec(model={"kind": "plugin", "name": "resmlp", "options": {"width": 8}})
    model = build_model(spec.model, {"dropout": 0.1, "n_blocks": 3}, 4, 3)
    assert type(model).__name__ == "ResMLP" and len(model.blocks) == 3
    assert model(torch.zeros(2, 4)).shape == (2, 3)


def test_example_plugin_is_tuned_with_its_own_dimension(resmlp_plugin: str, tmp_path: Path) -> None:
    spec = load_spec(EXAMPLE / "iris-resmlp.json")  # the example's own spec, on a tiny budget
    assert spec.model.name == resmlp_plugin and "n_blocks" in spec.search_space
    spec = spec.model_copy(update={"budget": spec.budget.model_copy(update={"n_trials": 2, "max_epochs": 3})})
    result = run(spec, artifacts_dir=tmp_path, progress=False, num_threads=1)
    assert result["status"] == "completed" and result["counts"]["complete"] == 2
    n_blocks = result["best_trial"]["params"]["n_blocks"]
    assert isinstance(n_blocks, int) and 1 <= n_blocks <= 3  # whole-number range -> an integer dimension
    loaded = load_model(result["model_path"])
    assert type(loaded.model).__name__ == "ResMLP" and len(loaded.model.blocks) == n_blocks
    assert torch.load(result["model_path"], weights_only=True)["spec"]  # plain types only
