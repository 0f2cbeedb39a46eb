"""The training loop: in-memory tensors sliced by a shuffled index, early stopping with best weights kept.

No DataLoader: for in-memory data, slicing a tensor with a ``torch.randperm`` index is much cheaper
than collating per-sample items. Evaluation runs in large batches under ``torch.inference_mode()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from tuner.errors import StopRequested, TrialConfigError
from tuner.metrics import compute_metrics, objective_value

__all__ = ["EVAL_BATCH", "FitResult", "TrainConfig", "evaluate", "fit", "make_optimizer", "predict_outputs"]

EVAL_BATCH = 8192


@dataclass
class TrainConfig:
    """What the loop needs besides the model and data (from a trial's params and the spec)."""

    lr: float
    batch_size: int
    weight_decay: float = 0.0
    optimizer: str = "adam"
    momentum: float = 0.9
    max_epochs: int = 50
    patience: int = 5
    min_delta: float = 0.0
    objective: str = "val_loss"
    direction: str = "minimize"
    loss_scale: float = 1.0  # reported losses = criterion * loss_scale (regression: MSE in the target's units)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], spec: Any) -> TrainConfig:
        """A config from a trial's hyperparameters and the job spec's budget/early stopping/objective."""
        return cls(
            lr=float(params["lr"]),
            batch_size=int(params["batch_size"]),
            weight_decay=float(params.get("weight_decay", 0.0)),
            optimizer=str(params.get("optimizer", "adam")),
            momentum=float(params.get("momentum", 0.9)),
            max_epochs=spec.budget.max_epochs,
            patience=spec.early_stopping.patience,
            min_delta=spec.early_stopping.min_delta,
            objective=spec.objective,
            direction=spec.direction,
        )


@dataclass
class FitResult:
    """The outcome of one training run; the model holds the best epoch's weights afterwards."""

    best_epoch: int  # 1-based; with no validation data, the last epoch
    best_value: float | None
    val_metrics: dict[str, float | None] | None
    train_curve: list[float] = field(default_factory=list)
    val_curve: list[float] = field(default_factory=list)
    epochs_run: int = 0


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD with (Nesterov-free) momentum."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _criterion(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if task == "classification":
        return nn.functional.cross_entropy
    return lambda out, y: nn.functional.mse_loss(out.reshape(-1), y)


def predict_outputs(model: nn.Module, X: torch.Tensor, batch: int = EVAL_BATCH) -> torch.Tensor:
    """Raw model outputs in large batches, eval mode, no autograd."""
    model.eval()
    with torch.inference_mode():
        if len(X) == 0:
            return model(X)
        return torch.cat([model(X[i : i + batch]) for i in range(0, len(X), batch)])


def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, task: str) -> tuple[float, np.ndarray]:
    """Mean loss and outputs as numpy: class probabilities, or predictions on the standardised target."""
    out = predict_outputs(model, X)
    with torch.inference_mode():
        loss = float(_criterion(task)(out, y))
        result = torch.softmax(out, dim=1) if task == "classification" else out.reshape(-1)
    return loss, result.float().cpu().numpy()


def _improved(value: float, best: float | None, cfg: TrainConfig) -> bool:
    if best is None:
        return True
    if cfg.direction == "minimize":
        return value < best - cfg.min_delta
    return value > best + cfg.min_delta


def fit(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor] | None,
    cfg: TrainConfig,
    *,
    task: str,
    generator: torch.Generator | None = None,
    val_metrics_fn: Callable[[np.ndarray, float], dict[str, float | None]] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> FitResult:
    """Train up to ``cfg.max_epochs``; with ``val``, stop after ``patience`` epochs without improvement.

    The objective (``cfg.objective``) is computed on ``val`` each epoch via ``val_metrics_fn(outputs,
    loss)`` (default: metrics on the tensors as given) and passed to ``on_epoch(epoch, value)``, which may
    raise (pruning). On return the model holds the weights of the best epoch. Raises
    :class:`TrialConfigError` on a non-finite training or validation value and :class:`StopRequested`
    when ``should_stop()`` is true at an epoch boundary.
    """
    X, y = train
    n = len(X)
    criterion = _criterion(task)
    optimizer = make_optimizer(model, cfg)
    if val_metrics_fn is None and val is not None:
        y_val_np = val[1].cpu().numpy()
        val_metrics_fn = lambda outputs, loss: compute_metrics(task, y_val_np, outputs, loss)
    result = FitResult(best_epoch=0, best_value=None, val_metrics=None)
    best_state: dict[str, torch.Tensor] | None = None
    since_best = 0
    for epoch in range(1, cfg.max_epochs + 1):
        if should_stop():
            raise StopRequested(f"stop requested before epoch {epoch}")
        model.train()
        perm = torch.randperm(n, generator=generator).to(X.device)
        total = torch.zeros((), device=X.device)
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(X[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(idx)  # summed on the device: no host sync per batch
        train_loss = float(total) / max(n, 1) * cfg.loss_scale
        if not math.isfinite(train_loss):  # NaN/inf anywhere in the epoch propagates into the sum
            raise TrialConfigError(f"training loss is {train_loss} at epoch {epoch}")
        result.train_curve.append(train_loss)
        result.epochs_run = epoch
        if val is None:
            continue
        val_loss, outputs = evaluate(model, val[0], val[1], task)
        val_loss *= cfg.loss_scale
        if not math.isfinite(val_loss):  # weights that turned NaN on the epoch's last step, whatever the objective
            raise TrialConfigError(f"validation loss is {val_loss} at epoch {epoch}")
        # The full metrics (ROC-AUC etc.) cost more than the validation pass itself: with the default
        # objective they are computed only for an epoch that becomes the best one.
        metrics = None if cfg.objective == "val_loss" else val_metrics_fn(outputs, val_loss)  # type: ignore[misc]
        value = val_loss if metrics is None else objective_value(cfg.objective, metrics)
        if not math.isfinite(value):
            raise TrialConfigError(f"validation {cfg.objective} is {value} at epoch {epoch}")
        result.val_curve.append(value)
        if _improved(value, result.best_value, cfg):
            if metrics is None:
                metrics = val_metrics_fn(outputs, val_loss)  # type: ignore[misc]
            result.best_epoch, result.best_value, result.val_metrics = epoch, value, metrics
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            since_best = 0
        else:
            since_best += 1
        if on_epoch is not None:
            on_epoch(epoch, value)
        if since_best >= cfg.patience:
            break
    if val is None:
        result.best_epoch = result.epochs_run
    elif best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result
