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


# ------------------------------------------------ issue 19: labels by value, kinds by the training part's values
def test_canonical_labels_compare_by_value_and_order_numbers_before_text() -> None:
    from tuner.data import canonical_label

    assert [canonical_label(v) for v in ("1", 1, 1.0, np.int64(1), " 1.0", "1e0")] == [1] * 6
    assert [type(canonical_label(v)) for v in ("2.5", np.float32(2.5), -3.0, "007")] == [float, float, int, int]
    assert [canonical_label(v) for v in (True, np.bool_(False), "true", "FALSE")] == ["True", "False", "True", "False"]
    assert [canonical_label(v) for v in ("?", "nan", "inf", float("inf"), "1_000", "")] == \
        ["?", "nan", "inf", "inf", "1_000", ""]
    assert [canonical_label(v) for v in (None, float("nan"), np.nan, pd.NA)] == [None] * 4
    assert infer_task(np.array(["1", "2", "3"], dtype=object)) == "classification"
    assert infer_task(np.array([0.5, "?", 1.5, 2.25], dtype=object)) == "regression"  # one token among numbers
    assert infer_task(np.array(["cat", "dog", "2.5"], dtype=object)) == "classification"  # mostly text
    assert infer_task(np.array([True, False])) == "classification"


def test_class_list_is_numbers_in_numeric_order_then_text(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = np.array(["10", "2", "b", "a", "1.5", "2.0", "-1"] * 10, dtype=object)
    pd.DataFrame({"x": rng.normal(size=70), "label": labels}).to_csv(tmp_path / "m.csv", index=False)
    data = prepare_data(_csv_spec(tmp_path / "m.csv", dataset={"path": str(tmp_path / "m.csv"), "target": "label",
                                                               "task": "classification"}))
    assert data.classes == [-1, 1.5, 2, 10, "a", "b"]  # "2" and "2.0" are one class
    assert [type(c) for c in data.classes] == [int, float, int, int, str, str]
    assert np.bincount(data.dev_y).sum() == len(data.splits.dev)


@pytest.mark.parametrize("builtin", ["iris", "digits", "wine", "breast_cancer"])
@pytest.mark.parametrize("validation", [{"kind": "holdout", "fraction": 0.25}, {"kind": "kfold", "k": 4}])
def test_stratified_splits_are_the_ones_raw_labels_gave(make_spec, builtin: str, validation: dict) -> None:
    """The stratification key is integer codes in the label order np.unique gave before (issue 19): the
    same test rows and folds for builtin (int) labels, their text names and booleans."""
    from sklearn import datasets as skdatasets
    from sklearn.model_selection import StratifiedKFold, train_test_split

    y = getattr(skdatasets, f"load_{builtin}")().target

    def old_split(key: np.ndarray, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
        dev, test = train_test_split(np.arange(len(key)), test_size=0.2, random_state=seed, stratify=key)
        dev = np.sort(dev)
        if validation["kind"] == "holdout":
            _, va = train_test_split(np.arange(len(dev)), test_size=0.25, random_state=seed, stratify=key[dev])
            return np.sort(test), [np.sort(va)]
        skf = StratifiedKFold(n_splits=4, shuffle=True, random_state=seed)
        return np.sort(test), [np.sort(va) for _, va in skf.split(np.zeros(len(dev)), key[dev])]

    for seed in (0, 7):
        data = prepare_data(make_spec(dataset={"builtin": builtin}, split={"seed": seed, "validation": validation}))
        test, vals = old_split(y, seed)
        np.testing.assert_array_equal(data.splits.test, test)
        for (_, va), expected in zip(data.splits.folds, vals, strict=True):
            np.testing.assert_array_equal(va, expected)
    # text labels ("class_10" sorts before "class_2", as np.unique on strings did) and booleans
    from tuner.data import _codes, _label_key, split_indices

    for key in (np.array([f"class_{v}" for v in y], dtype=object), y == y.max()):
        labels = np.array([str(v) if isinstance(v, str) else ("True" if v else "False") for v in key], dtype=object)
        codes = _codes(labels, sorted(set(labels.tolist()), key=_label_key))
        spec = make_spec(dataset={"builtin": builtin}, split={"seed": 3, "validation": validation})
        got = split_indices(spec, codes, "classification")
        expected_test, expected_vals = old_split(np.asarray(key).astype(str), 3)
        np.testing.assert_array_equal(got.test, expected_test)
        for (_, va), expected in zip(got.folds, expected_vals, strict=True):
            np.testing.assert_array_equal(va, expected)


def test_column_kinds_follow_the_values_not_the_dtype() -> None:
    from tuner.data import column_kinds

    n = 6
    frame = pd.DataFrame({
        "flag_bool": [True, False] * 3,
        "flag_object": pd.Series([True, False, True, True, False, True], dtype=object),  # the file had a NaN
        "flag_text": ["True", "false", "TRUE", "False", "true", "False"],  # the file had a token
        "num_text": pd.Series(["1.5", "2", "-3e2", "4", "5", "6"], dtype=object),
        "date": [f"2024-01-0{i}" for i in range(1, n + 1)],
        "colour": ["red", "blue"] * 3,
    })
    numeric, categories = column_kinds(frame)
    assert numeric == ["num_text"]
    assert categories == {"flag_bool": ["False", "True"], "flag_object": ["False", "True"],
                          "flag_text": ["False", "True"], "date": sorted(frame["date"]),
                          "colour": ["blue", "red"]}
