"""The saved best model: reloads to the same predictions, and holds the best trial's kept weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tuner.artifacts import load_model
from tuner.data import prepare_data
from tuner.objective import Objective
from tuner.runner import finalize, open_study, optimize
from tuner.training import evaluate


def _search_and_finalize(spec, tmp_path: Path, *, save_states: bool = True):  # type: ignore[no-untyped-def]
    data = prepare_data(spec)
    study = open_study(spec, None)
    optimize(study, Objective(spec, data, artifacts_dir=tmp_path if save_states else None), n_trials=3, timeout_s=None)
    finalize(study, spec, data, artifacts_dir=tmp_path)
    return data, study, load_model(study.user_attrs["model_path"])


def test_reload_reproduces_validation_value_and_predictions(make_spec, tmp_path: Path) -> None:
    spec = make_spec()
    data, study, loaded = _search_and_finalize(spec, tmp_path)
    best = study.best_trial
    assert Path(best.user_attrs["state_path"]).is_file()
    fold = data.folds[0]
    loss, _ = evaluate(loaded.model, fold.X_val, fold.y_val, "classification")
    assert loss == pytest.approx(best.value, rel=1e-5)  # the best trial's kept (best-epoch) weights
    raw_val = data.dev_frame.iloc[fold.val_idx]
    proba = loaded.predict_proba(raw_val)
    assert np.allclose(proba.sum(1), 1, atol=1e-5)
    again = load_model(study.user_attrs["model_path"])
    assert np.array_equal(loaded.predict(raw_val), again.predict(raw_val.to_numpy()))
    assert set(loaded.predict(raw_val)) <= {0, 1, 2}
    assert loaded.classes == [0, 1, 2] and loaded.params == best.params


def test_without_saved_states_finalize_retrains_the_same_weights(make_spec, tmp_path: Path) -> None:
    spec = make_spec()
    data, study, loaded = _search_and_finalize(spec, tmp_path, save_states=False)
    assert "state_path" not in study.best_trial.user_attrs
    fold = data.folds[0]
    loss, _ = evaluate(loaded.model, fold.X_val, fold.y_val, "classification")
    assert loss == pytest.approx(study.best_value, rel=1e-5)


def test_regression_model_predicts_in_target_units(make_spec, tmp_path: Path) -> None:
    spec = make_spec(dataset={"builtin": "diabetes"}, split={"stratify": None}, objective="mse")
    data, study, loaded = _search_and_finalize(spec, tmp_path)
    fold = data.folds[0]
    pred = loaded.predict(data.dev_frame.iloc[fold.val_idx])
    mse = float(np.mean((pred - data.dev_y[fold.val_idx]) ** 2))
    assert mse == pytest.approx(study.best_value, rel=1e-4)
    with pytest.raises(AttributeError):
        loaded.predict_proba(data.dev_frame.iloc[:3])


def test_saved_file_is_weights_only_and_complete(make_spec, tmp_path: Path) -> None:
    spec = make_spec(model={"kind": "cnn", "channels": [2], "hidden": [8]}, dataset={"builtin": "digits"},
                     budget={"n_trials": 2, "max_epochs": 2})
    _, study, loaded = _search_and_finalize(spec, tmp_path)
    payload = torch.load(study.user_attrs["model_path"], weights_only=True)
    assert set(payload) >= {"state_dict", "spec", "preprocessing", "classes", "params", "task"}
    assert payload["input_shape"] == [1, 8, 8]
    X = pd.DataFrame(np.zeros((2, 64)), columns=loaded.columns)
    assert loaded.predict(X).shape == (2,)
