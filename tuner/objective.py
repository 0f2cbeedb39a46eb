"""The Optuna objective: suggest hyperparameters, train (holdout or K-fold), report, record.

Holdout trials report the validation objective every epoch (step = epoch, 1-based). K-fold trials report
after each fold *i* (step = *i*, 0-based): the running mean of the fold scores, so median / percentile /
successive-halving / hyperband pruners compare like with like; with the Wilcoxon pruner, each fold's own
score, because it compares per-instance scores. The training itself never sees the test rows: it works
on :attr:`PreparedData.folds` only.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from tuner.data import Fold, PreparedData
from tuner.errors import StopRequested, TrialConfigError
from tuner.metrics import compute_metrics
from tuner.models import build_model
from tuner.spec import JobSpec, ParamSpec, is_integer_dimension
from tuner.training import FitResult, TrainConfig, fit

__all__ = [
    "FoldMeans", "Objective", "Reporter", "StopRequested", "TrialConfigError", "mean_metrics", "pruner_reads_values", "resolve_device",
    "suggest_params", "train_on_fold", "write_trial_attrs",
]

_FOLD_SEED_STRIDE = 7919
FOLD_SEED_STRIDE = _FOLD_SEED_STRIDE  # fold i of trial n trains with seed split.seed + n + stride * i


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def suggest_params(trial: optuna.Trial, spec: JobSpec) -> dict[str, Any]:
    """Suggest every dimension of the effective search space (fixed values too, so params are complete).

    Conditional dimensions: ``momentum`` is suggested only when the trial's optimizer is ``sgd`` (the
    optimizer is suggested before it whatever the spec's order), so an Adam/AdamW trial stores no
    momentum and importance does not credit it; an SGD trial without a momentum dimension trains with the
    default 0.9 (added to the returned params, not stored). On an RDB storage the parameters are written in
    one transaction at the end (Optuna writes each ``suggest_*`` in its own): see :class:`_ParamWrites`.
    """
    params: dict[str, Any] = {}
    writes = _ParamWrites.install(trial)
    try:
        for name, p in _suggestion_order(spec.effective_search_space()):
            if name in _SGD_ONLY and params.get("optimizer", "adam") != "sgd":
                continue
            params[name] = _suggest(trial, name, p)
    except BaseException:
        if writes is not None:  # what was suggested before the error, as Optuna would have stored it
            with contextlib.suppress(Exception):  # the original error is the one to report
                writes.commit(trial)
        raise
    if writes is not None:
        writes.commit(trial)
    if params.get("optimizer", "adam") == "sgd" and "momentum" not in params:
        params["momentum"] = 0.9
    return params


_SGD_ONLY = ("momentum",)  # dimensions sampled only for trials whose optimizer is sgd


def _suggestion_order(space: dict[str, ParamSpec]) -> list[tuple[str, ParamSpec]]:
    """The spec's order, except that ``optimizer`` comes before the dimensions that depend on it (moved
    just ahead of the first of them; every other dimension keeps its place, so specs without conditional
    dimensions draw exactly as before)."""
    items = list(space.items())
    names = [n for n, _ in items]
    if "optimizer" not in names:
        return items
    first = min((names.index(n) for n in _SGD_ONLY if n in names), default=None)
    if first is None or first > names.index("optimizer"):
        return items
    opt = items.pop(names.index("optimizer"))
    items.insert(first, opt)
    return items


class _ParamWrites:
    """Stands in for ``trial.storage`` while a trial's parameters are suggested: Optuna's
    ``set_trial_param`` calls (one transaction each) are kept, then written together by :meth:`commit`
    in one transaction: the same rows and the same checks as Optuna's per-parameter helper (the trial is
    still running; each distribution is compatible with the one the study already uses for that name),
    with one multi-row INSERT. Everything else goes to the real storage. Only for an RDB storage."""

    def __init__(self, storage: Any) -> None:
        self._storage = storage
        self.pending: list[tuple[int, str, float, Any]] = []

    @classmethod
    def install(cls, trial: optuna.Trial) -> _ParamWrites | None:
        storage = getattr(trial, "storage", None)  # a FixedTrial has none
        backend = getattr(storage, "_backend", None)
        if not isinstance(backend, optuna.storages.RDBStorage) or not hasattr(backend, "check_trial_is_updatable"):
            return None
        writes = cls(storage)
        trial.storage = writes  # type: ignore[assignment]
        return writes

    def set_trial_param(self, trial_id: int, name: str, value: float, distribution: Any) -> None:
        known = self._known_distribution(trial_id, name)
        if known is not None:  # refused here, before the trial caches the value, as Optuna refuses it
            from optuna.distributions import check_distribution_compatibility

            check_distribution_compatibility(known, distribution)
        self.pending.append((trial_id, name, value, distribution))

    def __getattr__(self, item: str) -> Any:
        return getattr(self._storage, item)

    def commit(self, trial: optuna.Trial) -> None:
        trial.storage = self._storage
        if not self.pending:
            return
        import sqlalchemy as sa
        from optuna.distributions import (
            check_distribution_compatibility,
            distribution_to_json,
            json_to_distribution,
        )
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        backend = self._storage._backend
        trial_id = self.pending[0][0]
        with _create_scoped_session(backend.scoped_session) as session:
            # what Optuna's per-parameter helper checks, once: the trial is still running, and each
            # distribution is compatible with the one the study already uses for that name
            row = models.TrialModel.find_or_raise_by_id(trial_id, session)
            backend.check_trial_is_updatable(trial_id, row.state)
            rows = []
            for _, name, value, distribution in self.pending:
                if self._known_distribution(trial_id, name) is None:  # known ones were checked when buffered
                    record = (session.query(models.TrialParamModel).join(models.TrialModel)
                              .filter(models.TrialModel.study_id == row.study_id)
                              .filter(models.TrialParamModel.param_name == name).first())
                    if record is not None:
                        check_distribution_compatibility(json_to_distribution(record.distribution_json),
                                                         distribution)
                rows.append({"trial_id": trial_id, "param_name": name, "param_value": value,
                             "distribution_json": distribution_to_json(distribution)})
            session.execute(sa.insert(models.TrialParamModel), rows)  # one multi-row INSERT
        for trial_id, name, _, distribution in self.pending:
            self._remember_distribution(trial_id, name, distribution)
        self.pending = []

    def _study_info(self, trial_id: int) -> Any:
        """The cached storage's per-study record (where it keeps each parameter's distribution), if any."""
        try:
            study_id, _ = self._storage._trial_id_to_study_id_and_number[trial_id]
            return self._storage._studies[study_id]
        except (AttributeError, KeyError):
            return None

    def _known_distribution(self, trial_id: int, name: str) -> Any:
        info = self._study_info(trial_id)
        return None if info is None else info.param_distribution.get(name)  # None: the storage looks it up

    def _remember_distribution(self, trial_id: int, name: str, distribution: Any) -> None:
        info = self._study_info(trial_id)
        if info is not None:
            info.param_distribution.setdefault(name, distribution)


def _suggest(trial: optuna.Trial, name: str, p: ParamSpec) -> Any:
    if p.kind == "fixed":
        return trial.suggest_categorical(name, [p.value])
    if p.kind == "choices":
        assert p.choices is not None
        return trial.suggest_categorical(name, p.choices)
    assert p.low is not None and p.high is not None
    if is_integer_dimension(name, p):
        step = int(p.step) if p.step is not None else 1
        return trial.suggest_int(name, int(p.low), int(p.high), step=step, log=p.log)
    return trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)


def train_on_fold(
    spec: JobSpec,
    data: PreparedData,
    fold: Fold,
    params: dict[str, Any],
    *,
    seed: int,
    device: torch.device,
    tensors: tuple[torch.Tensor, ...] | None = None,
    max_epochs: int | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[nn.Module, FitResult]:
    """Build a seeded model and train it on one fold (validation when the fold has it).

    Deterministic on the CPU for a given seed, so the holdout finalisation can re-train a trial exactly
    when its saved weights are missing. ``max_epochs`` overrides the budget (the K-fold refit).
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build_model(spec.model, params, fold.n_features, data.n_outputs, input_shape=data.input_shape)
    model.to(device)
    cfg = TrainConfig.from_params(params, spec)
    cfg.loss_scale = fold.preprocessor.loss_scale  # regression losses in the target's units
    if max_epochs is not None:
        cfg.max_epochs = max_epochs
    if tensors is None:
        tensors = tuple(
            t.to(device) for t in (fold.X_train, fold.y_train, fold.X_val, fold.y_val) if t is not None
        )
    train = (tensors[0], tensors[1])
    val = (tensors[2], tensors[3]) if len(tensors) == 4 else None
    metrics_fn = None
    if fold.val_idx is not None:
        y_true = data.dev_y[fold.val_idx]
        pre = fold.preprocessor

        def metrics_fn(outputs: np.ndarray, loss: float) -> dict[str, float | None]:
            if data.task == "regression":
                outputs = pre.inverse_target(outputs)
            return compute_metrics(data.task, y_true, outputs, loss)

    target_scale = 1.0
    if data.task == "regression" and fold.preprocessor.target_scaler is not None:
        target_scale = float(fold.preprocessor.target_scaler.scale.ravel()[0])
    try:
        result = fit(
            model, train, val, cfg, task=data.task, generator=generator,
            val_metrics_fn=metrics_fn, on_epoch=on_epoch, should_stop=should_stop, target_scale=target_scale,
        )
    except (torch.cuda.OutOfMemoryError, MemoryError) as exc:
        raise TrialConfigError(f"out of memory: {(str(exc).splitlines() or [type(exc).__name__])[0]}") from None
    return model, result


def write_trial_attrs(
    trial: optuna.Trial,
    *,
    user: dict[str, Any] | None = None,
    system: dict[str, Any] | None = None,
    intermediate: dict[int, float] | None = None,
) -> None:
    """Write user attrs, system attrs and intermediate values of a running trial in one transaction.

    On an RDB storage: one read of the trial row (the same "is it still running?" check Optuna makes),
    one read of the existing rows per kind, then the inserts/updates together - instead of Optuna's two
    statements and one transaction per key or step. Other storages: Optuna's public per-key calls.
    Raises Optuna's ``UpdateFinishedTrialError`` when the trial has already finished, as those calls do.
    """
    user, system, intermediate = user or {}, system or {}, intermediate or {}
    if not (user or system or intermediate):
        return
    backend = getattr(trial.storage, "_backend", trial.storage)
    if not isinstance(backend, optuna.storages.RDBStorage):
        for key, value in user.items():
            trial.set_user_attr(key, value)
        for key, value in system.items():
            trial.storage.set_trial_system_attr(trial._trial_id, key, value)
        for step, value in intermediate.items():
            trial.report(value, step)
        return
    import json

    import sqlalchemy as sa
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    trial_id = trial._trial_id
    with _create_scoped_session(backend.scoped_session) as session:
        row = models.TrialModel.find_or_raise_by_id(trial_id, session)
        backend.check_trial_is_updatable(trial_id, row.state)
        for model_cls, values in ((models.TrialUserAttributeModel, user), (models.TrialSystemAttributeModel, system)):
            if not values:
                continue
            existing = {a.key: a for a in session.query(model_cls).filter(
                model_cls.trial_id == trial_id, model_cls.key.in_(list(values))).all()}
            new_rows = []
            for key, value in values.items():
                if key in existing:
                    existing[key].value_json = json.dumps(value)
                else:
                    new_rows.append({"trial_id": trial_id, "key": key, "value_json": json.dumps(value)})
            if new_rows:  # one multi-row INSERT
                session.execute(sa.insert(model_cls), new_rows)
        if intermediate:
            iv = models.TrialIntermediateValueModel
            steps = {v.step: v for v in session.query(iv).filter(iv.trial_id == trial_id).all()}
            new_rows = []
            for step, value in intermediate.items():
                stored, kind = iv.intermediate_value_to_stored_repr(value)
                if step in steps:
                    steps[step].intermediate_value, steps[step].intermediate_value_type = stored, kind
                else:
                    new_rows.append({"trial_id": trial_id, "step": step, "intermediate_value": stored,
                                     "intermediate_value_type": kind})
            if new_rows:
                session.execute(sa.insert(iv), new_rows)
    cached = getattr(trial, "_cached_frozen_trial", None)
    if cached is not None:
        cached.user_attrs.update(user)
        cached.system_attrs.update(system)
        cached.intermediate_values.update(intermediate)


def pruner_reads_values(trial: optuna.Trial) -> bool:
    """False for the no-op pruner: then nothing is asked of Optuna during the trial."""
    return not isinstance(trial.study.pruner, optuna.pruners.NopPruner)


class _CompletedTrials:
    """The slice of a study a percentile/median pruner reads: its direction and its completed trials."""

    def __init__(self, study: optuna.Study) -> None:
        self.direction = study.direction
        self._completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    def get_trials(self, deepcopy: bool = False, states: Any = None) -> list[FrozenTrial]:
        return list(self._completed)


class _RungView:
    """What ``SuccessiveHalvingPruner.prune`` reads and writes, for one trial decided in process: the
    study's trials (read from storage only when the pruner asks: at a rung's promotion step, or while no
    trial has completed), its direction, and this trial's rung attributes (written to storage at once, as
    Optuna does, so other workers' trials compete with them, and kept in ``own``)."""

    def __init__(self, study: optuna.Study, own: dict[str, Any]) -> None:
        self._study = study
        self._own = own
        self.direction = study.direction
        self._storage = self  # the pruner writes through ``study._storage.set_trial_system_attr``

    def get_trials(self, deepcopy: bool = False, states: Any = None) -> list[FrozenTrial]:
        return self._study.get_trials(deepcopy=False, states=states)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._study._storage.set_trial_system_attr(trial_id, key, value)
        self._own[key] = value


class Reporter:
    """``reporter(value, step) -> prune?``: per-step values to the pruner, touching storage only when needed.

    * no pruner: nothing is asked during the trial;
    * percentile and median pruners read only *completed* trials (which never change) and this trial's
      own values: they are asked here, in process, against the completed trials read once at the start;
    * successive halving reads other trials only at its rung promotion steps (epochs r, 4r, 16r, ...; r
      is 1 under 64 epochs, see ``tuner.spec.default_min_resource``) and writes this trial's rung values
      there: asked here, in process (:class:`_RungView`), it touches storage at those steps only, instead
      of a report and a prune check every epoch;
    * any other pruner (hyperband, Wilcoxon, ...): ``trial.report`` and ``trial.should_prune`` every step,
      as Optuna documents.

    In the first three cases the values are written in one transaction at the end of the trial (before
    Optuna records its state), so the study holds the same intermediate values either way.
    """

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.values: dict[int, float] = {}
        self.pruner = trial.study.pruner
        if isinstance(self.pruner, optuna.pruners.NopPruner):
            self.mode = "none"
        elif type(self.pruner) in (optuna.pruners.MedianPruner, optuna.pruners.PercentilePruner):
            self.mode = "local"
            self._view: Any = _CompletedTrials(trial.study)
        elif type(self.pruner) is optuna.pruners.SuccessiveHalvingPruner:
            self.mode = "local"
            self._system = trial._cached_frozen_trial.system_attrs  # rung keys written so far, kept current
            self._view = _RungView(trial.study, self._system)
        else:
            self.mode = "optuna"

    def __call__(self, value: float, step: int) -> bool:
        if self.mode == "optuna":
            self.trial.report(value, step)
            return self.trial.should_prune()
        self.values[step] = value
        if self.mode == "none":
            return False
        own = SimpleNamespace(last_step=step, intermediate_values=self.values, _trial_id=self.trial._trial_id,
                              system_attrs=getattr(self, "_system", {}))
        return bool(self.pruner.prune(self._view, own))  # type: ignore[arg-type]

    def take(self) -> dict[int, float]:
        """The values kept in process and not yet written (empty for the ``optuna`` mode); forgets them."""
        if self.mode == "optuna":
            return {}
        values, self.values = self.values, {}
        return values


class Objective:
    """``Objective(spec, data)(trial) -> float``: the validation objective of one trial.

    With ``artifacts_dir`` (holdout only), a completed trial that beats the study's best so far saves its
    best-epoch weights to ``artifacts_dir/<study>/trial-<n>.pt`` (user attr ``state_path``), which
    :func:`tuner.runner.finalize` loads; without it, finalize re-trains the trial deterministically.
    """

    def __init__(
        self,
        spec: JobSpec,
        data: PreparedData,
        *,
        device: str | torch.device = "cpu",
        should_stop: Callable[[], bool] = lambda: False,
        worker_id: str | None = None,
        artifacts_dir: Path | None = None,
    ) -> None:
        self.spec = spec
        self.data = data
        self.device = resolve_device(device)
        self.should_stop = should_stop
        self.worker_id = worker_id
        self.artifacts_dir = Path(artifacts_dir) if artifacts_dir is not None else None
        self._tensors: dict[int, tuple[torch.Tensor, ...]] = {}
        # system attrs written with the trial's first user attrs (tuner.runner puts the sampler seed here)
        self.start_system_attrs: dict[str, Any] = {}

    def _fold_tensors(self, i: int) -> tuple[torch.Tensor, ...]:
        if i not in self._tensors:  # moved to the device once, reused by every trial
            f = self.data.folds[i]
            self._tensors[i] = tuple(t.to(self.device) for t in (f.X_train, f.y_train, f.X_val, f.y_val))  # type: ignore[union-attr]
        return self._tensors[i]

    def __call__(self, trial: optuna.Trial) -> float:
        started = time.perf_counter()
        first: dict[str, Any] = {"device": str(self.device)}
        if self.worker_id is not None:
            first["worker"] = self.worker_id
        write_trial_attrs(trial, user=first, system=dict(self.start_system_attrs))
        attrs: dict[str, Any] = {}  # everything else is written once, when the trial ends
        system: dict[str, Any] = {}
        reporter = Reporter(trial)
        try:
            params = suggest_params(trial, self.spec)
            if self.spec.split.validation.kind == "kfold":
                value = self._kfold(trial, params, attrs, reporter)
            else:
                value = self._holdout(trial, params, attrs, reporter)
        except TrialConfigError as exc:
            attrs["fail_reason"] = str(exc)
            system["failure"] = "config"
            raise
        except (StopRequested, KeyboardInterrupt):
            system["interrupted"] = True
            raise
        finally:
            attrs["duration_s"] = round(time.perf_counter() - started, 4)
            # one transaction: the per-epoch values kept in process, the user attrs, the failure cause
            write_trial_attrs(trial, user=attrs, system=system, intermediate=reporter.take())
        return value

    # ------------------------------------------------------------------------------------- holdout
    def _holdout(self, trial: optuna.Trial, params: dict[str, Any], attrs: dict[str, Any], reporter: Reporter) -> float:
        reported: list[float] = []

        def on_epoch(epoch: int, value: float) -> None:
            reported.append(value)
            if reporter(value, epoch):
                raise optuna.TrialPruned(f"pruned at epoch {epoch} ({self.spec.objective}={value:.6g})")

        try:
            model, result = train_on_fold(
                self.spec, self.data, self.data.folds[0], params,
                seed=self.spec.split.seed + trial.number, device=self.device,
                tensors=self._fold_tensors(0), on_epoch=on_epoch, should_stop=self.should_stop,
            )
        except (optuna.TrialPruned, TrialConfigError):
            attrs["val_curve"] = reported
            raise
        value = float(result.best_value)  # type: ignore[arg-type]
        attrs.update(best_epoch=result.best_epoch, train_curve=result.train_curve, val_curve=result.val_curve,
                     val_metrics=result.val_metrics)
        if self.artifacts_dir is not None and self._is_new_best(trial, value):
            path = self.artifacts_dir / trial.study.study_name / f"trial-{trial.number}.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({k: v.cpu() for k, v in model.state_dict().items()}, path)
            attrs["state_path"] = str(path)
        return value

    def _is_new_best(self, trial: optuna.Trial, value: float) -> bool:
        try:
            best = trial.study.best_value
        except ValueError:  # no completed trial yet
            return True
        return value < best if self.spec.direction == "minimize" else value > best

    # -------------------------------------------------------------------------------------- K-fold
    def _kfold(self, trial: optuna.Trial, params: dict[str, Any], attrs: dict[str, Any], reporter: Reporter) -> float:
        from tuner.batched import can_batch, fit_folds_lockstep

        if can_batch(self.spec, self.device, self.data):
            value = fit_folds_lockstep(self, trial, params, attrs, reporter)
        else:
            value = self._kfold_sequential(trial, params, attrs, reporter)
        means = attrs.get("val_metrics")
        if isinstance(means, FoldMeans):  # a plain dict in the trial, and how many folds defined what was not
            attrs["val_metrics"] = dict(means)
            if means.folds:
                attrs["val_metrics_folds"] = dict(means.folds)
        return value

    def _kfold_sequential(
        self, trial: optuna.Trial, params: dict[str, Any], attrs: dict[str, Any], reporter: Reporter
    ) -> float:
        """One fold after another; reports after each fold (step = fold index)."""
        wilcoxon = self.spec.pruner.kind == "wilcoxon"
        values: list[float] = []
        best_epochs: list[int] = []
        train_curves: list[list[float]] = []
        val_curves: list[list[float]] = []
        fold_metrics: list[dict[str, float | None] | None] = []
        base = self.spec.split.seed + trial.number
        for i, fold in enumerate(self.data.folds):
            _, result = train_on_fold(
                self.spec, self.data, fold, params, seed=base + _FOLD_SEED_STRIDE * i,
                device=self.device, tensors=self._fold_tensors(i), should_stop=self.should_stop,
            )
            values.append(float(result.best_value))  # type: ignore[arg-type]
            best_epochs.append(result.best_epoch)
            train_curves.append(result.train_curve)
            val_curves.append(result.val_curve)
            fold_metrics.append(result.val_metrics)
            attrs.update(fold_values=values, fold_best_epochs=best_epochs, train_curve=train_curves,
                         val_curve=val_curves)
            if reporter(values[-1] if wilcoxon else float(np.mean(values)), i):
                raise optuna.TrialPruned(f"pruned after fold {i}")
        attrs["best_epoch"] = max(1, round(float(np.mean(best_epochs))))
        attrs["val_metrics"] = mean_metrics(fold_metrics)
        return float(np.mean(values))


class FoldMeans(dict[str, float | None]):
    """:func:`mean_metrics`' result: ``{metric: mean or None}``, and in :attr:`folds` ``{metric: number of
    folds that defined it}`` for each metric that some fold left undefined (empty when every fold defined
    every metric). :meth:`Objective._kfold` stores the means as trial user attr ``val_metrics`` and, when
    not empty, the counts as ``val_metrics_folds``."""

    def __init__(self, means: dict[str, float | None], folds: dict[str, int]) -> None:
        super().__init__(means)
        self.folds = folds


def mean_metrics(per_fold: list[dict[str, float | None] | None]) -> FoldMeans:
    """Each metric's mean over the K folds, or None unless every fold defined it (a finite number).

    A metric undefined in some folds (ROC-AUC on a fold whose validation rows hold one class, R² on one
    row) would otherwise average a subset of the folds and read as a K-fold figure: it is None, and
    ``.folds[metric]`` says how many of the K folds defined it (e.g. ``{"roc_auc": 3}`` for 3 of 5)."""
    keys: list[str] = []
    for m in per_fold:
        keys += [k for k in (m or {}) if k not in keys]
    means: dict[str, float | None] = {}
    folds: dict[str, int] = {}
    for k in keys:
        vals = [float(v) for m in per_fold if m is not None and (v := m.get(k)) is not None and math.isfinite(v)]
        if len(vals) == len(per_fold):
            means[k] = float(np.mean(vals))
        else:
            means[k] = None
            folds[k] = len(vals)
    return FoldMeans(means, folds)
