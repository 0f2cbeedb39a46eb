"""K-fold in lockstep: the K folds of a trial train together as one batched MLP.

The folds' weights are stacked along a leading fold dimension and every layer is one ``torch.baddbmm``,
so a 5-fold trial of a small MLP costs about 1.75x one holdout trial instead of 4-5x. Everything else is
per fold, as if the folds trained one after another (:meth:`tuner.objective.Objective._kfold_sequential`):
each fold starts from the same seeded initial weights, draws its own shuffles from its own generator,
uses its own rows (padded to a common length and masked), stops early on its own patience and keeps its
own best epoch's weights and validation outputs. A fold that stops is dropped from the stacked
parameters, the optimiser's state and the data, so it costs nothing afterwards and nothing moves it. Adam,
AdamW and SGD act on each element independently, so one optimiser over the stacked parameters equals K
separate ones (the step counter is shared; it differs only for a fold with fewer rows whose last batch is
empty, where that fold's step is undone). Each fold's loss is its own batch mean, so the gradient of their
sum is each fold's own gradient; which batches are full is known on the host (no device sync per batch).

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
from tuner.models import MLP, build_model, dropout
from tuner.spec import JobSpec
from tuner.training import (
    TrainConfig,
    batched_roc_auc,
    classification_metrics_t,
    epoch_value,
    improved,
    make_optimizer,
)

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

        self.refresh()

    def refresh(self) -> None:
        """Cache the layers' (weight, bias) pairs (indexing a ParameterList costs more than the layer
        itself for small models); call after replacing parameters."""
        self._layers = list(zip(list(self.weights), list(self.biases), strict=True))

    def _apply(self, fn: Any, recurse: bool = True) -> StackedMLP:  # .to(device) may replace parameters
        out = super()._apply(fn, recurse)
        self.refresh()
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self._layers) - 1
        for i, (w, b) in enumerate(self._layers):
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = self.activation(x)
                x = dropout(x, self.p, self.training)  # independent masks per fold
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
    pad_rows = torch.arange(bs, device=device)

    best_params = [p.detach().clone() for p in parameters]  # [K, ...]: each fold's best weights so far
    best_value: list[float | None] = [None] * K
    best_epoch = [0] * K
    best_out: list[torch.Tensor | None] = [None] * K
    best_loss = [float("nan")] * K
    since_best = [0] * K
    train_curves: list[list[float]] = [[] for _ in range(K)]
    val_curves: list[list[float]] = [[] for _ in range(K)]
    # The folds still training, in the order of the stacked tensors' leading dimension. A fold that stops
    # is dropped from the parameters, the optimiser's state and the data (see _drop_folds): it costs
    # nothing from then on, and the others' updates are exactly as before.
    alive = list(range(K))

    def _finish_attrs() -> None:
        attrs.update(train_curve=train_curves, val_curve=val_curves, fold_best_epochs=list(best_epoch),
                     fold_values=[v for v in best_value if v is not None])

    for epoch in range(1, cfg.max_epochs + 1):
        if objective.should_stop():
            raise StopRequested(f"stop requested before epoch {epoch}")
        model.train()
        A = len(alive)
        n_batches = max(math.ceil(n_train[k] / bs) for k in alive)
        idx = torch.zeros((A, n_batches * bs), dtype=torch.long)
        for j, k in enumerate(alive):
            idx[j, : n_train[k]] = torch.randperm(n_train[k], generator=generators[k])
        idx = idx.to(device)
        positions = torch.arange(A, device=device).unsqueeze(1)
        # rows of each fold in each batch, known on the host: no device sync to find full or empty batches
        rows_per_batch = [[min(bs, max(0, n_train[k] - b * bs)) for k in alive] for b in range(n_batches)]
        losses: list[torch.Tensor] = []
        for b in range(n_batches):
            counts = rows_per_batch[b]
            ib = idx[:, b * bs : (b + 1) * bs]
            optimizer.zero_grad(set_to_none=True)
            rows = _row_loss(task, model(Xs[positions, ib]), ys[positions, ib])
            if min(counts) == bs:  # every fold a full batch: each fold's mean loss
                per_fold = rows.mean(1)
            else:  # the last batch, shorter for some folds (padding masked out)
                c = torch.tensor(counts, device=device)
                per_fold = torch.where(pad_rows < c.unsqueeze(1), rows, 0).sum(1) / c.clamp(min=1)
            per_fold.sum().backward()  # the gradient of each fold's own mean, as training it alone
            empty = [j for j, c in enumerate(counts) if c == 0]
            if empty:  # a fold with fewer rows has no batch left: undo its step, weights and moments
                sel = torch.tensor(empty, device=device)
                kept = [p.detach()[sel].clone() for p in parameters]
                kept_state = [{k: v[sel].clone() for k, v in optimizer.state.get(p, {}).items()
                               if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == p.shape[0]}
                              for p in parameters]
                optimizer.step()
                with torch.no_grad():
                    for p, saved, saved_state in zip(parameters, kept, kept_state, strict=True):
                        p[sel] = saved
                        for k, v in saved_state.items():
                            optimizer.state[p][k][sel] = v
            else:
                optimizer.step()
            losses.append(per_fold.detach())
        weights = torch.tensor(rows_per_batch, dtype=torch.float32, device=device)  # [batches, A]
        summed = (torch.stack(losses).float() * weights).sum(0)
        alive_t = torch.tensor(alive, device=device)
        n_alive = torch.tensor([n_train[k] for k in alive], dtype=summed.dtype, device=device)
        # losses in the target's units (regression: MSE times the fold's target variance), as fit() reports
        train_loss = (summed / n_alive * loss_scales[alive_t]).tolist()
        model.eval()
        with torch.inference_mode():
            out = model(Xv)
            rows = _row_loss(task, out, yv)
            val_loss_t = torch.where(val_mask, rows, 0).sum(1) / val_count * loss_scales[alive_t]
        val_loss = val_loss_t.tolist()
        aucs = None
        if cfg.objective == "roc_auc" and task == "classification":  # every fold's ROC-AUC in one pass
            with torch.inference_mode():
                aucs = batched_roc_auc(torch.softmax(out, dim=2), yv, val_mask).tolist()
        improved_pos: list[int] = []
        for j, k in enumerate(alive):
            if not math.isfinite(train_loss[j]):
                _finish_attrs()
                raise TrialConfigError(f"training loss is {train_loss[j]} at epoch {epoch} (fold {k})")
            if not math.isfinite(val_loss[j]):
                _finish_attrs()
                raise TrialConfigError(f"validation loss is {val_loss[j]} at epoch {epoch} (fold {k})")
            train_curves[k].append(train_loss[j])
            out_k = out[j, : n_val[k]]
            if cfg.objective == "val_loss":
                value = val_loss[j]
            elif aucs is not None:
                value = aucs[j]
            else:
                value = epoch_value(cfg.objective, task, out_k, yv[j, : n_val[k]], val_loss_t[j], scales[k])
            if not math.isfinite(value):
                _finish_attrs()
                raise TrialConfigError(f"validation {cfg.objective} is {value} at epoch {epoch} (fold {k})")
            val_curves[k].append(value)
            if improved(value, best_value[k], cfg):
                best_value[k], best_epoch[k], best_out[k], best_loss[k] = value, epoch, out_k, val_loss[j]
                since_best[k] = 0
                improved_pos.append(j)
            else:
                since_best[k] += 1
        if improved_pos:
            pos = torch.tensor(improved_pos, device=device)
            orig = alive_t[pos]
            with torch.no_grad():
                for best_p, p in zip(best_params, parameters, strict=True):
                    best_p[orig] = p.detach()[pos]
        # a stopped fold reports its best value from now on; a training one its current value
        mean = float(np.mean([val_curves[k][-1] if k in alive else best_value[k] for k in range(K)
                              if best_value[k] is not None]))
        keep = [j for j, k in enumerate(alive) if since_best[k] < cfg.patience]
        if reporter(mean, epoch):
            _finish_attrs()
            raise optuna.TrialPruned(f"pruned at epoch {epoch} (mean {spec.objective} over folds={mean:.6g})")
        if not keep:
            break
        if len(keep) < len(alive):
            Xs, ys, Xv, val_mask, yv, val_count = _drop_folds(
                keep, model, optimizer, (Xs, ys, Xv, val_mask, yv, val_count), device
            )
            parameters = list(model.parameters())  # the same order as best_params
            alive = [alive[j] for j in keep]

    fold_metrics: list[dict[str, float | None] | None] = []
    for k, fold in enumerate(folds):
        outputs_t = best_out[k]
        assert outputs_t is not None and fold.val_idx is not None
        if task == "classification":  # in torch: scikit-learn's input checks cost more than the metrics of
            with torch.inference_mode():  # these small folds (validation labels are known classes, >= 0)
                proba = torch.softmax(outputs_t, dim=1).float()
                fold_metrics.append(classification_metrics_t(proba, tensors[k][3], best_loss[k]))
        else:
            outputs = fold.preprocessor.inverse_target(outputs_t.reshape(-1).float().cpu().numpy())
            fold_metrics.append(compute_metrics(task, data.dev_y[fold.val_idx], outputs, best_loss[k]))
    _finish_attrs()
    from tuner.objective import mean_metrics

    values = [float(v) for v in best_value if v is not None]
    attrs["best_epoch"] = max(1, round(float(np.mean(best_epoch))))
    attrs["val_metrics"] = mean_metrics(fold_metrics)
    return float(np.mean(values))


def _drop_folds(
    keep: list[int], model: StackedMLP, optimizer: torch.optim.Optimizer, tensors: tuple[torch.Tensor, ...],
    device: torch.device,
) -> tuple[torch.Tensor, ...]:
    """Keep only the stacked positions ``keep``: new parameters (autograd keeps a parameter's shape, so
    they are replaced rather than resized) carrying the optimiser's per-parameter state (moments, momentum
    buffers; the shared step counter stays), and the per-fold data tensors."""
    sel = torch.tensor(keep, device=device)
    replaced: dict[int, nn.Parameter] = {}
    with torch.no_grad():
        for plist in (model.weights, model.biases):
            for i, old in enumerate(plist):
                new = nn.Parameter(old.detach()[sel].clone())
                state = optimizer.state.pop(old, {})
                optimizer.state[new] = {
                    key: value[sel].clone() if isinstance(value, torch.Tensor) and value.dim() > 0
                    and value.shape[0] == old.shape[0] else value
                    for key, value in state.items()
                }
                plist[i] = new
                replaced[id(old)] = new
    for group in optimizer.param_groups:
        group["params"] = [replaced.get(id(p), p) for p in group["params"]]
    model.refresh()
    return tuple(t[sel] for t in tensors)
