"""Saving and loading the best model: state dict plus everything needed to rebuild it and predict.

The file holds only tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``
(no arbitrary pickles).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from tuner.data import PreparedData, Preprocessor
from tuner.models import build_model
from tuner.predict import InputError, check_frame, not_finite_rows, rows_to_frame
from tuner.spec import JobSpec
from tuner.training import predict_outputs

__all__ = ["FORMAT_VERSION", "LoadedModel", "load_model", "save_model"]

FORMAT_VERSION = 1


def save_model(
    path: str | Path,
    model: nn.Module,
    *,
    spec: JobSpec,
    data: PreparedData,
    preprocessor: Preprocessor,
    params: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """``torch.save`` the state dict, spec, preprocessing statistics, class labels and hyperparameters."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": FORMAT_VERSION,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "spec": spec.model_dump_json(),
        "task": data.task,
        "classes": data.classes,
        "columns": [str(c) for c in data.dev_frame.columns],
        "n_features": preprocessor.n_features,
        "n_outputs": data.n_outputs,
        "input_shape": list(data.input_shape) if data.input_shape is not None else None,
        "preprocessing": preprocessor.to_dict(),
        "params": json.loads(json.dumps(params)),
        "extra": json.loads(json.dumps(extra or {}, default=str)),
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # atomic: a reader never sees a half-written model
    return path


class LoadedModel:
    """A saved model ready to predict on raw feature rows (same columns as the training data)."""

    def __init__(self, payload: dict[str, Any], device: str | torch.device = "cpu") -> None:
        self.spec = JobSpec.model_validate_json(payload["spec"])
        self.task: str = payload["task"]
        self.classes: list[Any] | None = payload["classes"]
        self.columns: list[str] = payload["columns"]
        self.params: dict[str, Any] = payload["params"]
        self.extra: dict[str, Any] = payload.get("extra", {})
        self.preprocessor = Preprocessor.from_dict(payload["preprocessing"])
        self.device = torch.device(device)
        shape = payload["input_shape"]
        self.model = build_model(
            self.spec.model, self.params, payload["n_features"], payload["n_outputs"],
            input_shape=tuple(shape) if shape is not None else None,
        )
        self.model.load_state_dict(payload["state_dict"])
        self.model.to(self.device).eval()

    def _features(self, X: Any) -> torch.Tensor:
        if not isinstance(X, pd.DataFrame):
            arr = np.asarray(X)
            arr = arr.reshape(len(arr), -1) if arr.ndim > 2 else arr.reshape(-1, len(self.columns)) if arr.ndim == 1 else arr
            X = pd.DataFrame(arr, columns=self.columns)
        missing = [c for c in self.columns if c not in X.columns]
        if missing:
            raise ValueError(f"missing feature columns: {', '.join(missing[:10])}")
        return torch.from_numpy(self.preprocessor.transform(X[self.columns])).to(self.device)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (columns in the order of ``classes``); classification only."""
        if self.task != "classification":
            raise AttributeError("predict_proba is for classification models")
        out = predict_outputs(self.model, self._features(X))
        with torch.inference_mode():
            return torch.softmax(out, dim=1).float().cpu().numpy()

    def check(self, X: pd.DataFrame | Sequence[Any]) -> pd.DataFrame:
        """Validate raw rows (a frame, or JSON-like rows: lists in column order or mappings by column name)
        and return them as a frame of the training columns; :class:`tuner.predict.InputError` names the
        row and column of every problem. The training target's column, if present, is ignored."""
        frame = X if isinstance(X, pd.DataFrame) else rows_to_frame(X, self.columns)
        target = self.spec.dataset.target
        return check_frame(frame, columns=self.columns, numeric=self.preprocessor.numeric,
                           impute=self.preprocessor.impute, ignore=[target] if target else [])

    def predict_frame(self, X: pd.DataFrame | Sequence[Any]) -> list[dict[str, Any]]:
        """Checked predictions as plain records: ``{"label", "probabilities"}`` (keyed by ``str(label)``)
        for classification, ``{"value"}`` in the target's units for regression. Same numbers as
        :meth:`predict` / :meth:`predict_proba` on the same rows."""
        frame = self.check(X)
        if self.task == "classification":
            assert self.classes is not None
            proba = self.predict_proba(frame)
            if problems := not_finite_rows(proba):
                raise InputError(problems)
            names = [str(c) for c in self.classes]
            return [
                {"label": self.classes[int(k)], "probabilities": dict(zip(names, map(float, row), strict=True))}
                for k, row in zip(proba.argmax(axis=1), proba, strict=True)
            ]
        values = self.predict(frame)
        if problems := not_finite_rows(np.asarray(values, dtype=np.float64)):
            raise InputError(problems)
        return [{"value": float(v)} for v in values]

    def predict(self, X: Any) -> np.ndarray:
        """Class labels (as in the data) or regression values in the target's units."""
        if self.task == "classification":
            assert self.classes is not None
            # a class list mixing numbers and text (issue 19) keeps each label's type: no common numpy dtype
            mixed = len({type(c) for c in self.classes}) > 1
            return np.asarray(self.classes, dtype=object if mixed else None)[self.predict_proba(X).argmax(axis=1)]
        out = predict_outputs(self.model, self._features(X)).reshape(-1).float().cpu().numpy()
        return self.preprocessor.inverse_target(out)


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model saved by :func:`save_model`."""
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported model file version {payload.get('format_version')!r}")
    return LoadedModel(payload, device)
