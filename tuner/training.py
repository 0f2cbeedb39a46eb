"""The training loop: in-memory tensors sliced by a shuffled index, early stopping with best weights kept.

An epoch computes only what early stopping and the pruner need (the loss, and the objective in torch on
the device); the full scikit-learn metric set is computed once, from the best epoch's kept outputs.

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
from tuner.metrics import compute_metrics

__all__ = [
    "EVAL_BATCH", "FitResult", "TrainConfig", "batched_roc_auc", "binary_roc_auc", "classification_metrics_t", "epoch_value", "evaluate", "f1_macro", "fit",
    "is_decayed", "make_optimizer", "predict_outputs", "roc_auc",
]

EVAL_BATCH = 8192


@dataclass
class TrainConfig:
    """What the loop needs besides the model and data (from a trial's params and the spec)."""

    lr: float
    batch_size: int
    weight_decay: float = 0.0
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay_on: str = "weights"  # "weights": not biases/normalisation weights (ndim <= 1); "all": every parameter
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
            weight_decay_on=str(getattr(spec, "weight_decay_on", "weights")),
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


def is_decayed(p: torch.Tensor) -> bool:
    """Whether weight decay applies to a parameter by default (``weight_decay_on: "weights"``): weight
    matrices and conv kernels do; biases and normalisation weights (``ndim <= 1``) do not."""
    return p.ndim > 1


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD with (Nesterov-free) momentum, as one fused kernel per step.

    ``fused=True`` (CPU and CUDA) updates every parameter in one kernel: on a small model the step is
    about a third cheaper than ``foreach=True`` (a dozen multi-tensor ops) and much cheaper than torch's
    default per-parameter loop on the CPU; the updates are the same to float rounding. Where the fused
    kernel is not available (other devices, non-float parameters) the multi-tensor path is used.

    Weight decay applies to the parameters :func:`is_decayed` selects (a second parameter group with
    ``weight_decay=0`` holds biases and normalisation weights) unless ``cfg.weight_decay_on == "all"``.
    """
    all_params = list(model.parameters())
    params: list[Any] = all_params
    if cfg.weight_decay_on != "all" and cfg.weight_decay != 0:
        groups: list[dict[str, Any]] = [
            {"params": [p for p in all_params if is_decayed(p)]},
            {"params": [p for p in all_params if not is_decayed(p)], "weight_decay": 0.0},
        ]
        params = [g for g in groups if g["params"]]
    if cfg.optimizer == "adamw":
        cls: type[torch.optim.Optimizer] = torch.optim.AdamW
        kwargs: dict[str, Any] = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    elif cfg.optimizer == "sgd":
        cls = torch.optim.SGD
        kwargs = {"lr": cfg.lr, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay}
    else:
        cls = torch.optim.Adam
        kwargs = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    try:
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, ValueError, TypeError):  # no fused kernel for these parameters or this device
        return cls(params, foreach=True, **kwargs)


def _criterion(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if task == "classification":
        return nn.functional.cross_entropy
    return lambda out, y: nn.functional.mse_loss(out.reshape(-1), y)


def predict_outputs(model: nn.Module, X: torch.Tensor, batch: int = EVAL_BATCH) -> torch.Tensor:
    """Raw model outputs in large batches, eval mode, no autograd."""
    model.eval()
    with torch.inference_mode():
        if len(X) <= batch:
            return model(X)
        return torch.cat([model(X[i : i + batch]) for i in range(0, len(X), batch)])


def _as_numpy_outputs(out: torch.Tensor, task: str) -> np.ndarray:
    with torch.inference_mode():
        result = torch.softmax(out, dim=1) if task == "classification" else out.reshape(-1)
    return result.float().cpu().numpy()


def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, task: str) -> tuple[float, np.ndarray]:
    """Mean loss and outputs as numpy: class probabilities, or predictions on the standardised target."""
    out = predict_outputs(model, X)
    with torch.inference_mode():
        loss = float(_criterion(task)(out, y))
    return loss, _as_numpy_outputs(out, task)


# ------------------------------------------------------------------------ per-epoch metrics in torch
def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of ``x`` with ties given their average rank (as ``scipy.stats.rankdata``)."""
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)
    return (ends - (counts.to(torch.float64) - 1) / 2)[inverse]


def binary_roc_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """ROC-AUC by the Mann-Whitney rank statistic (equals scikit-learn's); NaN when one class is absent."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _ovr_scores(proba: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """The one-vs-rest scores scikit-learn ranks in :mod:`tuner.metrics`, on ``proba``'s device: the
    probabilities as float32 (as :func:`_as_numpy_outputs` hands them over), through
    :func:`tuner.metrics.ovr_input` on the host, block by block (``[..., N, C]``: one fold at a time, as a
    2-D array): softmax rows as they are, so exact ties fall as in ``roc_auc_score`` on the same
    probabilities; other rows divided by their numpy sum. A normalisation in torch would round differently
    and keep or break ties unlike scikit-learn's input."""
    from tuner.metrics import ovr_input

    a = proba.detach().float().cpu().numpy()
    blocks = a.reshape(-1, *a.shape[-2:]) if a.ndim >= 3 else a[None]  # one block per fold, as metrics sees it
    rows = None if valid is None else valid.detach().cpu().numpy().reshape(len(blocks), -1)
    out = np.ones_like(blocks)  # padding rows (not valid) are never ranked
    for i, block in enumerate(blocks):
        real = slice(None) if rows is None else rows[i]
        out[i][real] = ovr_input(block[real])
    return torch.from_numpy(out).reshape(a.shape).to(proba.device)


def batched_binary_roc_auc(scores: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """:func:`binary_roc_auc` of every row of ``scores [R, N]`` at once (``valid`` marks the real entries
    of padded rows): ``[R]`` float64, NaN for a row without a positive or a negative. Exact ties share
    their average rank (the scores are compared in float64, which holds float32 scores exactly)."""
    R, N = scores.shape
    s = torch.where(valid, scores.double(), torch.inf)  # padding sorts last and is masked out below
    ss, order = torch.sort(s, dim=1, stable=True)
    new_group = torch.ones_like(ss, dtype=torch.bool)
    new_group[:, 1:] = ss[:, 1:] != ss[:, :-1]
    gid = (torch.cumsum(new_group, dim=1) - 1) + torch.arange(R, device=s.device).unsqueeze(1) * N
    pos = torch.arange(N, device=s.device, dtype=torch.float64).expand(R, N).reshape(-1)
    flat = gid.reshape(-1)
    first = torch.full((R * N,), float(N), dtype=torch.float64, device=s.device).scatter_reduce(
        0, flat, pos, "amin", include_self=True)
    last = torch.full((R * N,), -1.0, dtype=torch.float64, device=s.device).scatter_reduce(
        0, flat, pos, "amax", include_self=True)
    avg = (first + last) / 2 + 1  # 1-based average rank of each group of ties
    ranks = torch.empty_like(ss).scatter_(1, order, avg[gid])
    pos_mask = positive & valid
    n_pos = pos_mask.sum(1).double()
    n_neg = valid.sum(1).double() - n_pos
    auc = ((ranks * pos_mask).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return torch.where((n_pos > 0) & (n_neg > 0), auc, torch.nan)


def batched_roc_auc(proba: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """:func:`roc_auc` of each fold of ``proba [A, N, C]``, ``y [A, N]`` (padded rows marked by ``valid``):
    the same scores (:func:`_ovr_scores`, rows normalised one by one), so exact ties fall as in
    scikit-learn's ``roc_auc_score`` on what :mod:`tuner.metrics` passes it."""
    A, N, C = proba.shape
    if C == 2:
        return batched_binary_roc_auc(proba[:, :, 1].float(), y == 1, valid)
    p = _ovr_scores(proba, valid)
    scores = p.permute(0, 2, 1).reshape(A * C, N)
    positive = (y.unsqueeze(1) == torch.arange(C, device=y.device).view(1, C, 1)).reshape(A * C, N)
    aucs = batched_binary_roc_auc(scores, positive, valid.unsqueeze(1).expand(A, C, N).reshape(A * C, N))
    # the mean over classes by numpy, as roc_auc and scikit-learn take it (the same rounding); NaN when a
    # class is missing, as roc_auc
    return torch.from_numpy(aucs.view(A, C).cpu().numpy().mean(axis=1)).to(proba.device)


def roc_auc(proba: torch.Tensor, y: torch.Tensor) -> float:
    """Binary: class 1's probability; multiclass: macro one-vs-rest (scikit-learn's ``roc_auc_score``), on
    the scores :mod:`tuner.metrics` gives scikit-learn (float32; multiclass rows normalised by
    :func:`_ovr_scores`), so ties fall the same way on any device."""
    if proba.shape[1] == 2:
        return binary_roc_auc(proba[:, 1].float(), y == 1)
    p = _ovr_scores(proba)
    aucs = [binary_roc_auc(p[:, c], y == c) for c in range(p.shape[1])]
    return float(np.mean(aucs))  # NaN when a class is missing, as scikit-learn raises


def _macro_counts(pred: torch.Tensor, y: torch.Tensor, n_classes: int) -> tuple[torch.Tensor, ...]:
    """Per-class true positives, predicted and true counts (float64), and which classes occur in the truth
    or the predictions: scikit-learn's default label set for macro averages."""
    tp = torch.bincount(y[pred == y], minlength=n_classes).double()
    n_pred = torch.bincount(pred, minlength=n_classes).double()
    n_true = torch.bincount(y, minlength=n_classes).double()
    return tp, n_pred, n_true, (n_pred + n_true) > 0


def f1_macro(pred: torch.Tensor, y: torch.Tensor, n_classes: int) -> float:
    """Macro F1 over the classes present in the truth or the predictions (``f1_score(average="macro",
    zero_division=0)``): a class absent from both does not count as a zero."""
    tp, n_pred, n_true, present = _macro_counts(pred, y, n_classes)
    f1 = 2 * tp / (n_pred + n_true).clamp(min=1)
    return float(f1[present].mean()) if bool(present.any()) else 0.0


def classification_metrics_t(proba: torch.Tensor, y: torch.Tensor, loss: float) -> dict[str, float | None]:
    """:func:`tuner.metrics.classification_metrics` in torch, for labels that are all known classes (``y >=
    0``, as validation rows are): the same keys and values (tested against scikit-learn), at a fraction of
    scikit-learn's per-call cost - the K-fold lockstep path computes one set per fold at the end of every
    trial."""
    n_classes = proba.shape[1]
    pred = proba.argmax(1)
    tp, n_pred, n_true, present = _macro_counts(pred, y, n_classes)
    if bool(present.any()):
        precision = float((tp / n_pred.clamp(min=1))[present].mean())
        recall = float((tp / n_true.clamp(min=1))[present].mean())
        f1 = float((2 * tp / (n_pred + n_true).clamp(min=1))[present].mean())
    else:
        precision = recall = f1 = 0.0
    auc = roc_auc(proba, y) if len(y) > 0 and bool((y != y[0]).any()) else float("nan")
    return {
        "loss": loss if math.isfinite(loss) else None,
        "accuracy": float((pred == y).double().mean()) if len(y) else float("nan"),
        "precision": precision,
        "recall": recall,
        "f1_macro": f1,
        "roc_auc": auc if math.isfinite(auc) else None,
    }


def epoch_value(
    objective: str, task: str, out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor, target_scale: float = 1.0
) -> float:
    """The objective on one epoch's validation outputs, in torch on their device (no scikit-learn).

    ``out`` are raw model outputs (logits, or predictions on the standardised target); regression
    metrics are given in the target's units via ``target_scale`` (the standardiser's scale).
    """
    if objective == "val_loss":
        return float(loss)
    with torch.inference_mode():
        if task == "classification":
            if objective == "accuracy":
                return float((out.argmax(1) == y).double().mean())
            if objective == "f1_macro":
                return f1_macro(out.argmax(1), y, out.shape[1])
            if objective == "roc_auc":
                return roc_auc(torch.softmax(out, dim=1), y)  # same dtype (ties) as the final metrics
            raise ValueError(f"objective {objective} does not fit a classification task")
        err = out.reshape(-1).double() - y.double()
        if objective == "mse":
            return float((err**2).mean()) * target_scale**2
        if objective == "mae":
            return float(err.abs().mean()) * target_scale
        if objective == "r2":  # invariant to the target's standardisation
            if len(y) < 2:
                return float("nan")
            ss_tot = ((y.double() - y.double().mean()) ** 2).sum()
            ss_res = (err**2).sum()
            return float(1 - ss_res / ss_tot) if float(ss_tot) > 0 else float("nan")
        raise ValueError(f"objective {objective} does not fit a regression task")


def improved(value: float, best: float | None, cfg: TrainConfig, min_delta: float | None = None) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` (default ``cfg.min_delta``) in the
    objective's direction."""
    if best is None:
        return True
    delta = cfg.min_delta if min_delta is None else min_delta
    if cfg.direction == "minimize":
        return value < best - delta
    return value > best + delta


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
    target_scale: float = 1.0,
) -> FitResult:
    """Train up to ``cfg.max_epochs``; with ``val``, stop after ``patience`` epochs without improvement.

    Early stopping: ``patience`` counts the epochs since the last improvement by more than
    ``cfg.min_delta`` (over the value of that improvement); the kept weights, best epoch, best value and
    outputs are those of the best value observed (any improvement, however small).

    Each epoch computes only the objective (``cfg.objective``) on ``val``, in torch on the device (see
    :func:`epoch_value`), and passes it to ``on_epoch(epoch, value)``, which may raise (pruning). The
    best epoch's validation outputs are kept, and the full metric set is computed from them once at the
    end via ``val_metrics_fn(outputs, loss)`` (default: scikit-learn metrics on the tensors as given). On
    return the model holds the weights of the best epoch. Raises :class:`TrialConfigError` on a
    non-finite training loss, validation loss or objective, and :class:`StopRequested` when
    ``should_stop()`` is true at an epoch boundary.
    """
    X, y = train
    n = len(X)
    criterion = _criterion(task)
    optimizer = make_optimizer(model, cfg)
    if val_metrics_fn is None and val is not None:
        y_val_np = val[1].cpu().numpy()
        val_metrics_fn = lambda outputs, loss: compute_metrics(task, y_val_np, outputs, loss)
    result = FitResult(best_epoch=0, best_value=None, val_metrics=None)
    best_state: list[torch.Tensor] | None = None
    live_state: list[torch.Tensor] = []
    best_out: torch.Tensor | None = None
    best_loss = float("nan")
    reference: float | None = None  # the value of the last improvement by more than min_delta (patience)
    since_improvement = 0
    batch_rows: torch.Tensor | None = None  # rows per batch, to weight the batch losses into the epoch's mean
    for epoch in range(1, cfg.max_epochs + 1):
        if should_stop():
            raise StopRequested(f"stop requested before epoch {epoch}")
        model.train()
        perm = torch.randperm(n, generator=generator).to(X.device)
        losses: list[torch.Tensor] = []
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(X[idx]), y[idx])
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())  # kept on the device: no host sync and no extra kernel per batch
        if batch_rows is None or len(batch_rows) != len(losses):
            batch_rows = torch.tensor([min(cfg.batch_size, n - s) for s in range(0, n, cfg.batch_size)],
                                      dtype=torch.float32, device=X.device)
        total = torch.dot(torch.stack(losses).float(), batch_rows) if losses else torch.zeros(())
        train_loss = float(total) / max(n, 1) * cfg.loss_scale
        if not math.isfinite(train_loss):  # NaN/inf anywhere in the epoch propagates into the sum
            raise TrialConfigError(f"training loss is {train_loss} at epoch {epoch}")
        result.train_curve.append(train_loss)
        result.epochs_run = epoch
        if val is None:
            continue
        out = predict_outputs(model, val[0])
        with torch.inference_mode():
            val_loss_t = criterion(out, val[1]) * cfg.loss_scale  # regression: MSE in the target's units
        val_loss = float(val_loss_t)
        if not math.isfinite(val_loss):  # weights that turned NaN on the epoch's last step, whatever the objective
            raise TrialConfigError(f"validation loss is {val_loss} at epoch {epoch}")
        value = epoch_value(cfg.objective, task, out, val[1], val_loss_t, target_scale)
        if not math.isfinite(value):
            raise TrialConfigError(f"validation {cfg.objective} is {value} at epoch {epoch}")
        result.val_curve.append(value)
        if improved(value, result.best_value, cfg, 0.0):  # the best observed: its weights are kept
            result.best_epoch, result.best_value = epoch, value
            best_out, best_loss = out, val_loss
            if best_state is None:
                # the live tensors behind the state dict (updated in place by the optimiser), listed once
                live_state = list(model.state_dict(keep_vars=True).values())
                best_state = [p.detach().clone() for p in live_state]
            else:
                for kept, p in zip(best_state, live_state, strict=True):
                    kept.copy_(p.detach())
        if improved(value, reference, cfg):  # a real improvement (by more than min_delta): patience restarts
            reference, since_improvement = value, 0
        else:
            since_improvement += 1
        if on_epoch is not None:
            on_epoch(epoch, value)
        if since_improvement >= cfg.patience:
            break
    if val is None:
        result.best_epoch = result.epochs_run
    elif best_state is not None:
        model.load_state_dict(dict(zip(model.state_dict().keys(), best_state, strict=True)))
        assert best_out is not None and val_metrics_fn is not None
        result.val_metrics = val_metrics_fn(_as_numpy_outputs(best_out, task), best_loss)
    model.eval()
    return result
