"""Running a job: open the study, optimise, score the best model on the test set once, report.

Everything lives in the Optuna study at the storage URL: params, intermediate values, per-trial user
attributes, and (as study user attributes) the spec, the final test metrics and the model's path.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import weakref
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from tuner.artifacts import save_model
from tuner.data import UNSEEN_LABEL, PreparedData, prepare_data
from tuner.errors import TrialConfigError
from tuner.metrics import compute_metrics, confusion_matrix, json_safe
from tuner.objective import Objective, resolve_device, train_on_fold
from tuner.provenance import package_versions
from tuner.spec import JobSpec, SpecError, default_min_resource
from tuner.training import evaluate

__all__ = [
    "TestAlreadyScored",
    "TrialCounts",
    "build_result",
    "finalize",
    "open_study",
    "optimize",
    "run",
    "sampler_seed",
    "trial_counts",
]

_SPEC_ATTR = "spec"
_FIRST_RUNG_ATTR = "pruner_first_rung"  # successive halving's default min_resource, fixed at creation
# The sampler seed each open study was given (recorded on every trial it runs as system attr "sampler_seed").
_SAMPLER_SEEDS: weakref.WeakKeyDictionary[optuna.Study, int] = weakref.WeakKeyDictionary()


class TestAlreadyScored(RuntimeError):
    """:func:`finalize` would consult the test set for a second trial without ``allow_rescore``."""

    __test__ = False  # not a pytest test class


def sampler_seed(seed: int, worker_id: str | None, n_trials: int) -> int:
    """The sampler seed of one process: the spec's ``seed``, the worker and the trials already in the study.

    One process running a study from scratch gets the same seed every time (reproducible); a resumed
    study (more trials already) and another worker get other seeds, so they do not re-propose the same
    first points.
    """
    digest = hashlib.sha256(f"{seed}/{worker_id or ''}/{n_trials}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def open_study(
    spec: JobSpec,
    storage: str | optuna.storages.BaseStorage | None,
    study_name: str | None = None,
    *,
    worker_id: str | None = None,
    data: PreparedData | None = None,
) -> optuna.Study:
    """Create or load the study (``study_name`` defaults to ``spec.name``; ``storage=None`` is in memory).

    Sampler, pruner and direction come from the spec, whose JSON is kept in study user attr ``spec``.
    A seeded sampler gets :func:`sampler_seed` of the spec's seed, ``worker_id`` and the number of trials
    already in the study, so a resume or a second worker does not repeat the first proposals.
    Loading a study that was created from a different spec (budget aside) raises :class:`SpecError`.

    Successive halving without a ``min_resource`` gets its first rung from the steps a trial reports
    (:func:`pruner_steps`: ``data`` tells whether K folds can train in lockstep); the study that creates it
    keeps it in user attr ``pruner_first_rung``, and every later open (a resume with another budget, a
    second worker, a ``--jobs`` process) uses the kept one, so all trials of a study meet the same rungs.
    A study created before this attribute existed keeps Optuna's ``"auto"``.
    """
    from tuner.storage import open_storage

    space = spec.effective_search_space()
    first_rung = default_min_resource(pruner_steps(spec, data))
    study = optuna.create_study(
        storage=open_storage(storage),  # a SQLite URL gets WAL, synchronous=NORMAL and a busy timeout
        study_name=study_name or spec.name,
        sampler=spec.sampler.build(space),
        pruner=spec.pruner.build(first_rung),
        direction=spec.direction,
        load_if_exists=True,
    )
    if spec.sampler.seed is not None:
        seed = sampler_seed(spec.sampler.seed, worker_id, len(study.get_trials(deepcopy=False)))
        study.sampler = spec.sampler.model_copy(update={"seed": seed}).build(space)
        _SAMPLER_SEEDS[study] = seed
    attrs = study.user_attrs
    stored = attrs.get(_SPEC_ATTR)
    if stored is None:
        study.set_user_attr(_FIRST_RUNG_ATTR, first_rung)
        study.set_user_attr(_SPEC_ATTR, spec.model_dump_json())
    elif _without_budget(JobSpec.model_validate_json(stored)) != _without_budget(spec):
        raise SpecError([f"name: study '{study.study_name}' already exists with a different spec"])
    else:
        kept = attrs.get(_FIRST_RUNG_ATTR, "auto")
        if kept != first_rung:
            study.pruner = spec.pruner.build(kept)
    return study


def pruner_steps(spec: JobSpec, data: PreparedData | None = None) -> int:
    """The most steps a trial reports to the pruner: its epoch budget, or K when K-fold trains the folds
    one after another (a CNN, a plugin, the Wilcoxon pruner, folds of different widths: step = fold)."""
    from tuner.batched import can_batch

    if spec.split.validation.kind == "kfold" and not can_batch(spec, data=data):
        return spec.split.validation.k
    return spec.budget.max_epochs


def _without_budget(spec: JobSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json", exclude={"budget"})


@dataclass(frozen=True)
class TrialCounts:
    """Trials by outcome. ``failed`` excludes configuration failures; interrupted trials are in it."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    config_failed: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def counted(self) -> int:
        """Trials that use up the ``n_trials`` budget: complete + pruned + config failures."""
        return self.complete + self.pruned + self.config_failed

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "counted": self.counted}


def trial_counts(study: optuna.Study) -> TrialCounts:
    """Count the study's trials by outcome (see :class:`TrialCounts`)."""
    c = {"complete": 0, "pruned": 0, "failed": 0, "config_failed": 0, "running": 0, "waiting": 0}
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            c["complete"] += 1
        elif t.state == TrialState.PRUNED:
            c["pruned"] += 1
        elif t.state == TrialState.FAIL:
            c["config_failed" if t.system_attrs.get("failure") == "config" else "failed"] += 1
        elif t.state == TrialState.RUNNING:
            c["running"] += 1
        elif t.state == TrialState.WAITING:
            c["waiting"] += 1
    return TrialCounts(**c)


def _best_value(study: optuna.Study) -> float | None:
    try:
        return float(study.best_value)
    except ValueError:
        return None


def optimize(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    *,
    n_trials: int | None,
    timeout_s: float | None,
    callbacks: Iterable[Callable[[optuna.Study, FrozenTrial], None]] = (),
    progress: bool = False,
) -> None:
    """``study.optimize`` with configuration failures caught; a tqdm bar on stderr when ``progress``.

    :class:`StopRequested` and ``KeyboardInterrupt`` propagate after Optuna has recorded the trial.
    """
    callbacks = list(callbacks)
    seed = _SAMPLER_SEEDS.get(study)
    start_attrs = getattr(objective, "start_system_attrs", None)
    if isinstance(start_attrs, dict):  # this study's seed only (an Objective may serve several studies)
        start_attrs.pop("sampler_seed", None)
    if seed is not None:
        objective = _recording_seed(objective, seed)
    bar = None
    if progress and n_trials:
        from tqdm.auto import tqdm

        start = trial_counts(study).counted
        bar = tqdm(total=start + n_trials, initial=start, file=sys.stderr, desc=study.study_name, unit="trial")

        def _update(st: optuna.Study, _t: FrozenTrial) -> None:
            counts = trial_counts(st)
            bar.n = counts.counted
            best = _best_value(st)
            bar.set_postfix(
                {"pruned": counts.pruned, "failed": counts.failed + counts.config_failed,
                 "best": "-" if best is None else f"{best:.4g}"},
                refresh=False,
            )
            bar.refresh()

        callbacks.append(_update)
    try:
        study.optimize(objective, n_trials=n_trials, timeout=timeout_s, catch=(TrialConfigError,), callbacks=callbacks)
    finally:
        if bar is not None:
            bar.close()


def _recording_seed(objective: Callable[[optuna.Trial], float], seed: int) -> Callable[[optuna.Trial], float]:
    start_attrs = getattr(objective, "start_system_attrs", None)
    if isinstance(start_attrs, dict):  # an Objective writes it with its first attrs: one transaction fewer
        start_attrs["sampler_seed"] = seed
        return objective

    def recorded(trial: optuna.Trial) -> float:
        trial.storage.set_trial_system_attr(trial._trial_id, "sampler_seed", seed)
        return objective(trial)

    return recorded


def finalize(
    study: optuna.Study,
    spec: JobSpec,
    data: PreparedData,
    *,
    artifacts_dir: Path,
    device: str | torch.device = "cpu",
    allow_rescore: bool = False,
) -> dict[str, Any]:
    """Score the best trial's model on the test set (the only call of ``data.take_test()``) and save it.

    Holdout: the best trial's kept (best-epoch) weights, from its saved state or a deterministic
    re-training. K-fold: a refit on all non-test rows with the best params for the rounded mean of its
    folds' best epochs, without early stopping (a refit that diverges raises :class:`TrialConfigError`
    before the test set is touched). Stores study user attrs ``test_metrics``, ``model_path``,
    ``best_epoch`` and ``best_trial_number``; returns the test metrics.

    The test set is scored once per job: every scoring is recorded (user attrs ``test_scored_trials`` and
    ``test_scoring_count``) before the test rows are read. Finalising the same best trial again returns
    the stored metrics without touching the test set. When a resumed search found another best trial,
    scoring it would consult the test set a second time: that raises :class:`TestAlreadyScored` unless
    ``allow_rescore`` (``tuner run --rescore-test``).
    """
    best = study.best_trial  # ValueError when no trial completed
    attrs = study.user_attrs
    if attrs.get("best_trial_number") == best.number and "test_metrics" in attrs:
        return dict(attrs["test_metrics"])
    scored = [int(n) for n in attrs.get("test_scored_trials", [])]
    if not scored and "best_trial_number" in attrs:  # scored before this record existed
        scored = [int(attrs["best_trial_number"])]
    others = [n for n in scored if n != best.number]  # the same trial again (after a crash) learns nothing new
    if others and not allow_rescore:
        raise TestAlreadyScored(
            f"test: the test set was already scored for trial {others[-1]}; the best trial is now {best.number}. "
            "Scoring it would consult the test set a second time: pass allow_rescore=True "
            "(tuner run --rescore-test) to do so knowingly"
        )
    dev = resolve_device(device)
    params = dict(best.params)
    seed = spec.split.seed + best.number
    if spec.split.validation.kind == "kfold":
        fold = data.full()
        epochs = int(best.user_attrs.get("best_epoch") or spec.budget.max_epochs)
        try:
            model, _ = train_on_fold(spec, data, fold, params, seed=seed, device=dev, max_epochs=epochs)
        except TrialConfigError as exc:
            raise TrialConfigError(f"the K-fold refit of trial {best.number} failed: {exc}") from None
    else:
        fold = data.folds[0]
        epochs = int(best.user_attrs.get("best_epoch", 0))
        state_path = best.user_attrs.get("state_path")
        if state_path and Path(state_path).is_file():
            from tuner.models import build_model

            model = build_model(spec.model, params, fold.n_features, data.n_outputs, input_shape=data.input_shape)
            model.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True))
            model.to(dev)
        else:
            model, _ = train_on_fold(spec, data, fold, params, seed=seed, device=dev)
    if not all(bool(torch.isfinite(v).all()) for v in model.state_dict().values() if v.is_floating_point()):
        raise TrialConfigError(f"the model of trial {best.number} has non-finite weights; it is not scored or saved")
    scored.append(best.number)
    study.set_user_attr("test_scored_trials", scored)  # recorded before the test rows are read
    study.set_user_attr("test_scoring_count", len(scored))
    test = data.take_test()
    pre = fold.preprocessor
    metrics, outputs = _score(model, pre, data.task, test.frame, np.asarray(test.y), dev)
    metrics["n_test"] = len(test.y)
    if data.task == "classification":
        metrics["n_test_unseen_label"] = test.n_unseen_label
    metrics["n_test_filled_rows"] = pre.unusable_rows(test.frame)
    metrics = json_safe(metrics)
    model_path = Path(artifacts_dir) / study.study_name / "best-model.pt"
    save_model(
        model_path, model, spec=spec, data=data, preprocessor=pre, params=params,
        extra={"study_name": study.study_name, "trial_number": best.number, "epochs": epochs,
               "validation_value": best.value, "test_metrics": metrics},
    )
    study.set_user_attr("test_metrics", metrics)
    if data.task == "classification":  # with the test metrics, for the result bundle (GET /jobs/{id}/result)
        study.set_user_attr("test_confusion_matrix", confusion_matrix(test.y, outputs, data.classes or []))
    study.set_user_attr("environment", package_versions())
    study.set_user_attr("model_path", str(model_path))
    study.set_user_attr("best_epoch", epochs)
    study.set_user_attr("best_trial_number", best.number)
    return metrics


def _score(
    model: torch.nn.Module, pre: Any, task: str, frame: Any, y: np.ndarray, dev: torch.device
) -> tuple[dict[str, Any], np.ndarray]:
    """Test metrics and outputs; a label no training row had (UNSEEN_LABEL) is a wrong prediction and has
    no loss."""
    X = torch.from_numpy(pre.transform(frame)).to(dev)
    if task == "regression":
        y_t = torch.from_numpy(pre.transform_target(y).astype(np.float32)).to(dev)
        loss, outputs = evaluate(model, X, y_t, task)
        predictions = pre.inverse_target(outputs)
        return compute_metrics(task, y, predictions, loss * pre.loss_scale), predictions
    seen = y != UNSEEN_LABEL
    y_t = torch.from_numpy(np.where(seen, y, 0).astype(np.int64)).to(dev)
    loss, outputs = evaluate(model, X, y_t, task)
    if not seen.all():
        mask = torch.from_numpy(seen).to(dev)
        loss = evaluate(model, X[mask], y_t[mask], task)[0] if seen.any() else float("nan")
    return compute_metrics(task, y, outputs, loss), outputs


def build_result(study: optuna.Study, *, status: str | None = None) -> dict[str, Any]:
    """The run's summary: status, study name, best trial, test metrics, model path and trial counts.

    ``status`` defaults to ``completed`` when the study holds test metrics for its best trial, else
    ``no_result`` when no trial completed, else ``searched`` (search done, best trial not scored).
    ``test_scoring_count`` says how many times the test set was consulted, ``test_scored_trials`` for
    which trials, ``test_metrics_trial`` which trial ``test_metrics`` belong to. No NaN or infinity:
    such values are ``null``.
    """
    counts = trial_counts(study)
    attrs = study.user_attrs
    best_trial: dict[str, Any] | None = None
    try:
        bt = study.best_trial
        best_trial = {
            "number": bt.number,
            "params": bt.params,
            "value": bt.value,
            "best_epoch": bt.user_attrs.get("best_epoch"),
        }
    except ValueError:
        pass
    scored_trial = attrs.get("best_trial_number")
    if status is None:
        if best_trial is None:
            status = "no_result"
        else:
            status = "completed" if "test_metrics" in attrs and scored_trial == best_trial["number"] else "searched"
    scored = attrs.get("test_scored_trials", [scored_trial] if scored_trial is not None else [])
    return json_safe({
        "status": status,
        "study_name": study.study_name,
        "best_trial": best_trial,
        "test_metrics": attrs.get("test_metrics"),
        "test_metrics_trial": scored_trial,
        "test_scoring_count": len(scored),
        "test_scored_trials": scored,
        "model_path": attrs.get("model_path"),
        "counts": counts.as_dict(),
    })


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def run(
    spec: JobSpec,
    *,
    storage: str | optuna.storages.BaseStorage | None = None,
    study_name: str | None = None,
    artifacts_dir: Path = Path("artifacts"),
    progress: bool = True,
    device: str = "cpu",
    num_threads: int | None = None,
    rescore_test: bool = False,
    jobs: int = 1,
) -> dict[str, Any]:
    """Run a whole job in this process: search (only the trials still missing), finalise, summarise.

    With ``jobs > 1`` the search runs in that many processes (one torch thread each unless
    ``num_threads``) on one study; see :mod:`tuner.parallel` (an in-memory study becomes a temporary
    journal file). The test set is scored once, here, after the search. ``KeyboardInterrupt`` stops the
    search cleanly: finished trials stay in the storage and the result has status ``interrupted``
    (test set untouched). A resume whose best trial differs from the one already scored raises
    :class:`TestAlreadyScored` unless ``rescore_test``.
    """
    import tempfile

    from tuner.parallel import release_connections, search_parallel, shared_storage
    from tuner.storage import open_storage

    previous_threads = torch.get_num_threads()
    tmp = tempfile.TemporaryDirectory(prefix="tuner-jobs-") if jobs > 1 else None
    try:
        data = prepare_data(spec)
        shared = shared_storage(storage, Path(tmp.name)) if tmp is not None else None
        study = open_study(spec, shared.open() if shared is not None else open_storage(storage), study_name,
                           data=data)
        objective = Objective(
            spec, data, device=device, worker_id=f"{socket.gethostname()}:{os.getpid()}",
            artifacts_dir=Path(artifacts_dir),
        )
        remaining = spec.budget.n_trials - trial_counts(study).counted
        in_processes = shared is not None and remaining > 1  # one trial left: no processes to start for it
        # one torch thread per search process; this process alone uses every core
        torch.set_num_threads(num_threads or (1 if in_processes else _default_threads()))
        try:
            if in_processes:
                release_connections(study._storage)
                search_parallel(
                    spec, data, shared, study.study_name, n_trials=remaining, jobs=min(jobs, remaining),
                    timeout_s=spec.budget.timeout_s, artifacts_dir=Path(artifacts_dir), device=device,
                    threads=num_threads or 1, progress=progress,
                )
            elif remaining > 0:
                optimize(study, objective, n_trials=remaining, timeout_s=spec.budget.timeout_s, progress=progress)
        except KeyboardInterrupt:
            return build_result(study, status="interrupted")
        if trial_counts(study).complete == 0:
            return build_result(study, status="no_result")
        finalize(study, spec, data, artifacts_dir=Path(artifacts_dir), device=device, allow_rescore=rescore_test)
        return build_result(study, status="completed")
    finally:
        torch.set_num_threads(previous_threads)
        if tmp is not None:
            tmp.cleanup()
