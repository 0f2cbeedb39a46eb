"""K-fold in lockstep: the K folds of a trial train together as one batched MLP.

The folds' weights are stacked along a leading fold dimension and every layer is one ``torch.baddbmm``,
so a K-fold trial costs a little more than one holdout trial instead of K of them. Everything else is
per fold, as if the folds trained one after another (:meth:`tuner.objective.Objective._kfold_sequential`):
each fold starts from the same seeded initial weights, draws its own shuffles from its own generator,
uses its own rows (padded to a common length and masked), stops early on its own patience and keeps its
own best epoch's weights and validation outputs. A stopped fold is frozen: its weights are put back after
every later optimiser step, so neither momentum nor weight decay moves it. Adam, AdamW and SGD act on each
element independently, so one optimiser over the stacked parameters equals K separate ones (the step
counter is shared; it differs only for a fold whose batch is empty or frozen, where the step is undone).

After each epoch the trial reports the mean objective over its folds (a fold's current value while it
trains, its best value once stopped) at step = epoch, so median/percentile/successive-halving/hyperband
pruners can stop a bad K-fold trial after a few epochs. Models that cannot be batched (the CNN) and the
Wilcoxon pruner (which needs one score per fold) use the sequential path; :func:`can_batch` decides.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
import torch
from torch import nn

from tuner.errors import StopRequested, TrialConfigError
from tuner.metrics import compute_metrics
from tuner.models import MLP, build_model
from tuner.spec import JobSpec
from tuner.training import TrainConfig, epoch_value, improved, make_optimizer

if TYPE_CHECKING:
    from tuner.data import PreparedData
    from tuner.objective import Objective, Reporter

__all__ = ["StackedMLP", "can_batch", "fit_folds_lockstep"]

_FOLD_SEED_STRIDE = 7919  # as tuner.objective: fold i of trial n is seeded split.seed + n + stride * i


def can_batch(spec: JobSpec, device: torch.device | str | None = None, data: PreparedData | None = None) -> bool:
    """True for an MLP whose pruner does not need per-fold scores (not Wilcoxon) and whose folds have the
    same input width (one-hot vocabularies come from each fold's training part, so they can differ)."""
    same_width = data is None or len({f.n_features for f in data.folds}) == 1
    return spec.model.kind == "mlp" and spec.pruner.kind != "wilcoxon" and same_width


class StackedMLP(nn.Module):
    """K MLPs of the same shape as one module: input ``[K, B, F]`` -> output ``[K, B, C]``."""

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        nets = [m.net if isinstance(m, MLP) else m for m in models]
        linears = [[m for m in net.modules() if isinstance(m, nn.Linear)] for net in nets]
        first = list(nets[0].modules())
        self.activation = next(m for m in first[1:] if not isinstance(m, (nn.Linear, nn.Dropout, nn.Sequential)))
        drops = [m for m in first if isinstance(m, nn.Dropout)]
        self.p = float(drops[0].p) if drops else 0.0
        n_layers = len(linears[0])
        # weight [K, in, out] (transposed so x @ W works with bmm), bias [K, 1, out]
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.stack([ls[i].weight.detach().t() for ls in linears]).contiguous())
             for i in range(n_layers)]
        )
        self.biases = nn.ParameterList(
            [nn.Parameter(torch.stack([ls[i].bias.detach() for ls in linears]).unsqueeze(1).contiguous())
             for i in range(n_layers)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = self.activation(x)
                if self.p > 0:
                    x = nn.functional.dropout(x, self.p, self.training)  # independent masks per fold
        return x

    def fold_state(self, k: int, model: MLP) -> dict[str, torch.Tensor]:
        """Fold ``k``'s weights as a state dict for ``model`` (an MLP of the same shape)."""
        keys = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        state: dict[str, torch.Tensor] = {}
        for name, w, b in zip(keys, self.weights, self.biases, strict=True):
            state[f"{name}.weight"] = w[k].detach().t().clone()
            state[f"{name}.bias"] = b[k, 0].detach().clone()
        return state


def _stack_rows(parts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad per-fold row tensors to a common length: ``[K, N, ...]`` plus a ``[K, N]`` validity mask."""
    n = max(len(p) for p in parts)
    out = parts[0].new_zeros((len(parts), n, *parts[0].shape[1:]))
    mask = torch.zeros((len(parts), n), dtype=torch.bool, device=parts[0].device)
    for k, p in enumerate(parts):
        out[k, : len(p)] = p
        mask[k, : len(p)] = True
    return out, mask


def _row_loss(task: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-row training criterion for ``out [K, B, C]``, ``y [K, B]`` -> ``[K, B]``."""
    if task == "classification":
        k, b, c = out.shape
        return nn.functional.cross_entropy(out.reshape(k * b, c), y.reshape(-1), reduction="none").view(k, b)
    return (out.squeeze(-1) - y) ** 2


def fit_folds_lockstep(
    objective: Objective, trial: optuna.Trial, params: dict[str, Any], attrs: dict[str, Any], reporter: Reporter
) -> float:
    """Train all folds of a K-fold trial at once; fill ``attrs`` like the sequential path; return the mean.

    Raises :class:`optuna.TrialPruned` when the pruner stops the trial after an epoch,
    :class:`TrialConfigError` on a non-finite loss or objective of a fold still training, and
    :class:`StopRequested` when asked to stop at an epoch boundary.
    """
    spec, data, device = objective.spec, objective.data, objective.device
    folds = data.folds
    K = len(folds)
    cfg = TrainConfig.from_params(params, spec)
    task = data.task
    base = spec.split.seed + trial.number
    models: list[nn.Module] = []
    generators: list[torch.Generator] = []
    for i in range(K):
        seed = base + _FOLD_SEED_STRIDE * i
        torch.manual_seed(seed)
        generators.append(torch.Generator().manual_seed(seed))
        models.append(build_model(spec.model, params, folds[i].n_features, data.n_outputs, input_shape=data.input_shape))
    torch.manual_seed(base)  # dropout draws from the global generator
    model = StackedMLP(models).to(device)
    optimizer = make_optimizer(model, cfg)
    parameters = [p for p in model.parameters()]

    tensors = [objective._fold_tensors(i) for i in range(K)]
    stacked = getattr(objective, "_stacked_folds", None)
    if stacked is None:  # padded once per objective, reused by every trial
        stacked = (_stack_rows([t[0] for t in tensors])[0], _stack_rows([t[1] for t in tensors])[0],
                   *_stack_rows([t[2] for t in tensors]), _stack_rows([t[3] for t in tensors])[0])
        objective._stacked_folds = stacked  # type: ignore[attr-defined]
    Xs, ys, Xv, val_mask, yv = stacked
    n_train = [len(t[0]) for t in tensors]
    n_val = [len(t[2]) for t in tensors]
    val_count = val_mask.sum(1).to(Xv.dtype)
    scales = [1.0] * K
    if task == "regression":
        scales = [float(f.preprocessor.target_scaler.scale.ravel()[0]) if f.preprocessor.target_scaler is not None
                  else 1.0 for f in folds]
    loss_scales = torch.tensor([f.preprocessor.loss_scale for f in folds], device=device)
    bs = cfg.batch_size
    n_batches = max(math.ceil(n / bs) for n in n_train)
    folds_idx = torch.arange(K, device=device).unsqueeze(1)

    best_params = [p.detach().clone() for p in parameters]
    best_value: list[float | None] = [None] * K
    best_epoch = [0] * K
    best_out: list[torch.Tensor | None] = [None] * K
    best_loss = [float("nan")] * K
    since_best = [0] * K
    active = [True] * K
    train_curves: list[list[float]] = [[] for _ in range(K)]
    val_curves: list[list[float]] = [[] for _ in range(K)]

    def _finish_attrs() -> None:
        attrs.update(train_curve=train_curves, val_curve=val_curves, fold_best_epochs=list(best_epoch),
                     fold_values=[v for v in best_value if v is not None])

    for epoch in range(1, cfg.max_epochs + 1):
        if objective.should_stop():
            raise StopRequested(f"stop requested before epoch {epoch}")
        model.train()
        idx = torch.zeros((K, n_batches * bs), dtype=torch.long)
        live = torch.zeros((K, n_batches * bs), dtype=torch.bool)
        for k in range(K):
            if active[k]:  # a frozen fold's rows stay masked: its batches are empty, its steps undone
                idx[k, : n_train[k]] = torch.randperm(n_train[k], generator=generators[k])
                live[k, : n_train[k]] = True
        idx, live = idx.to(device), live.to(device)
        total = torch.zeros(K, device=device)
        for b in range(n_batches):
            ib = idx[:, b * bs : (b + 1) * bs]
            mb = live[:, b * bs : (b + 1) * bs]
            count = mb.sum(1)
            skip = count == 0
            optimizer.zero_grad(set_to_none=True)
            rows = _row_loss(task, model(Xs[folds_idx, ib]), ys[folds_idx, ib])
            per_fold = torch.where(mb, rows, 0).sum(1) / count.clamp(min=1)
            per_fold.sum().backward()
            if bool(skip.any()):
                kept = [p.detach()[skip].clone() for p in parameters]
                optimizer.step()
                with torch.no_grad():
                    for p, saved in zip(parameters, kept, strict=True):
                        p[skip] = saved
            else:
                optimizer.step()
            total += per_fold.detach() * count
        # losses in the target's units (regression: MSE times the fold's target variance), as fit() reports
        train_loss = (total / torch.tensor(n_train, dtype=total.dtype, device=device) * loss_scales).tolist()
        model.eval()
        with torch.inference_mode():
            out = model(Xv)
            rows = _row_loss(task, out, yv)
            val_loss_t = torch.where(val_mask, rows, 0).sum(1) / val_count * loss_scales
        val_loss = val_loss_t.tolist()
        improved_folds: list[int] = []
        for k in range(K):
            if not active[k]:
                continue
            if not math.isfinite(train_loss[k]):
                _finish_attrs()
                raise TrialConfigError(f"training loss is {train_loss[k]} at epoch {epoch} (fold {k})")
            if not math.isfinite(val_loss[k]):
                _finish_attrs()
                raise TrialConfigError(f"validation loss is {val_loss[k]} at epoch {epoch} (fold {k})")
            train_curves[k].append(train_loss[k])
            out_k = out[k, : n_val[k]]
            value = val_loss[k] if cfg.objective == "val_loss" else epoch_value(
                cfg.objective, task, out_k, yv[k, : n_val[k]], val_loss_t[k], scales[k]
            )
            if not math.isfinite(value):
                _finish_attrs()
                raise TrialConfigError(f"validation {cfg.objective} is {value} at epoch {epoch} (fold {k})")
            val_curves[k].append(value)
            if improved(value, best_value[k], cfg):
                best_value[k], best_epoch[k], best_out[k], best_loss[k] = value, epoch, out_k, val_loss[k]
                since_best[k] = 0
                improved_folds.append(k)
            else:
                since_best[k] += 1
        if improved_folds:
            sel = torch.tensor(improved_folds, device=device)
            with torch.no_grad():
                for best_p, p in zip(best_params, parameters, strict=True):
                    best_p[sel] = p.detach()[sel]
        current = [val_curves[k][-1] if active[k] else best_value[k] for k in range(K)]
        for k in range(K):
            if active[k] and since_best[k] >= cfg.patience:
                active[k] = False
                with torch.no_grad():  # frozen at its best weights from now on
                    for best_p, p in zip(best_params, parameters, strict=True):
                        p[k] = best_p[k]
        mean = float(np.mean([c for c in current if c is not None]))
        if reporter(mean, epoch):
            _finish_attrs()
            raise optuna.TrialPruned(f"pruned at epoch {epoch} (mean {spec.objective} over folds={mean:.6g})")
        if not any(active):
            break

    fold_metrics: list[dict[str, float | None] | None] = []
    for k, fold in enumerate(folds):
        outputs_t = best_out[k]
        assert outputs_t is not None and fold.val_idx is not None
        if task == "classification":
            outputs = torch.softmax(outputs_t, dim=1).float().cpu().numpy()
        else:
            outputs = fold.preprocessor.inverse_target(outputs_t.reshape(-1).float().cpu().numpy())
        fold_metrics.append(compute_metrics(task, data.dev_y[fold.val_idx], outputs, best_loss[k]))
    _finish_attrs()
    from tuner.objective import mean_metrics

    values = [float(v) for v in best_value if v is not None]
    attrs["best_epoch"] = max(1, round(float(np.mean(best_epoch))))
    attrs["val_metrics"] = mean_metrics(fold_metrics)
    with torch.no_grad():  # leave the model at each fold's best weights (for callers that inspect it)
        for best_p, p in zip(best_params, parameters, strict=True):
            p.copy_(best_p)
    return float(np.mean(values))
