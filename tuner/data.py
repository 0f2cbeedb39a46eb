"""Data: loading (builtin / CSV / Parquet / NPZ), task inference, splits and preprocessing.

Everything fitted (imputation values, standardisation statistics, the regression target's scale) is
fitted on the training part of each split only. The test rows are set aside first and are reachable
only through :meth:`PreparedData.take_test`, which counts its calls so tests can prove the test-once rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from sklearn import datasets as skdatasets
from sklearn.impute import SimpleImputer
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
from sklearn.preprocessing import StandardScaler

from tuner.spec import DatasetSpec, JobSpec, SpecError, objective_errors

__all__ = [
    "Fold",
    "PreparedData",
    "Preprocessor",
    "RawData",
    "SplitIndices",
    "Standardizer",
    "TestData",
    "infer_task",
    "load_dataset",
    "prepare_data",
    "split_indices",
]

Task = Literal["classification", "regression"]
# An integer-valued target with more distinct values than this is treated as regression.
MAX_CLASSES_FOR_INFERENCE = 20
_BUILTIN_LOADERS: dict[str, Callable[..., Any]] = {
    "digits": skdatasets.load_digits,
    "iris": skdatasets.load_iris,
    "wine": skdatasets.load_wine,
    "breast_cancer": skdatasets.load_breast_cancer,
    "diabetes": skdatasets.load_diabetes,
}


# ------------------------------------------------------------------------------------------- loading
@dataclass
class RawData:
    """Features as a DataFrame (one column per raw feature), the raw target, and an optional image shape."""

    frame: pd.DataFrame
    target: np.ndarray
    input_shape: tuple[int, int, int] | None = None


def load_dataset(ds: DatasetSpec, *, resolve_upload: Callable[[str], Path] | None = None) -> RawData:
    """Read the data set a spec names; raise :class:`SpecError` for a missing file or column."""
    if ds.builtin is not None:
        bunch = _BUILTIN_LOADERS[ds.builtin]()
        frame = pd.DataFrame(np.asarray(bunch.data, dtype=np.float64), columns=[str(c) for c in _names(bunch)])
        shape = (1, 8, 8) if ds.builtin == "digits" else None
        return RawData(frame, np.asarray(bunch.target), shape)
    if ds.id is not None:
        if resolve_upload is None:
            raise SpecError(["dataset.id: uploaded data sets need the service; use dataset.path"])
        path, where = Path(resolve_upload(ds.id)), "dataset.id"
    else:
        assert ds.path is not None
        path, where = Path(ds.path), "dataset.path"
    if not path.is_file():
        raise SpecError([f"{where}: no such file: {path}"])
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _load_npz(path, where)
    if suffix in (".csv", ".parquet", ".pq"):
        try:
            frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - any reader error is a data error for the user
            raise SpecError([f"{where}: cannot read {path.name}: {exc}"]) from None
        target = ds.target or "target"
        if target not in frame.columns:
            cols = ", ".join(map(str, frame.columns[:20]))
            raise SpecError([f"dataset.target: no column '{target}' in {path.name} (columns: {cols})"])
        y = frame.pop(target).to_numpy()
        if frame.shape[1] == 0:
            raise SpecError([f"{where}: {path.name} has no feature columns besides the target"])
        frame.columns = [str(c) for c in frame.columns]
        return RawData(frame.reset_index(drop=True), y)
    raise SpecError([f"{where}: unsupported file type '{suffix}' (use .csv, .parquet or .npz)"])


def _names(bunch: Any) -> list[str]:
    names = getattr(bunch, "feature_names", None)
    n = bunch.data.shape[1]
    return list(names) if names is not None and len(names) == n else [f"x{i}" for i in range(n)]


def _load_npz(path: Path, where: str) -> RawData:
    with np.load(path, allow_pickle=False) as npz:
        if "X" not in npz or "y" not in npz:
            raise SpecError([f"{where}: an NPZ file needs arrays 'X' and 'y' (found: {', '.join(npz.files)})"])
        X, y = np.asarray(npz["X"]), np.asarray(npz["y"])
    if X.ndim < 2 or len(X) != len(y):
        raise SpecError([f"{where}: X must have one row per entry of y (X {X.shape}, y {y.shape})"])
    shape: tuple[int, int, int] | None = None
    if X.ndim == 3:
        shape = (1, X.shape[1], X.shape[2])
    elif X.ndim == 4:
        shape = (X.shape[1], X.shape[2], X.shape[3])
    elif X.ndim > 4:
        raise SpecError([f"{where}: X has {X.ndim} dimensions; use 2 (tabular), 3 or 4 (images)"])
    X = X.reshape(len(X), -1).astype(np.float64)
    return RawData(pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])]), y.reshape(len(y)), shape)


def infer_task(y: np.ndarray) -> Task:
    """Classification for non-numeric or integer-valued targets with few distinct values, else regression."""
    series = pd.Series(y)
    if not (pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)):
        return "classification"
    values = series.dropna().to_numpy(dtype=np.float64)
    if not np.all(np.equal(np.mod(values, 1), 0)):
        return "regression"
    return "classification" if len(np.unique(values)) <= MAX_CLASSES_FOR_INFERENCE else "regression"


# -------------------------------------------------------------------------------------------- splits
@dataclass
class SplitIndices:
    """Row positions: ``dev`` (non-test) and ``test`` into the full data; ``folds`` index into ``dev``."""

    dev: np.ndarray
    test: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]


def split_indices(spec: JobSpec, y: np.ndarray, task: Task) -> SplitIndices:
    """Test split first (stratified for classification by default), then holdout or K-fold on the rest."""
    split = spec.split
    stratify = split.stratify if split.stratify is not None else task == "classification"
    if stratify and task != "classification":
        raise SpecError(["split.stratify: stratification needs a classification task"])
    idx = np.arange(len(y))
    try:
        dev, test = train_test_split(
            idx, test_size=split.test_fraction, random_state=split.seed, stratify=y if stratify else None
        )
        dev = np.sort(dev)
        test = np.sort(test)
        y_dev = y[dev]
        val = split.validation
        if val.kind == "holdout":
            pos = np.arange(len(dev))
            tr, va = train_test_split(
                pos, test_size=val.fraction, random_state=split.seed, stratify=y_dev if stratify else None
            )
            folds = [(np.sort(tr), np.sort(va))]
        else:
            splitter = (StratifiedKFold if stratify else KFold)(n_splits=val.k, shuffle=True, random_state=split.seed)
            folds = [(np.sort(a), np.sort(b)) for a, b in splitter.split(np.zeros(len(dev)), y_dev)]
    except ValueError as exc:
        raise SpecError([f"split: cannot split the data as asked: {exc}"]) from None
    return SplitIndices(dev=dev, test=test, folds=folds)


# ------------------------------------------------------------------------------------- preprocessing
class Standardizer:
    """Per-column mean/scale fitted on the training part only (scikit-learn's StandardScaler)."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)

    @classmethod
    def fit(cls, X: np.ndarray) -> Standardizer:
        scaler = StandardScaler().fit(X)
        return cls(scaler.mean_, scaler.scale_)  # zero-variance columns get scale 1

    def transform(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean) / self.scale

    def inverse(self, X: np.ndarray) -> np.ndarray:
        return X * self.scale + self.mean


class Preprocessor:
    """Raw frame -> float32 matrix: impute numeric NaN, standardise numeric columns, one-hot categoricals.

    ``categories`` (the one-hot vocabulary) is given by the caller so every split has the same columns;
    imputation values and standardisation statistics are fitted on the rows passed to :meth:`fit`.
    For regression the target is standardised too (``target_scaler``) and predictions are mapped back.
    """

    def __init__(
        self,
        numeric: list[str],
        categories: dict[str, list[str]],
        impute: str,
        impute_values: np.ndarray | None,
        standardizer: Standardizer,
        target_scaler: Standardizer | None,
    ) -> None:
        self.numeric = numeric
        self.categories = categories
        self.impute = impute
        self.impute_values = impute_values
        self.standardizer = standardizer
        self.target_scaler = target_scaler

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        y: np.ndarray | None,
        *,
        categories: dict[str, list[str]],
        impute: str,
        task: Task,
    ) -> Preprocessor:
        numeric = [c for c in frame.columns if c not in categories]
        X = _numeric_matrix(frame, numeric)
        impute_values = None
        if impute != "none" and numeric:
            imputer = SimpleImputer(strategy=impute, keep_empty_features=True).fit(X)
            impute_values = np.asarray(imputer.statistics_, dtype=np.float64)
            impute_values = np.where(np.isnan(impute_values), 0.0, impute_values)
            X = np.where(np.isnan(X), impute_values, X)
        standardizer = Standardizer.fit(X) if numeric else Standardizer(np.zeros(0), np.ones(0))
        target_scaler = None
        if task == "regression" and y is not None:
            target_scaler = Standardizer.fit(np.asarray(y, dtype=np.float64).reshape(-1, 1))
        return cls(numeric, categories, impute, impute_values, standardizer, target_scaler)

    @property
    def feature_names(self) -> list[str]:
        return [*self.numeric, *(f"{c}={v}" for c, vs in self.categories.items() for v in vs)]

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        X = _numeric_matrix(frame, self.numeric)
        if self.impute_values is not None:
            X = np.where(np.isnan(X), self.impute_values, X)
        parts = [self.standardizer.transform(X)] if self.numeric else []
        for col, values in self.categories.items():
            codes = pd.Index(values).get_indexer(frame[col].astype("string"))  # unknown/NaN -> -1
            onehot = np.zeros((len(frame), len(values)))
            hit = codes >= 0
            onehot[np.nonzero(hit)[0], codes[hit]] = 1.0
            parts.append(onehot)
        out = np.concatenate(parts, axis=1) if parts else np.zeros((len(frame), 0))
        return out.astype(np.float32)

    def transform_target(self, y: np.ndarray) -> np.ndarray:
        if self.target_scaler is None:
            return y
        return self.target_scaler.transform(np.asarray(y, dtype=np.float64).reshape(-1, 1)).ravel()

    def inverse_target(self, y: np.ndarray) -> np.ndarray:
        if self.target_scaler is None:
            return y
        return self.target_scaler.inverse(np.asarray(y, dtype=np.float64).reshape(-1, 1)).ravel()

    def to_dict(self) -> dict[str, Any]:
        """Plain lists/strings only, so a saved model loads with ``torch.load(weights_only=True)``."""
        return {
            "numeric": list(self.numeric),
            "categories": {k: list(v) for k, v in self.categories.items()},
            "impute": self.impute,
            "impute_values": None if self.impute_values is None else self.impute_values.tolist(),
            "mean": self.standardizer.mean.tolist(),
            "scale": self.standardizer.scale.tolist(),
            "target_mean": None if self.target_scaler is None else self.target_scaler.mean.tolist(),
            "target_scale": None if self.target_scaler is None else self.target_scaler.scale.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessor:
        target = None
        if d.get("target_mean") is not None:
            target = Standardizer(np.asarray(d["target_mean"]), np.asarray(d["target_scale"]))
        iv = d.get("impute_values")
        return cls(
            list(d["numeric"]),
            {k: list(v) for k, v in d["categories"].items()},
            d["impute"],
            None if iv is None else np.asarray(iv, dtype=np.float64),
            Standardizer(np.asarray(d["mean"]), np.asarray(d["scale"])),
            target,
        )


def _numeric_matrix(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    if not columns:
        return np.zeros((len(frame), 0))
    return frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)


def _categorical_columns(frame: pd.DataFrame) -> list[str]:
    return [
        c
        for c in frame.columns
        if not pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c])
    ]


# -------------------------------------------------------------------------------------- prepared data
@dataclass
class Fold:
    """One training/validation pair as float tensors, plus the preprocessor fitted on its training part."""

    train_idx: np.ndarray
    val_idx: np.ndarray | None
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_val: torch.Tensor | None
    y_val: torch.Tensor | None
    preprocessor: Preprocessor


@dataclass
class TestData:
    """The raw test rows (features as a frame, encoded targets) for the one final scoring."""

    frame: pd.DataFrame
    y: np.ndarray


@dataclass
class PreparedData:
    """The split, preprocessed data for one job. The test part is private: use :meth:`take_test`."""

    spec: JobSpec
    task: Task
    classes: list[Any] | None
    input_shape: tuple[int, int, int] | None
    splits: SplitIndices
    folds: list[Fold]
    dev_frame: pd.DataFrame
    dev_y: np.ndarray
    categories: dict[str, list[str]]
    test_access_count: int = 0
    _test: TestData | None = field(default=None, repr=False)
    _full: Fold | None = field(default=None, repr=False)

    @property
    def n_features(self) -> int:
        return int(self.folds[0].X_train.shape[1])

    @property
    def n_outputs(self) -> int:
        return len(self.classes) if self.classes is not None else 1

    @property
    def feature_names(self) -> list[str]:
        return self.folds[0].preprocessor.feature_names

    def take_test(self) -> TestData:
        """The test rows; every call is counted in ``test_access_count`` (the search never calls this)."""
        assert self._test is not None
        self.test_access_count += 1
        return self._test

    def full(self) -> Fold:
        """All non-test rows as one training part (preprocessor fitted on them), for the K-fold refit."""
        if self._full is None:
            self._full = _make_fold(self, np.arange(len(self.dev_y)), None)
        return self._full


def prepare_data(spec: JobSpec, *, resolve_upload: Callable[[str], Path] | None = None) -> PreparedData:
    """Load, validate, split and preprocess the data a spec names (deterministic by ``split.seed``)."""
    raw = load_dataset(spec.dataset, resolve_upload=resolve_upload)
    frame, y_raw = raw.frame, raw.target
    if len(frame) < 10:
        raise SpecError([f"dataset: too few rows ({len(frame)}) to split"])
    if pd.isna(pd.Series(y_raw)).any():
        raise SpecError([f"dataset.target: {int(pd.isna(pd.Series(y_raw)).sum())} rows have no target value"])
    categorical = _categorical_columns(frame)
    n_missing = int(frame.isna().sum().sum())
    if n_missing and spec.dataset.impute == "none":
        raise SpecError(
            [f"dataset.impute: the features have {n_missing} missing values; set it to 'mean' or 'median'"]
        )
    task: Task = spec.dataset.task or infer_task(y_raw)
    if errors := objective_errors(spec.objective, task):
        raise SpecError(errors)
    classes: list[Any] | None = None
    if task == "classification":
        uniq, y = np.unique(np.asarray(y_raw).astype(str) if _categorical_target(y_raw) else y_raw, return_inverse=True)
        if len(uniq) < 2:
            raise SpecError(["dataset.target: a classification target needs at least two classes"])
        classes = [_plain(v) for v in uniq]
        y = y.astype(np.int64)
    else:
        try:
            y = np.asarray(y_raw, dtype=np.float64)
        except (TypeError, ValueError):
            raise SpecError(["dataset.task: a regression target must be numeric"]) from None
    shape = _input_shape(spec, raw.input_shape)
    splits = split_indices(spec, y, task)
    dev_frame = frame.iloc[splits.dev].reset_index(drop=True)
    # The one-hot vocabulary comes from the non-test rows so every fold has the same columns.
    categories = {c: sorted(dev_frame[c].dropna().astype(str).unique().tolist()) for c in categorical}
    data = PreparedData(
        spec=spec,
        task=task,
        classes=classes,
        input_shape=shape,
        splits=splits,
        folds=[],
        dev_frame=dev_frame,
        dev_y=y[splits.dev],
        categories=categories,
        _test=TestData(frame.iloc[splits.test].reset_index(drop=True), y[splits.test]),
    )
    data.folds = [_make_fold(data, tr, va) for tr, va in splits.folds]
    if spec.model.kind == "cnn" and shape is not None and int(np.prod(shape)) != data.n_features:
        size = int(np.prod(shape))
        raise SpecError([f"model.input_shape: {list(shape)} holds {size} values; the data has {data.n_features} features"])
    return data


def _categorical_target(y: np.ndarray) -> bool:
    """Whether a target holds non-numeric labels (they are compared as strings)."""
    s = pd.Series(y)
    return not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _input_shape(spec: JobSpec, inferred: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
    if spec.model.input_shape is not None:
        c, h, w = spec.model.input_shape
        return (c, h, w)
    if spec.model.kind == "cnn" and inferred is None:
        raise SpecError(["model.input_shape: required for a CNN on this data set"])
    return inferred


def _make_fold(data: PreparedData, train_idx: np.ndarray, val_idx: np.ndarray | None) -> Fold:
    tr_frame = data.dev_frame.iloc[train_idx]
    y_tr = data.dev_y[train_idx]
    pre = Preprocessor.fit(tr_frame, y_tr, categories=data.categories, impute=data.spec.dataset.impute, task=data.task)

    def tensors(frame: pd.DataFrame, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        X = torch.from_numpy(np.ascontiguousarray(pre.transform(frame)))
        if data.task == "classification":
            return X, torch.from_numpy(np.asarray(y, dtype=np.int64))
        return X, torch.from_numpy(pre.transform_target(y).astype(np.float32))

    X_tr, t_tr = tensors(tr_frame, y_tr)
    X_va = t_va = None
    if val_idx is not None:
        X_va, t_va = tensors(data.dev_frame.iloc[val_idx], data.dev_y[val_idx])
    return Fold(train_idx, val_idx, X_tr, t_tr, X_va, t_va, pre)
