"""Loss plus scikit-learn metrics for classification and regression.

Undefined metrics (e.g. ROC-AUC when the scored rows hold one class) are ``None`` so results stay valid JSON:
no NaN or infinity ever leaves this module (:func:`json_safe` does the same for whole results).

Classification truth may hold :data:`tuner.data.UNSEEN_LABEL` (-1) for a test label that no training row
had: such a row counts as a wrong prediction in accuracy and in the macro averages (where the unseen labels
form one class the model never predicts); loss and ROC-AUC, which need a model output for the true class,
use the other rows.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

__all__ = [
    "classification_metrics",
    "compute_metrics",
    "confusion_matrix",
    "json_safe",
    "objective_value",
    "regression_metrics",
]


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, loss: float) -> dict[str, float | None]:
    """loss, accuracy, precision/recall/F1 (macro) and ROC-AUC (binary: class 1; multiclass: one-vs-rest).

    The macro averages run over the labels present in the truth or the predictions (scikit-learn's
    default), so a class absent from both does not count as a zero.
    """
    y_true = np.asarray(y_true)
    y_pred = proba.argmax(axis=1)
    seen = y_true >= 0
    # one call for all three macro averages (the same numbers as precision_score/recall_score/f1_score)
    precision, recall, f1, _ = skm.precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    out: dict[str, float | None] = {
        "loss": _finite(loss),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "precision": float(precision),
        "recall": float(recall),
        "f1_macro": float(f1),
        "roc_auc": _roc_auc(y_true[seen], proba[seen]),
    }
    return out


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, loss: float) -> dict[str, float | None]:
    """loss, MSE, MAE and R², all in the target's units (``loss`` is the MSE criterion scaled back to them)."""
    return {
        "loss": _finite(loss),
        "mse": float(skm.mean_squared_error(y_true, y_pred)),
        "mae": float(skm.mean_absolute_error(y_true, y_pred)),
        "r2": _finite(float(skm.r2_score(y_true, y_pred))) if len(y_true) > 1 else None,
    }


def compute_metrics(task: str, y_true: np.ndarray, outputs: np.ndarray, loss: float) -> dict[str, float | None]:
    """Dispatch on the task: ``outputs`` are class probabilities or predictions in the target's units."""
    if task == "classification":
        return classification_metrics(y_true, outputs, loss)
    return regression_metrics(y_true, outputs, loss)


def confusion_matrix(y_true: np.ndarray, proba: np.ndarray, classes: list[Any]) -> dict[str, Any]:
    """scikit-learn's confusion matrix of the predicted classes: ``matrix[i][j]`` counts rows of class
    ``labels[i]`` predicted as ``labels[j]``."""
    y_pred = proba.argmax(axis=1)
    matrix = skm.confusion_matrix(y_true, y_pred, labels=np.arange(len(classes)))
    return {"labels": [str(c) for c in classes], "matrix": matrix.tolist()}


def objective_value(objective: str, metrics: dict[str, Any]) -> float:
    """The objective's value from a metrics dict (``val_loss`` is the loss); NaN when undefined."""
    value = metrics["loss" if objective == "val_loss" else objective]
    return float("nan") if value is None else float(value)


def ovr_input(proba: np.ndarray) -> np.ndarray:
    """What multiclass ROC-AUC ranks: the probabilities as given when their rows sum to 1 as scikit-learn
    checks it (``np.allclose``; float32 softmax rows do), so exact ties fall as in ``roc_auc_score`` on the
    same probabilities; otherwise each row divided by its sum (scikit-learn would refuse them)."""
    sums = proba.sum(axis=1, keepdims=True)
    return proba if np.allclose(1, sums) else proba / sums


def _roc_auc(y_true: np.ndarray, proba: np.ndarray) -> float | None:
    """ROC-AUC, or None where it is undefined (scikit-learn 1.9 returns NaN with a warning for one class)."""
    if len(y_true) == 0 or len(np.unique(y_true)) < 2:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            if proba.shape[1] == 2:
                return _finite(float(skm.roc_auc_score(y_true, proba[:, 1])))
            p = ovr_input(proba)
            return _finite(float(skm.roc_auc_score(y_true, p, multi_class="ovr", labels=np.arange(proba.shape[1]))))
    except ValueError:
        return None


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def json_safe(value: Any) -> Any:
    """``value`` with every NaN/infinite float (nested in dicts, lists, tuples) replaced by ``None``."""
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    return value
