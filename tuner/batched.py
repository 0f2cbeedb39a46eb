"""K-fold in lockstep: the K folds of a trial train together as one batched MLP.

The folds' weights are stacked along a leading fold dimension and every layer is one ``torch.baddbmm``,
so a 5-fold trial of a small MLP costs about 1.75x one holdout trial instead of 4-5x. Everything else is
per fold, as if the folds trained one after another (:meth:`tuner.objective.Objective._kfold_sequential`):
each fold starts from the same seeded initial weights, draws its own shuffles from its own generator,
uses its own rows (padded to a common length and masked), stops early on its own patience and keeps its
own best epoch's weights and validation outputs. A fold that stops is dropped from the stacked
parameters, the optimiser's state and the data, so it costs nothing afterwards and nothing moves it.

All of a fold's weights are one row of a single ``[K, P]`` parameter (the layers' weights and biases share
its storage, their gradients its gradient's), and :class:`StackedOptimizer` is Adam, AdamW or SGD over its rows with
per-member step counts, learning rates and weight decays: a fold with no rows in a batch (fewer training
rows than the others, so no last batch) is not updated and its step count does not advance, exactly as
when it trains alone. Each fold's loss is its own batch mean, so the gradient of their sum is each fold's
own gradient; which batches are full is known on the host (no device sync per batch).

After each epoch the trial reports the mean objective over its folds (a fold's current value while it
trains, its best value once stopped) at step = epoch, so median/percentile/successive-halving/hyperband
pruners can stop a bad K-fold trial after a few epochs. Models that cannot be batched (the CNN) and the
Wilcoxon pruner (which needs one score per fold) use the sequential path; :func:`can_batch` decides.
"""

from __future__ import annotations

import itertools
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
    is_decayed,
)

if TYPE_CHECKING:
    from tuner.data import PreparedData
    from tuner.objective import Objective, Reporter

__all__ = ["StackedMLP", "StackedOptimizer", "can_batch", "fit_folds_lockstep"]

_FOLD_SEED_STRIDE = 7919  # as tuner.objective: fold i of trial n is seeded split.seed + n + stride * i


def can_batch(spec: JobSpec, device: torch.device | str | None = None, data: PreparedData | None = None) -> bool:
    """True for an MLP whose pruner does not need per-fold scores (not Wilcoxon) and whose folds have the
    same input width (one-hot vocabularies come from each fold's training part, so they can differ)."""
    same_width = data is None or len({f.n_features for f in data.folds}) == 1
    return spec.model.kind == "mlp" and spec.pruner.kind != "wilcoxon" and same_width


class StackedMLP(nn.Module):
    """K MLPs of the same shape as one module: input ``[K, B, F]`` -> output ``[K, B, C]``.

    Member ``k``'s parameters are row ``k`` of one parameter ``flat [K, P]``: the layers' weights (stored
    transposed, ``[in, out]``, so ``x @ W`` works with ``bmm``), then their biases. The layers' weights
    (``[K, in, out]``) and biases (``[K, 1, out]``) that the forward pass uses are leaves sharing ``flat``'s
    storage (and version counter), and their ``.grad`` are the matching views of ``flat.grad``: backward
    accumulates each layer's gradient into its slice of ``flat.grad`` in place. So an optimiser sees one
    ``[K, P]`` parameter with its gradient: a step is a few tensor operations whatever the depth, and
    selecting members (dropping stopped folds, keeping best weights) is one row selection. ``flat.grad``
    is therefore zeroed in place (:meth:`zero_grad`), never set to ``None``. ``decay_mask [1, P]`` marks
    the entries weight decay applies to by default (:func:`tuner.training.is_decayed`: the weights, not
    the biases).

    (Views of ``flat`` taken in each forward pass would route the gradients through autograd instead, and
    gradient hooks or a concatenation after backward would do the same copy in Python: each costs more per
    step than the layers of a small model.)
    """

    decay_mask: torch.Tensor

    def __init__(self, models: list[nn.Module]) -> None:
        super().__init__()
        nets = [m.net if isinstance(m, MLP) else m for m in models]
        linears = [[m for m in net.modules() if isinstance(m, nn.Linear)] for net in nets]
        first = list(nets[0].modules())
        self.activation = next(m for m in first[1:] if not isinstance(m, (nn.Linear, nn.Dropout, nn.Sequential)))
        drops = [m for m in first if isinstance(m, nn.Dropout)]
        self.p = float(drops[0].p) if drops else 0.0
        self._shapes = [(layer.in_features, layer.out_features) for layer in linears[0]]
        rows = [torch.cat([layer.weight.detach().t().reshape(-1) for layer in ls] + [layer.bias.detach() for layer in ls])
                for ls in linears]
        mask = [torch.full((t.numel(),), is_decayed(t)) for t in
                [layer.weight for layer in linears[0]] + [layer.bias for layer in linears[0]]]
        self.register_buffer("decay_mask", torch.cat(mask).unsqueeze(0), persistent=False)
        self._layers: list[tuple[nn.Parameter, nn.Parameter]] = []
        self.set_flat(torch.stack(rows))

    def set_flat(self, flat: torch.Tensor) -> nn.Parameter:
        """Make ``flat [K', P]`` (not copied) the members' parameters, a new leaf (autograd keeps a
        parameter's shape), and bind the layers to it; returns it. Selecting members:
        ``set_flat(flat.detach()[rows])``."""
        self.flat = flat if isinstance(flat, nn.Parameter) else nn.Parameter(flat.detach())
        K = self.flat.shape[0]
        if self.flat.grad is None or self.flat.grad.shape != self.flat.shape:
            self.flat.grad = torch.zeros_like(self.flat)
        grad = self.flat.grad

        def leaf(start: int, shape: tuple[int, ...]) -> nn.Parameter:
            n = math.prod(shape[1:])
            t = nn.Parameter(self.flat.detach()[:, start : start + n].view(shape))
            t.grad = grad[:, start : start + n].view(shape)  # backward adds into it, in place
            return t

        weights, start = [], 0
        for n_in, n_out in self._shapes:
            weights.append(leaf(start, (K, n_in, n_out)))
            start += n_in * n_out
        biases = []
        for _, n_out in self._shapes:
            biases.append(leaf(start, (K, 1, n_out)))
            start += n_out
        self._layers = list(zip(weights, biases, strict=True))
        return self.flat

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero ``flat.grad`` in place (the layers' gradients are views of it; ``set_to_none`` is ignored)."""
        if self.flat.grad is None:
            self.set_flat(self.flat)
        else:
            self.flat.grad.zero_()

    def _apply(self, fn: Any, recurse: bool = True) -> StackedMLP:  # .to(device) may replace flat
        out = super()._apply(fn, recurse)
        self.set_flat(self.flat)
        return out

    @property
    def weights(self) -> list[torch.Tensor]:
        """Each layer's weights ``[K, in, out]`` (sharing ``flat``'s storage)."""
        return [w for w, _ in self._layers]

    @property
    def biases(self) -> list[torch.Tensor]:
        """Each layer's biases ``[K, 1, out]`` (sharing ``flat``'s storage)."""
        return [b for _, b in self._layers]

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
        for name, (w, b) in zip(keys, self._layers, strict=True):
            state[f"{name}.weight"] = w[k].detach().t().clone()
            state[f"{name}.bias"] = b[k, 0].detach().clone()
        return state


class StackedOptimizer:
    """Adam, AdamW or SGD over one parameter whose leading dimension is the member (``[K, ...]``), each
    member with its own step count, learning rate, weight decay (and SGD momentum).

    The formulas are torch's (``torch.optim.Adam``/``AdamW`` without amsgrad, ``SGD`` with dampening 0 and
    no Nesterov), so member ``k`` follows exactly the path of its row trained alone by torch's optimiser, up
    to float rounding. ``step(active)`` updates only the members marked active: the others' parameters,
    moments and step counts stay as they are (a fold with no rows in this batch). ``lr``,
    ``weight_decay`` and ``momentum`` are a number or one value per member (``[K]``), so the same code can
    serve members with different hyperparameters. ``decay_mask`` (broadcastable to one row, e.g. ``[1, P]``)
    marks the entries weight decay applies to (``None``: all of them).

    Adam and AdamW run torch's own fused kernel (``torch._fused_adam_``/``_fused_adamw_``, what
    :func:`tuner.training.make_optimizer` uses) over the members' rows: it takes one step count per tensor,
    so each member passes its own, and an inactive member is simply left out of the lists; one pass over
    the parameters per step (one call per distinct (lr, weight decay) and decayed/not part of a row). Where
    that kernel is unavailable (``fused=False``, another device or dtype), the same formulas as tensor
    operations over ``[K, P]`` with ``[K, 1]`` per-member coefficients: Adam eight in-place operations
    (seven without weight decay), SGD two to four (SGD always takes this path: it is as fast as torch's fused
    SGD here). The step counts live on the host (float64; no device sync); a step with some members
    inactive updates, on the tensor path, the active rows only (gathered and written back).
    """

    KINDS = ("adam", "adamw", "sgd")

    def __init__(
        self,
        param: nn.Parameter,
        kind: str = "adam",
        lr: float | Any = 1e-3,
        weight_decay: float | Any = 0.0,
        momentum: float | Any = 0.0,
        *,
        decay_mask: torch.Tensor | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        fused: bool | None = None,
    ) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"unknown optimizer {kind!r} (known: {', '.join(self.KINDS)})")
        can_fuse = (kind in ("adam", "adamw") and hasattr(torch, "_fused_adam_") and param.device.type in ("cpu", "cuda")
                    and param.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16))
        if fused and not can_fuse:
            raise ValueError(f"no fused kernel for {kind} on {param.device.type} {param.dtype}")
        self.fused = can_fuse if fused is None else bool(fused)
        self.param = param
        self.kind = kind
        self.betas = betas
        self.eps = eps
        self.decay_mask = decay_mask
        K = param.shape[0]
        self.lr = self._per_member(lr, K)
        self.weight_decay = self._per_member(weight_decay, K)
        self.momentum = self._per_member(momentum, K)
        self.steps = torch.zeros(K, dtype=torch.float64)  # on the host: the bias corrections need no sync
        self.state: dict[str, torch.Tensor] = {}
        if kind in ("adam", "adamw"):
            self.state = {"exp_avg": torch.zeros_like(param.detach()), "exp_avg_sq": torch.zeros_like(param.detach())}
        elif bool((self.momentum != 0).any()):
            # zeros: the first step's buffer is momentum * 0 + grad = grad, as torch's clone of the gradient
            self.state = {"momentum_buffer": torch.zeros_like(param.detach())}
        self._derive()

    @staticmethod
    def _per_member(value: float | Any, K: int) -> torch.Tensor:
        t = torch.as_tensor(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=torch.float64)
        return t.reshape(-1).expand(K).clone() if t.numel() == 1 else t.reshape(K).clone()

    def _derive(self) -> None:
        """The per-member constants of an update, as ``[K, 1, ...]`` tensors on the parameter's device."""
        p = self.param
        shape = (p.shape[0],) + (1,) * (p.dim() - 1)

        def col(values: torch.Tensor) -> torch.Tensor:
            return values.view(shape).to(p.device, p.dtype)

        mask = None if self.decay_mask is None else self.decay_mask.to(p.device, torch.float64)
        derived: dict[str, torch.Tensor] = {}
        if bool((self.weight_decay != 0).any()) and not self.fused:  # (the fused kernel takes wd as it is)
            if self.kind == "adamw":  # decoupled: param *= 1 - lr * wd (on the masked entries)
                shrink = (self.lr * self.weight_decay).view(shape).to(p.device)
                derived["shrink"] = (1 - (shrink if mask is None else shrink * mask)).to(p.dtype)
            else:  # L2: grad += wd * param (full size: a broadcast addcmul is several times slower)
                wd = self.weight_decay.view(shape).to(p.device)
                derived["decay"] = (wd if mask is None else wd * mask).to(p.dtype).expand(p.shape).contiguous()
        if self.kind == "sgd":
            derived["neg_lr"] = col(-self.lr)
            if "momentum_buffer" in self.state:
                derived["momentum"] = col(self.momentum)
        lr = self.lr.unique()
        self._uniform_lr = float(lr[0]) if len(lr) == 1 else None
        self._steps_np, self._lr_np = self.steps.numpy(), self.lr.numpy()  # the same memory, for the host math
        self._col_shape = (-1,) + (1,) * (p.dim() - 1)
        self._derived = derived
        self._scratch: torch.Tensor | None = None
        self._fused_lists: list[tuple[float, float, list[list[torch.Tensor]]]] | None = None
        self._fused_for: torch.Tensor | None = None  # the gradient tensor the lists were built for
        if self.fused:  # one float32 step count per member on the device, as the fused kernel reads them
            self._step_t = torch.from_numpy(self._steps_np.astype(np.float32)).to(p.device)
            row = (torch.ones(p[0].numel(), dtype=torch.bool) if self.decay_mask is None
                   else self.decay_mask.detach().to("cpu", torch.bool).expand((1, *p.shape[1:])).reshape(-1))
            edges = [0, *(torch.nonzero(row[1:] != row[:-1]).reshape(-1) + 1).tolist(), row.numel()]
            self._segments = [(a, b, bool(row[a])) for a, b in itertools.pairwise(edges)]

    @torch.no_grad()
    def step(self, active: Any = None) -> None:
        """One update of the active members (``None``: all; else a ``[K]`` bool mask, list or tensor)."""
        grad = self.param.grad
        if grad is None:
            return
        rows = None
        if active is not None:
            mask = np.asarray(active.cpu() if isinstance(active, torch.Tensor) else active, dtype=bool).reshape(-1)
            if not mask.any():
                return
            rows = None if mask.all() else np.flatnonzero(mask)
        if self.fused:
            self._fused_step(grad, rows)
            return
        if rows is None:
            self._update(self.param, grad, self.state, self._derived, None)
            return
        idx = torch.as_tensor(rows, device=self.param.device)
        K = self.param.shape[0]
        param = self.param[idx]
        state = {key: value[idx] for key, value in self.state.items()}
        derived = {key: value[idx] if value.shape[0] == K else value for key, value in self._derived.items()}
        self._update(param, grad[idx], state, derived, rows)
        self.param.index_copy_(0, idx, param)
        for key, value in state.items():
            self.state[key].index_copy_(0, idx, value)

    def _fused_step(self, grad: torch.Tensor, rows: np.ndarray | None) -> None:
        """Torch's fused Adam/AdamW over the rows of the active members, each with its own step count."""
        if rows is None:
            self._steps_np += 1
        else:
            self._steps_np[rows] += 1
        self._step_t.copy_(torch.from_numpy(self._steps_np.astype(np.float32)), non_blocking=True)
        calls = self._fused_calls(grad, rows)
        fn = torch._fused_adamw_ if self.kind == "adamw" else torch._fused_adam_
        beta1, beta2 = self.betas
        for lr, wd, (params, grads, exp_avgs, exp_avg_sqs, steps) in calls:
            fn(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=lr, beta1=beta1, beta2=beta2, weight_decay=wd,
               eps=self.eps, amsgrad=False, maximize=False)

    def _fused_calls(self, grad: torch.Tensor, rows: np.ndarray | None
                     ) -> list[tuple[float, float, list[list[torch.Tensor]]]]:
        """The fused kernel's calls: per (lr, weight decay) and decayed or not, the lists of row segments
        (parameters, gradients, moments, step counts) of the members taking part. Kept while the gradient
        tensor is the same (built again for a step with inactive members)."""
        if rows is None and self._fused_lists is not None and self._fused_for is grad:
            return self._fused_lists
        K = self.param.shape[0]
        members = range(K) if rows is None else rows.tolist()
        p, g = self.param.detach().view(K, -1), grad.reshape(K, -1)
        m, v = self.state["exp_avg"].view(K, -1), self.state["exp_avg_sq"].view(K, -1)
        groups: dict[tuple[float, float], list[int]] = {}
        for k in members:
            groups.setdefault((float(self._lr_np[k]), float(self.weight_decay[k])), []).append(k)
        calls: list[tuple[float, float, list[list[torch.Tensor]]]] = []
        for (lr, wd), ks in groups.items():
            parts = [(0, p.shape[1], True)] if wd == 0 else self._segments
            for decayed in (True, False):
                segs = [(a, b) for a, b, d in parts if d == decayed]
                if segs:
                    lists = [[t[k, a:b] for k in ks for a, b in segs] for t in (p, g, m, v)]
                    lists.append([self._step_t[k] for k in ks for _ in segs])
                    calls.append((lr, wd if decayed else 0.0, lists))
        if rows is None:
            self._fused_lists, self._fused_for = calls, grad
        return calls

    def _update(self, p: torch.Tensor, g: torch.Tensor, state: dict[str, torch.Tensor],
                derived: dict[str, torch.Tensor], rows: np.ndarray | None) -> None:
        """One step of the members in ``p`` (all, or the gathered ``rows``), in place, in-place ops and
        one scratch buffer only (a new large tensor per operation costs more than the operation)."""
        steps = self._steps_np
        if rows is None:
            steps += 1
            counts, lr = steps, self._lr_np
            if self._scratch is None or self._scratch.shape != p.shape:
                self._scratch = torch.empty_like(p)
            scratch = self._scratch
        else:
            steps[rows] += 1
            counts, lr = steps[rows], self._lr_np[rows]
            scratch = torch.empty_like(p)
        if "decay" in derived:  # L2 (Adam, SGD): grad + wd * param
            g = torch.addcmul(g, p, derived["decay"], out=scratch)
        if self.kind == "sgd":
            if "momentum" in derived:  # buf = momentum * buf + grad (dampening 0)
                g = state["momentum_buffer"].mul_(derived["momentum"]).add_(g)
            if self._uniform_lr is not None:
                p.add_(g, alpha=-self._uniform_lr)
            else:
                p.add_(torch.mul(g, derived["neg_lr"], out=scratch))
            return
        if "shrink" in derived:  # AdamW: param * (1 - lr * wd)
            p.mul_(derived["shrink"])
        beta1, beta2 = self.betas
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        # torch: param -= step_size * m / (sqrt(v) / sqrt(bc2) + eps), step_size = lr / bc1, bc_i = 1 - beta_i**t;
        # per member as param += m / (sqrt(v) * c1 + c0), c1 = -1 / (step_size * sqrt(bc2)), c0 = -eps / step_size
        # (torch's capturable form), from the host's float64 step counts
        step_size = lr / (1.0 - beta1**counts)
        c1 = torch.from_numpy((-1.0 / (step_size * np.sqrt(1.0 - beta2**counts))).astype(np.float32))
        c0 = torch.from_numpy((-self.eps / step_size).astype(np.float32))
        if p.device.type != "cpu" or p.dtype != torch.float32:  # a small host array's staged copy: no sync
            c1, c0 = (c.to(p.device, p.dtype, non_blocking=True) for c in (c1, c0))
        denom = torch.sqrt(v, out=scratch).mul_(c1.view(self._col_shape)).add_(c0.view(self._col_shape))
        p.addcdiv_(m, denom)

    def select(self, rows: list[int], param: nn.Parameter) -> None:
        """Keep only the members ``rows`` (their state, counts and hyperparameters); ``param`` is the new
        leaf that holds them (:meth:`StackedMLP.set_flat`)."""
        idx = torch.as_tensor(rows, device=param.device)
        self.param = param
        self.state = {key: value[idx].clone() for key, value in self.state.items()}
        host = torch.as_tensor(rows)
        self.steps, self.lr = self.steps[host].clone(), self.lr[host].clone()
        self.weight_decay, self.momentum = self.weight_decay[host].clone(), self.momentum[host].clone()
        self._derive()


def lockstep_optimizer(model: StackedMLP, cfg: TrainConfig) -> StackedOptimizer:
    """The trial's optimiser (``cfg.optimizer``, as :func:`tuner.training.make_optimizer`) over the folds'
    stacked parameters; weight decay on the weights only unless ``cfg.weight_decay_on == "all"``."""
    momentum = cfg.momentum if cfg.optimizer == "sgd" else 0.0
    mask = None if cfg.weight_decay_on == "all" else model.decay_mask
    return StackedOptimizer(model.flat, cfg.optimizer, cfg.lr, cfg.weight_decay, momentum, decay_mask=mask)


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
    optimizer = lockstep_optimizer(model, cfg)

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

    best_flat = model.flat.detach().clone()  # [K, P]: each fold's best weights so far
    best_value: list[float | None] = [None] * K  # the best value observed (its weights are kept)
    best_epoch = [0] * K
    best_out: list[torch.Tensor | None] = [None] * K
    best_loss = [float("nan")] * K
    reference: list[float | None] = [None] * K  # the last improvement by more than min_delta (patience)
    since_improvement = [0] * K
    train_curves: list[list[float]] = [[] for _ in range(K)]
    val_curves: list[list[float]] = [[] for _ in range(K)]
    # The folds still training, in the order of the stacked tensors' leading dimension. A fold that stops
    # is dropped from the parameters, the optimiser's state and the data: it costs nothing from then on,
    # and the others' updates are exactly as before.
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
            model.zero_grad()  # flat.grad, in place: the layers' gradients accumulate into it
            rows = _row_loss(task, model(Xs[positions, ib]), ys[positions, ib])
            if min(counts) == bs:  # every fold a full batch: each fold's mean loss
                per_fold = rows.mean(1)
            else:  # the last batch, shorter for some folds (padding masked out)
                c = torch.tensor(counts, device=device)
                per_fold = torch.where(pad_rows < c.unsqueeze(1), rows, 0).sum(1) / c.clamp(min=1)
            with torch.autograd.enforce_grad_layout_policy(False):  # flat.grad's views are the layers' .grad
                per_fold.sum().backward()  # the gradient of each fold's own mean, as training it alone
            # a fold with fewer rows may have no batch left: it is not updated and its step does not count
            optimizer.step(None if min(counts) > 0 else [n > 0 for n in counts])
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
            if improved(value, best_value[k], cfg, 0.0):  # the best observed: its weights are kept
                best_value[k], best_epoch[k], best_out[k], best_loss[k] = value, epoch, out_k, val_loss[j]
                improved_pos.append(j)
            if improved(value, reference[k], cfg):  # by more than min_delta: patience restarts
                reference[k], since_improvement[k] = value, 0
            else:
                since_improvement[k] += 1
        if improved_pos:
            pos = torch.tensor(improved_pos, device=device)
            best_flat[alive_t[pos]] = model.flat.detach()[pos]
        # a stopped fold reports its best value from now on; a training one its current value
        mean = float(np.mean([val_curves[k][-1] if k in alive else best_value[k] for k in range(K)
                              if best_value[k] is not None]))
        keep = [j for j, k in enumerate(alive) if since_improvement[k] < cfg.patience]
        if reporter(mean, epoch):
            _finish_attrs()
            raise optuna.TrialPruned(f"pruned at epoch {epoch} (mean {spec.objective} over folds={mean:.6g})")
        if not keep:
            break
        if len(keep) < len(alive):  # drop the stopped folds: parameters, optimiser state, data
            sel = torch.tensor(keep, device=device)
            optimizer.select(keep, model.set_flat(model.flat.detach()[sel]))
            Xs, ys, Xv, val_mask, yv, val_count = (t[sel] for t in (Xs, ys, Xv, val_mask, yv, val_count))
            alive = [alive[j] for j in keep]

    model.set_flat(best_flat)  # as fit(): the model holds each fold's best weights on return
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
