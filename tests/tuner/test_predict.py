"""Predicting with a saved model from raw rows: list rows, rows by column name, frames; row/column errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_diabetes, load_iris

from tuner.artifacts import LoadedModel, load_model
from tuner.predict import InputError
from tuner.runner import run
from tuner.spec import parse_spec

SPEC: dict[str, Any] = {
    "name": "predict",
    "model": {"kind": "mlp", "hidden": [8]},
    "split": {"test_fraction": 0.2, "validation": {"kind": "holdout", "fraction": 0.25}, "seed": 0},
    "search_space": {"lr": {"value": 0.01}, "batch_size": {"value": 32}},
    "budget": {"n_trials": 1, "max_epochs": 2},
    "pruner": {"kind": "none"},
}


def _iris_with_colour(path: Path) -> pd.DataFrame:
    bunch = load_iris(as_frame=True)
    frame = bunch.frame.rename(columns={"target": "species"})
    frame["species"] = frame["species"].map(dict(enumerate(bunch.target_names)))
    frame.insert(2, "colour", np.where(np.arange(len(frame)) % 3 == 0, "red", "blue"))
    frame.to_csv(path, index=False)
    return frame


@pytest.fixture(scope="module")
def iris_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedModel, pd.DataFrame, str]:
    tmp = tmp_path_factory.mktemp("iris")
    frame = _iris_with_colour(tmp / "iris.csv")
    spec = parse_spec({**SPEC, "dataset": {"path": str(tmp / "iris.csv"), "target": "species"}})
    result = run(spec, artifacts_dir=tmp, progress=False, num_threads=1)
    return load_model(result["model_path"]), frame, result["model_path"]


def _plain_types_only(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_types_only(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain_types_only(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool, torch.Tensor))


def test_model_file_holds_only_plain_types(iris_model) -> None:
    _, _, path = iris_model
    payload = torch.load(path, weights_only=True)
    assert _plain_types_only(payload)
    assert {"state_dict", "spec", "preprocessing", "classes", "columns"} <= set(payload)
    assert payload["classes"] == ["setosa", "versicolor", "virginica"]


def test_list_rows_named_rows_and_frames_predict_like_predict(iris_model) -> None:
    model, frame, _ = iris_model
    X = frame.drop(columns="species").iloc[::10].reset_index(drop=True)
    expected_labels = model.predict(X)
    expected_proba = model.predict_proba(X)
    for rows in (X.values.tolist(), X.to_dict(orient="records"), X, frame.iloc[::10]):  # target column ignored
        out = model.predict_frame(rows)
        assert [r["label"] for r in out] == list(expected_labels)
        got = np.array([[r["probabilities"][c] for c in model.classes] for r in out])
        assert np.array_equal(got, expected_proba.astype(np.float64))


def test_unknown_category_is_all_zeros_like_training(iris_model) -> None:
    model, frame, _ = iris_model
    X = frame.drop(columns="species").head(2).copy()
    X["colour"] = "purple"
    encoded = model.preprocessor.transform(model.check(X))
    onehot = [i for i, n in enumerate(model.preprocessor.feature_names) if n.startswith("colour=")]
    assert len(onehot) == 2 and not encoded[:, onehot].any()
    assert len(model.predict_frame(X)) == 2


def _problems(model: LoadedModel, rows: Any) -> list[str]:
    with pytest.raises(InputError) as err:
        model.predict_frame(rows)
    return [str(p) for p in err.value.problems]


def test_bad_rows_name_the_row_and_column(iris_model) -> None:
    model, frame, _ = iris_model
    good = frame.drop(columns="species").iloc[0].tolist()
    named = frame.drop(columns="species").iloc[0].to_dict()
    assert _problems(model, [good, good[:3]]) == [
        ("row 1: has 3 values; the model takes 5 (sepal length (cm), sepal width (cm), colour, "
        "petal length (cm), petal width (cm))")
    ]
    assert _problems(model, [named, {**named, "height": 3}]) == ["row 1, column 'height': unknown column"]
    partial = {k: v for k, v in named.items() if k != "sepal width (cm)"}
    assert _problems(model, [partial]) == ["row 0, column 'sepal width (cm)': missing column"]
    assert _problems(model, [good, [*good[:3], "abc", good[4]]]) == [
        "row 1, column 'petal length (cm)': not a number: 'abc'"
    ]
    assert _problems(model, [[good[0], True, *good[2:]]]) == ["row 0, column 'sepal width (cm)': not a number: True"]
    assert _problems(model, [[None, *good[1:]], [*good[:2], None, *good[3:]]]) == [
        "row 0, column 'sepal length (cm)': missing value (the model was trained without imputation)",
        "row 1, column 'colour': missing value (the model was trained without imputation)",
    ]
    assert _problems(model, [[float("inf"), *good[1:]]]) == ["row 0, column 'sepal length (cm)': infinite value"]
    assert _problems(model, ["abc"]) == ["row 0: must be a list of values or an object keyed by column name"]
    bad_frame = frame.drop(columns=["species", "colour"]).assign(extra=1)
    assert _problems(model, bad_frame) == ["column 'extra': unknown column", "column 'colour': missing column"]
    assert model.predict_frame(["1"] * 0) == []


def test_regression_with_imputation_predicts_in_target_units(tmp_path: Path) -> None:
    bunch = load_diabetes(as_frame=True)
    frame = bunch.frame.copy()
    frame.loc[::7, "bmi"] = np.nan
    frame.to_csv(tmp_path / "diabetes.csv", index=False)
    spec = parse_spec({**SPEC, "objective": "mse",
                       "dataset": {"path": str(tmp_path / "diabetes.csv"), "target": "target", "impute": "mean"}})
    result = run(spec, artifacts_dir=tmp_path, progress=False, num_threads=1)
    model = load_model(result["model_path"])
    X = frame.drop(columns="target").head(8)
    assert X["bmi"].isna().any()
    out = model.predict_frame(X.astype(object).where(X.notna(), None).values.tolist())
    assert [r["value"] for r in out] == model.predict(X).tolist()
    assert 25 < np.mean([r["value"] for r in out]) < 350  # the target's units, not standardised
