"""Data: loading (builtin / CSV / Parquet / NPZ), task inference, splits and preprocessing.

Everything fitted (column kinds, one-hot vocabularies, imputation values, standardisation statistics,
the regression target's scale) is fitted on the training part of each split only; the task, the label
type and the class list come from the non-test rows. The test rows are set aside first and are reachable
only through :meth:`PreparedData.take_test`, which counts its calls so tests can prove the test-once rule.
No value in a test row changes anything before the final scoring (``tests/tuner/test_integrity.py`` checks
it); only the split reads every row (and, when neither ``split.stratify`` nor ``dataset.task`` is set, a
provisional task from every row picks stratify's default).

Labels are compared by value, each on its own (:func:`canonical_label`): a label that reads as a finite
number is that number (an ``int`` when integral, else a ``float``), so the CSV text ``"1"``, the integer
``1`` and the float ``1.0`` are one class; anything else (booleans included) is text. Classes are ordered
numbers first (numerically), then text (lexically).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
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
    "MAX_FEATURES",
    "NO_LABEL",
    "UNSEEN_LABEL",
    "Fold",
    "PreparedData",
    "Preprocessor",
    "RawData",
    "SplitIndices",
    "Standardizer",
    "TestData",
    "canonical_label",
    "column_kinds",
    "infer_task",
    "load_dataset",
    "prepare_data",
    "split_indices",
]

Task = Literal["classification", "regression"]
# An integer-valued target with more distinct values than this is treated as regression.
MAX_CLASSES_FOR_INFERENCE = 20
# One-hot encoding that would give more feature columns than this is refused before any matrix is built.
MAX_FEATURES = 10_000
# The code of a test label that no non-test row has: it is scored as a wrong prediction, never a class.
UNSEEN_LABEL = -1
# The code of a test row without a label (missing): it is left out of the scoring and counted.
NO_LABEL = -2
# The spellings pandas reads as booleans (``read_csv``'s defaults); text columns keep them as text when a
# cell holds anything else, so they are compared as "True"/"False" wherever they occur.
_BOOL_SPELLINGS = {"True": "True", "TRUE": "True", "true": "True",
                   "False": "False", "FALSE": "False", "false": "False"}
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
    from tuner.safeio import check_data_file  # memory-bomb caps, read from metadata before loading

    check_data_file(path, where)
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


def canonical_label(value: Any) -> int | float | str | None:
    """One label's value, independent of the column's dtype: ``None`` when missing; a finite number (or
    text that reads as one, ``"1"``, ``" 2.0"``, ``"1e3"``) is an ``int`` when integral, else a ``float``;
    a boolean is ``"True"``/``"False"`` (as are pandas' other spellings of them); anything else is its text.
    """
    if isinstance(value, (bool, np.bool_)):
        return "True" if value else "False"
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        if math.isnan(f):
            return None
        return (int(f) if f.is_integer() else f) if math.isfinite(f) else str(f)
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, str):
        if value in _BOOL_SPELLINGS:
            return _BOOL_SPELLINGS[value]
        number = _parse_number(value)
        return value if number is None else number
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def _parse_number(text: str) -> int | float | None:
    t = text.strip()
    if not t or "_" in t:  # Python reads "1_000"; pandas does not
        return None
    try:
        return int(t)
    except ValueError:
        pass
    try:
        f = float(t)
    except ValueError:
        return None
    if not math.isfinite(f):  # "nan", "inf": text, as no number can be
        return None
    return int(f) if f.is_integer() else f


def _label_key(label: float | str) -> tuple[int, float, str]:
    """Sort key of canonical labels: numbers first (numerically), then text (lexically)."""
    return (1, 0, label) if isinstance(label, str) else (0, label, "")


def _canonical_labels(y: Iterable[Any]) -> np.ndarray:
    """:func:`canonical_label` of each value, as an object array (``None`` where missing)."""
    values = y.tolist() if isinstance(y, np.ndarray) else list(y)
    text: dict[str, Any] = {}  # a text column repeats few values: read each once

    def one(v: Any) -> Any:
        if isinstance(v, str):
            if v not in text:
                text[v] = canonical_label(v)
            return text[v]
        return canonical_label(v)

    out = np.empty(len(values), dtype=object)
    out[:] = [one(v) for v in values]
    return out


def infer_task(y: Iterable[Any]) -> Task:
    """The task a target's labels suggest (missing labels ignored; see :func:`canonical_label`).

    Classification when at most half the labels are numbers (text, booleans); otherwise the numbers decide:
    integral with at most 20 distinct values is classification, anything else regression. A few text tokens
    among numbers (``"?"``) therefore do not turn a regression target into a classification one: for
    regression they are refused in the non-test rows and not scored in the test rows.
    """
    return _infer(_canonical_labels(y))


def _infer(canonical: np.ndarray) -> Task:
    """:func:`infer_task` of labels that are canonical already."""
    labels = [v for v in canonical if v is not None]
    numbers = [v for v in labels if not isinstance(v, str)]
    if 2 * len(numbers) <= len(labels):
        return "classification"
    if any(isinstance(v, float) for v in numbers):
        return "regression"
    return "classification" if len(set(numbers)) <= MAX_CLASSES_FOR_INFERENCE else "regression"


# -------------------------------------------------------------------------------------------- splits
@dataclass
class SplitIndices:
    """Row positions: ``dev`` (non-test) and ``test`` into the full data; ``folds`` index into ``dev``."""

    dev: np.ndarray
    test: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]


def split_indices(spec: JobSpec, y: np.ndarray, task: Task, *, stratify: bool | None = None) -> SplitIndices:
    """Test split first (stratified for classification by default), then holdout or K-fold on the rest.

    ``y`` is the stratification key (one integer code per row); ``stratify`` overrides the default
    (``split.stratify``, else ``task == "classification"``).
    """
    split = spec.split
    if stratify is None:
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

    Everything is fitted on the rows passed to :meth:`fit` (a fold's training part): which columns are
    numeric, the one-hot vocabularies, imputation values and standardisation statistics. At transform
    time a category the training part never had is "unknown" (all zeros), and a missing, non-numeric or
    infinite value in a numeric column (possible only in rows outside the training part: validation rows
    are checked up front, test rows and prediction inputs are not) is replaced by the imputation value,
    or by the training mean when ``impute`` is ``none``. For regression the target is standardised too
    (``target_scaler``) and predictions are mapped back.
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
        impute: str,
        task: Task,
        max_features: int = MAX_FEATURES,
    ) -> Preprocessor:
        """Fit on ``frame`` (a training part); :class:`SpecError` when one-hot gives > ``max_features``."""
        numeric, categories = column_kinds(frame, max_features=max_features)
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

    @property
    def n_features(self) -> int:
        return len(self.numeric) + sum(len(v) for v in self.categories.values())

    @property
    def loss_scale(self) -> float:
        """Factor from the MSE on the standardised target to the MSE in the target's units (1 otherwise)."""
        return 1.0 if self.target_scaler is None else float(self.target_scaler.scale[0]) ** 2

    def unusable_rows(self, frame: pd.DataFrame) -> int:
        """Rows with a missing, non-numeric or infinite value in a numeric column (they get filled)."""
        X = _numeric_matrix(frame, self.numeric)
        return int((~np.isfinite(X)).any(axis=1).sum()) if X.size else 0

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        X = _numeric_matrix(frame, self.numeric)
        fill = self.impute_values if self.impute_values is not None else self.standardizer.mean
        if X.size:
            X = np.where(np.isfinite(X), X, fill)
        parts = [self.standardizer.transform(X)] if self.numeric else []
        for col, values in self.categories.items():
            codes = pd.Index(values).get_indexer(_category_strings(frame[col]))  # unknown -> -1
            codes[frame[col].isna().to_numpy()] = -1
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


def _is_boolean(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_)) or (isinstance(value, str) and value in _BOOL_SPELLINGS)


def _all_boolean(present: pd.Series) -> bool:
    """Whether every (non-missing) value is a boolean: Python/numpy ``bool`` or pandas' spellings of one.

    A boolean column with a missing value or a token elsewhere in the file is read as ``object`` (bools
    and NaN, or text): this looks at the values, not the dtype, so such a column stays categorical.
    """
    if pd.api.types.is_bool_dtype(present):
        return True
    if len(present) == 0 or not _is_boolean(present.iloc[0]):
        return False
    return bool(present.map(_is_boolean).all())


def _category_strings(series: pd.Series) -> pd.Series:
    """A categorical column's values as the text its one-hot vocabulary holds (missing values stay NaN):
    booleans (and pandas' spellings of them) as ``"True"``/``"False"``, anything else as ``str``."""
    return series.astype(str).replace(_BOOL_SPELLINGS).where(series.notna().to_numpy())


def _parses_as_numbers(series: pd.Series) -> bool:
    """Numeric: every non-missing value is a number, or text that reads as one, and not all are booleans
    (decided by the values ``series`` holds, whatever dtype the whole file gave the column)."""
    if pd.api.types.is_bool_dtype(series):
        return False
    if pd.api.types.is_numeric_dtype(series):
        return True
    present = series.dropna()
    if _all_boolean(present):
        return False
    return bool(pd.to_numeric(present, errors="coerce").notna().all())


def column_kinds(frame: pd.DataFrame, *, max_features: int = MAX_FEATURES) -> tuple[list[str], dict[str, list[str]]]:
    """Numeric columns and one-hot vocabularies of ``frame`` (a training part).

    A column is numeric when every non-missing value in ``frame`` is a number (numeric dtype, or text that
    parses as one) and they are not all booleans; otherwise it is one-hot encoded over the distinct values
    ``frame`` has (booleans as ``"True"``/``"False"``, dates and other text as written). Only the values
    count, never the dtype the whole file gave a column (a test row's NaN or token can change that). Raises
    :class:`SpecError` naming the count when the encoding would give more than ``max_features`` columns,
    before any matrix is built.
    """
    numeric: list[str] = []
    categories: dict[str, list[str]] = {}
    for c in frame.columns:
        if _parses_as_numbers(frame[c]):
            numeric.append(c)
        else:
            categories[c] = sorted(_category_strings(frame[c].dropna()).unique().tolist())
    width = len(numeric) + sum(len(v) for v in categories.values())
    if width > max_features:
        widest = max(categories, key=lambda k: len(categories[k]))
        raise SpecError([
            (f"dataset: one-hot encoding gives {width} feature columns, more than the limit of {max_features} "
            f"(column '{widest}' alone has {len(categories[widest])} distinct values); drop or bucket "
            "high-cardinality text columns")
        ])
    return numeric, categories


def _check_dev_features(frame: pd.DataFrame, impute: str) -> None:
    """Checks on the non-test rows only (test rows never decide whether a job may run).

    A text column that is mostly numbers with some other tokens (``"?"``, ``"n/a"``) is refused rather
    than guessed at: one-hot encoding it would turn every distinct number into a feature, and reading the
    tokens as missing would hide a data error. Missing values need ``impute``; infinite values are refused.
    """
    errors: list[str] = []
    for c in frame.columns:
        s = frame[c]
        if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
            continue
        present = s.dropna()
        if _all_boolean(present):
            continue
        parsed = pd.to_numeric(present, errors="coerce")
        n_bad = int(parsed.isna().sum())
        if 0 < n_bad <= int(parsed.notna().sum()):
            tokens = ", ".join(repr(str(t)) for t in present[parsed.isna()].astype(str).unique()[:3])
            errors.append(
                f"dataset: column '{c}' holds numbers and {n_bad} non-numeric value(s) ({tokens}) in the "
                "non-test rows; write missing values as empty cells (and set dataset.impute) or make the "
                "column all text"
            )
    numeric = [c for c in frame.columns if _parses_as_numbers(frame[c])]
    X = _numeric_matrix(frame, numeric)
    for j in np.nonzero(np.isinf(X).any(axis=0))[0] if X.size else []:
        n_inf = int(np.isinf(X[:, j]).sum())
        errors.append(
            f"dataset: column '{numeric[j]}' has {n_inf} infinite value(s) in the non-test rows; "
            "replace them (or leave the cells empty and set dataset.impute)"
        )
    n_missing = int(frame.isna().sum().sum())
    if n_missing and impute == "none":
        errors.append(
            f"dataset.impute: the features have {n_missing} missing values in the non-test rows; "
            "set it to 'mean' or 'median'"
        )
    if errors:
        raise SpecError(errors)


# -------------------------------------------------------------------------------------- prepared data
@dataclass
class Fold:
    """One training/validation pair as float tensors, plus the preprocessor fitted on its training part.

    Column kinds and one-hot vocabularies are the training part's, so folds may differ in width:
    build each fold's model with :attr:`n_features`.
    """

    train_idx: np.ndarray
    val_idx: np.ndarray | None
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_val: torch.Tensor | None
    y_val: torch.Tensor | None
    preprocessor: Preprocessor

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])


@dataclass
class TestData:
    """The raw test rows (features as a frame, encoded targets) for the one final scoring.

    Classification: ``y`` holds the class code, :data:`UNSEEN_LABEL` for a label that no non-test row has,
    :data:`NO_LABEL` for a missing one; ``labels`` holds the labels (:func:`canonical_label`, for
    reporting). Regression: ``y`` holds the numbers, NaN for a label that is missing or no number. Rows
    without a usable target (:attr:`usable`) are left out of the scoring and counted.
    """

    frame: pd.DataFrame
    y: np.ndarray
    labels: np.ndarray | None = None

    @property
    def n_unseen_label(self) -> int:
        return int((np.asarray(self.y) == UNSEEN_LABEL).sum()) if self.labels is not None else 0

    @property
    def usable(self) -> np.ndarray:
        """Rows whose target can be scored (a class code or :data:`UNSEEN_LABEL`, or a finite number)."""
        y = np.asarray(self.y)
        return y != NO_LABEL if self.labels is not None else np.isfinite(y.astype(np.float64))

    @property
    def n_unusable_target(self) -> int:
        return int((~self.usable).sum())


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
    max_features: int = MAX_FEATURES
    test_access_count: int = 0
    _test: TestData | None = field(default=None, repr=False)
    _full: Fold | None = field(default=None, repr=False)

    @property
    def n_features(self) -> int:
        """The first fold's width (every fold's with numeric data; see :attr:`Fold.n_features`)."""
        return self.folds[0].n_features

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


def prepare_data(
    spec: JobSpec,
    *,
    resolve_upload: Callable[[str], Path] | None = None,
    max_features: int = MAX_FEATURES,
) -> PreparedData:
    """Load, validate, split and preprocess the data a spec names (deterministic by ``split.seed``).

    Only the split reads every row: the test rows are drawn first, stratified by label for classification
    (the key is every row's class code, numbers before text as in the class list). When neither
    ``split.stratify`` nor ``dataset.task`` is set, stratify's default comes from a provisional task
    inferred from every row; nothing else does. The task, the label type and the class list, the checks on
    feature values and everything fitted use the non-test rows only. A test label that is missing (or, for
    regression, no number) is left out of the final scoring and counted (``n_test_unusable_target``).
    """
    raw = load_dataset(spec.dataset, resolve_upload=resolve_upload)
    frame = raw.frame
    if len(frame) < 10:
        raise SpecError([f"dataset: too few rows ({len(frame)}) to split"])
    pinned = spec.dataset.task
    if pinned is not None and (errors := objective_errors(spec.objective, pinned)):
        raise SpecError(errors)
    labels = _canonical_labels(raw.target)
    missing = np.array([v is None for v in labels], dtype=bool)
    stratify = spec.split.stratify
    if stratify is None:  # the provisional task: stratify's default and nothing else
        stratify = (pinned or _infer(labels)) == "classification"
    refused = SpecError(["split.stratify: stratification needs a classification task"])
    if stratify and pinned == "regression":
        raise refused
    key = np.zeros(len(labels), dtype=np.int64)
    if stratify:
        if missing.any():
            raise SpecError([(f"dataset.target: {int(missing.sum())} rows have no target value; a stratified split "
                              "needs every row's label (fill them in, or set split.stratify to false)")])
        key = _codes(labels, sorted(set(labels.tolist()), key=_label_key))
    try:
        splits = split_indices(spec, key, pinned or "classification", stratify=stratify)
    except SpecError:  # e.g. continuous labels: every "class" has one row
        if spec.split.stratify and pinned is None and _infer(labels) == "regression":
            raise refused from None
        raise
    dev_labels, test_labels = labels[splits.dev], labels[splits.test]
    if n_missing := int(missing[splits.dev].sum()):
        raise SpecError([f"dataset.target: {n_missing} non-test rows have no target value"])
    task: Task = pinned or _infer(dev_labels)  # the non-test rows decide
    if spec.split.stratify and task != "classification":
        raise refused
    if errors := objective_errors(spec.objective, task):
        raise SpecError(errors)
    shape = _input_shape(spec, raw.input_shape)
    dev_frame = frame.iloc[splits.dev].reset_index(drop=True)
    _check_dev_features(dev_frame, spec.dataset.impute)
    classes: list[Any] | None = None
    if task == "classification":
        # Classes come from the non-test rows; a test label none of them has is UNSEEN_LABEL.
        classes = sorted(set(dev_labels.tolist()), key=_label_key)
        if len(classes) < 2:
            if len(set(labels[~missing].tolist())) < 2:
                raise SpecError(["dataset.target: a classification target needs at least two classes"])
            raise SpecError(["dataset.target: the non-test rows hold fewer than two classes"])
        dev_y = _codes(dev_labels, classes)
        test_y = _codes(test_labels, classes)
        if spec.objective == "roc_auc":
            _check_every_class(spec, splits, dev_y, test_y, classes)
    else:
        text = [v for v in dev_labels if isinstance(v, str)]
        if text:
            tokens = ", ".join(repr(t) for t in list(dict.fromkeys(text))[:3])
            raise SpecError([(f"dataset.task: a regression target must be numeric; {len(text)} non-test rows hold "
                              f"labels that are no number ({tokens})")])
        dev_y = dev_labels.astype(np.float64)
        test_y = np.array([np.nan if v is None or isinstance(v, str) else float(v) for v in test_labels],
                          dtype=np.float64)
        test_labels = None
    if spec.split.validation.kind == "kfold":
        column_kinds(dev_frame, max_features=max_features)  # the refit's width: the widest of all
    data = PreparedData(
        spec=spec,
        task=task,
        classes=classes,
        input_shape=shape,
        splits=splits,
        folds=[],
        dev_frame=dev_frame,
        dev_y=dev_y,
        max_features=max_features,
        _test=TestData(frame.iloc[splits.test].reset_index(drop=True), test_y, test_labels),
    )
    data.folds = [_make_fold(data, tr, va) for tr, va in splits.folds]
    if spec.model.kind == "cnn" and shape is not None:
        size = int(np.prod(shape))
        for fold in data.folds:
            if size != fold.n_features:
                raise SpecError([
                    f"model.input_shape: {list(shape)} holds {size} values; the data has {fold.n_features} features"
                ])
    return data


def _check_every_class(
    spec: JobSpec, splits: SplitIndices, dev_y: np.ndarray, test_y: np.ndarray, classes: list[Any]
) -> None:
    """ROC-AUC is undefined on rows that miss a class: refuse such a split before anything trains."""
    val = spec.split.validation
    every = set(range(len(classes)))
    for i, (_, va) in enumerate(splits.folds):
        missing = sorted(every - set(dev_y[va].tolist()))
        if missing:
            where = f"validation fold {i + 1} of {len(splits.folds)}" if val.kind == "kfold" else "the validation rows"
            hint = "use fewer folds (split.validation.k)" if val.kind == "kfold" else "use a larger split.validation.fraction"
            raise SpecError([
                (f"split: no row of class {classes[missing[0]]!r} in {where}, so ROC-AUC is undefined there; "
                f"{hint}, keep split.stratify on, or choose another objective")
            ])
    missing = sorted(every - set(test_y[test_y >= 0].tolist()))
    if missing:
        raise SpecError([
            (f"split: no row of class {classes[missing[0]]!r} in the test rows, so the test ROC-AUC is undefined; "
            "use a larger split.test_fraction, keep split.stratify on, or choose another objective")
        ])


def _codes(labels: np.ndarray, classes: list[Any]) -> np.ndarray:
    """Each canonical label's position in ``classes``: :data:`UNSEEN_LABEL` when absent, :data:`NO_LABEL`
    when missing."""
    index = {c: i for i, c in enumerate(classes)}
    return np.fromiter((NO_LABEL if v is None else index.get(v, UNSEEN_LABEL) for v in labels),
                       dtype=np.int64, count=len(labels))


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
    pre = Preprocessor.fit(
        tr_frame, y_tr, impute=data.spec.dataset.impute, task=data.task, max_features=data.max_features
    )

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
