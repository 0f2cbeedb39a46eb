"""Loading, task inference, splits and train-only preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_iris

from tuner.data import infer_task, prepare_data
from tuner.spec import SpecError, parse_spec


def _csv_spec(path: Path, **over: object) -> object:
    d = {"name": "csv", "dataset": {"path": str(path), "target": "label"}, "model": {"hidden": [4]}}
    d.update(over)
    return parse_spec(d)


def test_holdout_split_disjoint_and_complete(make_spec) -> None:
    data = prepare_data(make_spec())
    s = data.splits
    assert len(np.intersect1d(s.dev, s.test)) == 0
    assert sorted(np.concatenate([s.dev, s.test]).tolist()) == list(range(150))
    tr, va = s.folds[0]
    assert len(np.intersect1d(tr, va)) == 0
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(len(s.dev)))
    assert len(s.test) == 30 and len(va) == 30


def test_stratified_test_split_keeps_class_proportions(make_spec) -> None:
    data = prepare_data(make_spec(dataset={"builtin": "breast_cancer"}))
    dev_share = data.dev_y.mean()
    test_share = data.take_test().y.mean()
    assert abs(dev_share - test_share) < 0.01
    assert np.bincount(prepare_data(make_spec()).take_test().y).tolist() == [10, 10, 10]


def test_kfold_covers_every_non_test_row_once_and_is_stratified(make_spec) -> None:
    data = prepare_data(make_spec(split={"validation": {"kind": "kfold", "k": 4}}))
    val = np.concatenate([va for _, va in data.splits.folds])
    assert sorted(val.tolist()) == list(range(len(data.dev_y)))
    for (tr, va), fold in zip(data.splits.folds, data.folds):
        assert len(np.intersect1d(tr, va)) == 0
        assert len(tr) + len(va) == len(data.dev_y)
        counts = np.bincount(data.dev_y[va], minlength=3)
        assert counts.max() - counts.min() <= 1
        assert fold.X_val is not None and len(fold.X_val) == len(va)


def test_split_is_deterministic_by_seed(make_spec) -> None:
    a, b = prepare_data(make_spec()), prepare_data(make_spec())
    c = prepare_data(make_spec(split={"seed": 5}))
    assert np.array_equal(a.splits.test, b.splits.test)
    assert np.array_equal(a.splits.folds[0][1], b.splits.folds[0][1])
    assert not np.array_equal(a.splits.test, c.splits.test)


def test_standardisation_uses_training_part_only(make_spec) -> None:
    data = prepare_data(make_spec())
    fold = data.folds[0]
    train_rows = data.dev_frame.iloc[fold.train_idx].to_numpy()
    np.testing.assert_allclose(fold.preprocessor.standardizer.mean, train_rows.mean(axis=0))
    np.testing.assert_allclose(fold.preprocessor.standardizer.scale, train_rows.std(axis=0))
    np.testing.assert_allclose(fold.X_train.mean(0).numpy(), 0, atol=1e-5)
    all_rows = data.dev_frame.to_numpy()
    assert not np.allclose(fold.preprocessor.standardizer.mean, all_rows.mean(axis=0))


def test_test_rows_do_not_change_fitted_statistics(tmp_path: Path) -> None:
    X, y = load_iris(return_X_y=True)
    frame = pd.DataFrame(X, columns=list("abcd")).assign(label=y)
    frame.to_csv(tmp_path / "a.csv", index=False)
    spec = _csv_spec(tmp_path / "a.csv", split={"stratify": False})
    clean = prepare_data(spec)
    frame.loc[clean.splits.test, ["a", "b"]] = 1e6
    frame.to_csv(tmp_path / "a.csv", index=False)
    dirty = prepare_data(spec)
    assert clean.test_access_count == 0
    np.testing.assert_array_equal(clean.folds[0].X_train.numpy(), dirty.folds[0].X_train.numpy())
    np.testing.assert_array_equal(clean.folds[0].preprocessor.standardizer.mean, dirty.folds[0].preprocessor.standardizer.mean)


def test_csv_categoricals_one_hot_and_string_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 60
    frame = pd.DataFrame({
        "x": rng.normal(size=n),
        "colour": rng.choice(["red", "green", "blue"], size=n),
        "label": rng.choice(["cat", "dog"], size=n),
    })
    frame.to_parquet(tmp_path / "a.parquet")
    data = prepare_data(_csv_spec(tmp_path / "a.parquet"))
    assert data.task == "classification" and data.classes == ["cat", "dog"]
    assert data.feature_names == ["x", "colour=blue", "colour=green", "colour=red"]
    onehot = data.folds[0].X_train[:, 1:].numpy()
    assert set(np.unique(onehot)) == {0.0, 1.0} and np.all(onehot.sum(1) == 1)


def test_missing_values_need_impute_and_impute_uses_training_part(tmp_path: Path) -> None:
    X, y = load_iris(return_X_y=True)
    frame = pd.DataFrame(X, columns=list("abcd")).assign(label=y)
    frame.to_csv(tmp_path / "m.csv", index=False)
    dev_rows = prepare_data(_csv_spec(tmp_path / "m.csv")).splits.dev
    frame.loc[dev_rows[[0, 5, 77]], "a"] = np.nan
    frame.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(SpecError) as exc:
        prepare_data(_csv_spec(tmp_path / "m.csv"))
    assert exc.value.errors == [
        "dataset.impute: the features have 3 missing values in the non-test rows; set it to 'mean' or 'median'"
    ]
    data = prepare_data(_csv_spec(tmp_path / "m.csv", dataset={"path": str(tmp_path / "m.csv"), "target": "label",
                                                               "impute": "median"}))
    fold = data.folds[0]
    train_a = data.dev_frame.iloc[fold.train_idx]["a"]
    assert fold.preprocessor.impute_values[0] == pytest.approx(train_a.median())
    assert not np.isnan(fold.X_train.numpy()).any() and not np.isnan(fold.X_val.numpy()).any()


def test_npz_images_and_data_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "img.npz", X=rng.normal(size=(40, 2, 4, 4)), y=rng.integers(0, 2, 40))
    spec = parse_spec({"name": "n", "dataset": {"path": str(tmp_path / "img.npz")}, "model": {"kind": "cnn"}})
    data = prepare_data(spec)
    assert data.input_shape == (2, 4, 4) and data.n_features == 32
    np.savez(tmp_path / "bad.npz", A=np.zeros((3, 2)))
    with pytest.raises(SpecError, match="needs arrays 'X' and 'y'"):
        prepare_data(parse_spec({"name": "n", "dataset": {"path": str(tmp_path / "bad.npz")}}))
    with pytest.raises(SpecError) as exc:
        prepare_data(parse_spec({"name": "n", "dataset": {"path": str(tmp_path / "nope.csv"), "target": "y"}}))
    assert exc.value.errors[0].startswith("dataset.path: no such file")
    with pytest.raises(SpecError) as exc:
        prepare_data(parse_spec({"name": "n", "dataset": {"id": "abc"}}))
    assert exc.value.errors[0].startswith("dataset.id: ")


def test_task_inference() -> None:
    assert infer_task(np.array([0, 1, 2, 1])) == "classification"
    assert infer_task(np.array(["a", "b"])) == "classification"
    assert infer_task(np.array([0.5, 1.2, 3.0])) == "regression"
    assert infer_task(np.arange(100).astype(float)) == "regression"
    assert infer_task(np.array([1.0, 2.0, 1.0])) == "classification"


def test_regression_data_and_objective_mismatch(make_spec, tmp_path: Path) -> None:
    data = prepare_data(make_spec(dataset={"builtin": "diabetes"}, split={"stratify": None}))
    assert data.task == "regression" and data.n_outputs == 1
    assert abs(float(data.folds[0].y_train.mean())) < 1e-5  # target standardised with training stats
    rng = np.random.default_rng(0)
    pd.DataFrame({"x": rng.normal(size=50), "label": rng.normal(size=50)}).to_csv(tmp_path / "r.csv", index=False)
    with pytest.raises(SpecError) as exc:
        prepare_data(_csv_spec(tmp_path / "r.csv", objective="accuracy"))
    assert exc.value.errors == ["objective: 'accuracy' needs a classification task, but the task is regression"]
    with pytest.raises(SpecError) as exc:
        prepare_data(_csv_spec(tmp_path / "r.csv", split={"stratify": True}))
    assert exc.value.errors == ["split.stratify: stratification needs a classification task"]


def test_take_test_counts_accesses(make_spec) -> None:
    data = prepare_data(make_spec())
    assert data.test_access_count == 0
    assert not hasattr(data, "test")
    data.take_test()
    assert data.test_access_count == 1
