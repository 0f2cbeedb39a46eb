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
from datetime import datetime, timedelta
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
    "fail_orphaned_trials",
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
        for key in _RUN_ATTRS:
            start_attrs.pop(key, None)
    # What ran the trial, for reproduction (tuner.provenance.reproduction) and for failing the trials of a
    # process that died (fail_orphaned_trials): its torch thread count, its process, its sampler seed.
    run_attrs: dict[str, Any] = {"torch_threads": torch.get_num_threads(), "owner": process_owner()}
    if seed is not None:
        run_attrs["sampler_seed"] = seed
    objective = _recording(objective, run_attrs)
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


_RUN_ATTRS = ("sampler_seed", "torch_threads", "owner")


def _recording(objective: Callable[[optuna.Trial], float], attrs: dict[str, Any]) -> Callable[[optuna.Trial], float]:
    start_attrs = getattr(objective, "start_system_attrs", None)
    if isinstance(start_attrs, dict):  # an Objective writes them with its first attrs: one transaction fewer
        start_attrs.update(attrs)
        return objective

    def recorded(trial: optuna.Trial) -> float:
        from tuner.objective import write_trial_attrs

        write_trial_attrs(trial, system=attrs)  # one transaction
        return objective(trial)

    return recorded


# ------------------------------------------------------------------------ trials of dead processes
_OWNERLESS_GRACE = timedelta(minutes=10)  # a RUNNING trial that never wrote its first attrs after this long


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """Process ``pid``'s state letter and start time (clock ticks since boot) from /proc; ``None`` where
    there is none (no such process, not Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        return fields[0], int(fields[19])  # fields 3 and 22
    except (IndexError, ValueError):
        return None


def _process_start(pid: int) -> int | None:
    """When process ``pid`` started: with the pid it names one process, even after the pid is reused."""
    stat = _proc_stat(pid)
    return stat[1] if stat is not None else None


_OWNER: dict[int, dict[str, Any]] = {}


def process_owner() -> dict[str, Any]:
    """This process as a trial's owner: ``{"host", "pid", "started"}`` (system attr ``owner``)."""
    pid = os.getpid()
    if pid not in _OWNER:  # per pid: a forked child is another owner
        _OWNER[pid] = {"host": socket.gethostname(), "pid": pid, "started": _process_start(pid)}
    return dict(_OWNER[pid])


def _owner_of(t: FrozenTrial) -> dict[str, Any] | None:
    """The trial's recorded owner; from its ``worker`` user attr ("host:pid") when it has no ``owner``."""
    owner = t.system_attrs.get("owner")
    if isinstance(owner, dict):
        return owner
    worker = t.user_attrs.get("worker")
    if isinstance(worker, str):
        host, _, pid = worker.rpartition(":")
        return {"host": host, "pid": int(pid) if pid.isdigit() else None, "started": None}
    return None


def _owner_alive(owner: dict[str, Any]) -> bool | None:
    """Whether the owning process still runs: ``None`` when this host cannot tell (another host, no pid)."""
    pid = owner.get("pid")
    if owner.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return None
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    except OSError:
        return None
    stat = _proc_stat(pid)
    if stat is not None:
        if stat[0] in ("Z", "X"):
            return False  # killed, not yet reaped by its parent
        started = owner.get("started")
        if started is not None and stat[1] != started:
            return False  # the pid was reused by another process
    return True


def fail_orphaned_trials(study: optuna.Study) -> list[int]:
    """Fail the study's RUNNING trials whose process died (a SIGKILL, out of memory, a power cut) and
    return their numbers.

    A trial records its process as system attr ``owner`` (host, pid and the process's start time; older
    trials: user attr ``worker`` "host:pid"). A trial of a process on this host that no longer runs (or
    whose pid now names another process) ends FAIL with system attrs ``interrupted=True`` and
    ``failure="interrupted"`` and a ``fail_reason``: like a trial stopped by Ctrl-C it does not use up the
    ``n_trials`` budget (:meth:`TrialCounts.counted`), so a resume runs a new trial in its place. A live
    process's trials (a second ``tuner run`` on the same study, ``--jobs`` processes still running) and
    trials of another host are left alone; a trial that never recorded its owner is failed only once it
    started more than 10 minutes ago (its process writes the owner within milliseconds of creating it).
    """
    storage = study._storage
    failed: list[int] = []
    now = datetime.now()  # Optuna stores naive local times
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = _owner_of(t)
        if owner is None:
            if t.datetime_start is None or now - t.datetime_start < _OWNERLESS_GRACE:
                continue
            reason = "its process never recorded itself and it started over 10 minutes ago"
        else:
            if _owner_alive(owner) is not False:
                continue
            reason = f"its process ({owner.get('host')}:{owner.get('pid')}) ended while it ran (killed?)"
        try:
            storage.set_trial_system_attr(t._trial_id, "interrupted", True)
            storage.set_trial_system_attr(t._trial_id, "failure", "interrupted")
            storage.set_trial_user_attr(t._trial_id, "fail_reason", f"interrupted: {reason}")
            storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it ended meanwhile
        failed.append(t.number)
    return failed


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
    if best.number not in scored:  # a finalisation of this trial killed part-way was recorded already: the
        scored.append(best.number)  # same model scored again learns nothing new, and is one scoring, not two
        study.set_user_attr("test_scored_trials", scored)  # recorded before the test rows are read
    if attrs.get("test_scoring_count") != len(scored):  # also when a kill came between the two writes
        study.set_user_attr("test_scoring_count", len(scored))
    test = data.take_test()
    pre = fold.preprocessor
    usable = test.usable  # a test row whose label is missing (or, for regression, no number) is not scored
    y_test = np.asarray(test.y)[usable]
    metrics: dict[str, Any] = {}
    outputs = None
    if usable.any():  # else every test label is unusable: only the counts below
        metrics, outputs = _score(model, pre, data.task, test.frame[usable], y_test, dev)
    metrics["n_test"] = len(test.y)
    metrics["n_test_unusable_target"] = test.n_unusable_target
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
    if data.task == "classification" and outputs is not None:  # for the result bundle (GET /jobs/{id}/result)
        study.set_user_attr("test_confusion_matrix", confusion_matrix(y_test, outputs, data.classes or []))
    study.set_user_attr("environment", package_versions())
    # how the test set was scored (with the trials' torch_threads: what reproduction needs)
    study.set_user_attr("scored_with", {"device": str(dev), "torch_threads": torch.get_num_threads()})
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


def _with_stale(result: dict[str, Any], stale: list[int]) -> dict[str, Any]:
    result["stale_trials_failed"] = stale  # this run's: RUNNING trials of a dead process, now FAIL (interrupted)
    return result


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

    On open, the RUNNING trials of processes that died (a SIGKILLed earlier run) end FAIL as interrupted
    (:func:`fail_orphaned_trials`); they do not use up the budget, a line on stderr says so and the result
    lists them in ``stale_trials_failed``. A completed result has ``reproduce``: the ``tuner run`` command
    that repeats the search and whether it does so exactly (:func:`tuner.provenance.reproduction`; only a
    fresh search in one process does).
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
        stale = fail_orphaned_trials(study)  # a resume after a SIGKILL: its RUNNING trials end FAIL
        counts = trial_counts(study)
        if stale or (progress and counts.counted):
            print(f"resumed study {study.study_name}: {counts.complete} complete, {counts.pruned} pruned"
                  + (f", {len(stale)} stale running trial(s) failed (#{', #'.join(map(str, stale))})" if stale else "")
                  + (f", {counts.running} running elsewhere" if counts.running else ""), file=sys.stderr)
        remaining = spec.budget.n_trials - counts.counted
        in_processes = shared is not None and remaining > 1  # one trial left: no processes to start for it
        # one torch thread per search process; this process alone uses every core
        torch.set_num_threads(num_threads or (1 if in_processes else _default_threads()))
        try:
            if in_processes:
                release_connections(study._storage)
                try:
                    search_parallel(
                        spec, data, shared, study.study_name, n_trials=remaining, jobs=min(jobs, remaining),
                        timeout_s=spec.budget.timeout_s, artifacts_dir=Path(artifacts_dir), device=device,
                        threads=num_threads or 1, progress=progress,
                    )
                finally:  # a search process killed mid-trial (out of memory, terminated) left it RUNNING
                    lost = fail_orphaned_trials(study)
                    if lost:
                        stale += lost
                        print(f"{study.study_name}: {len(lost)} running trial(s) of a search process that died "
                              f"failed (#{', #'.join(map(str, lost))})", file=sys.stderr)
            elif remaining > 0:
                optimize(study, objective, n_trials=remaining, timeout_s=spec.budget.timeout_s, progress=progress)
        except KeyboardInterrupt:
            return _with_stale(build_result(study, status="interrupted"), stale)
        if trial_counts(study).complete == 0:
            return _with_stale(build_result(study, status="no_result"), stale)
        finalize(study, spec, data, artifacts_dir=Path(artifacts_dir), device=device, allow_rescore=rescore_test)
        result = _with_stale(build_result(study, status="completed"), stale)
        from tuner.provenance import reproduction

        result["reproduce"] = reproduction(spec, study.get_trials(deepcopy=False), study.user_attrs,
                                           study_name=study.study_name)
        return result
    finally:
        torch.set_num_threads(previous_threads)
        if tmp is not None:
            tmp.cleanup()
