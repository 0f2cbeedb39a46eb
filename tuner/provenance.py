"""What a result depends on besides its spec: package versions and a fingerprint of the loaded data."""

from __future__ import annotations

import hashlib
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import pandas as pd

from tuner.data import RawData
from tuner.objective import FOLD_SEED_STRIDE
from tuner.spec import JobSpec

__all__ = ["dataset_fingerprint", "package_versions", "seeds", "split_recipe"]

_PACKAGES = {"torch": "torch", "optuna": "optuna", "scikit-learn": "scikit-learn", "numpy": "numpy",
             "pandas": "pandas", "tuneserve": "tuneserve"}


def package_versions() -> dict[str, str | None]:
    """Python and the versions of the packages a result depends on (``None`` when not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for key, dist in _PACKAGES.items():
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = None
    out["platform"] = platform.platform(terse=True)
    return out


def dataset_fingerprint(raw: RawData, task: str | None = None) -> dict[str, Any]:
    """sha256 of the loaded data (column names, then every column's values, then the target), its size and,
    for classification, the class counts. It identifies the *arrays* (e.g. a scikit-learn builtin), not a
    file: numeric columns hash as little-endian float64, others as their strings."""
    digest = hashlib.sha256()
    digest.update("\x1f".join(map(str, raw.frame.columns)).encode())
    for col in [*raw.frame.columns, None]:
        s = pd.Series(raw.target) if col is None else raw.frame[col]
        digest.update(b"\x1e")
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            digest.update(np.ascontiguousarray(s.to_numpy(dtype="<f8", na_value=np.nan)).tobytes())
        else:
            digest.update("\x1f".join("" if pd.isna(v) else str(v) for v in s).encode())
    out: dict[str, Any] = {"sha256": digest.hexdigest(), "rows": len(raw.frame), "columns": raw.frame.shape[1],
                           "class_counts": None}
    if task == "classification":
        counts = pd.Series(raw.target).astype(str).value_counts(sort=False)
        out["class_counts"] = {str(k): int(v) for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))}
    return out


def split_recipe(spec: JobSpec, task: str) -> dict[str, Any]:
    """How :func:`tuner.data.split_indices` splits the rows, in words and numbers (all fixed by ``split.seed``)."""
    split = spec.split
    stratify = split.stratify if split.stratify is not None else task == "classification"
    by = ", stratify=y" if stratify else ""
    val = split.validation
    if val.kind == "kfold":
        validation = (f"{'StratifiedKFold' if stratify else 'KFold'}(n_splits={val.k}, shuffle=True, "
                      f"random_state={split.seed}) on the non-test rows")
    else:
        validation = f"train_test_split(test_size={val.fraction}, random_state={split.seed}{by}) of the non-test rows"
    return {
        "test_fraction": split.test_fraction,
        "validation": val.model_dump(mode="json"),
        "stratify": stratify,
        "seed": split.seed,
        "test": f"sklearn.model_selection.train_test_split(test_size={split.test_fraction}, "
                f"random_state={split.seed}{by}), first, on all rows",
        "validation_method": validation,
    }


def seeds(spec: JobSpec, best_trial: int | None) -> dict[str, Any]:
    """Every seed a job's result depends on. A trial's model is built after ``torch.manual_seed(s)`` and
    its batches are shuffled by ``torch.Generator().manual_seed(s)`` with ``s = split.seed + number``
    (K-fold: ``+ 7919 * fold``); the final model uses the best trial's seed."""
    out: dict[str, Any] = {"split": spec.split.seed, "sampler": spec.sampler.seed}
    if best_trial is not None:
        base = spec.split.seed + best_trial
        out["best_trial"] = base
        if spec.split.validation.kind == "kfold":
            out["best_trial_folds"] = [base + FOLD_SEED_STRIDE * i for i in range(spec.split.validation.k)]
        out["final_model"] = base
    return out
