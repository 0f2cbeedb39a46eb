"""One bundle with everything a finished job produced and everything needed to reproduce it.

Answered once the job has finished (succeeded, failed or cancelled; 409 before): a failed or cancelled
job has no test section, and no best trial when none completed. ``reproduce`` is the ``tuner run``
command (and the spec file it reads) that repeats the job, and whether it repeats it exactly
(:func:`tuner.provenance.reproduction`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from functools import lru_cache
from pathlib import PurePath
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.errors import Conflict
from app.models import FINISHED_STATUSES, Dataset, Job
from app.services.jobs import get_job
from app.services.tenancy import Principal
from app.studies import load_study
from tuner.data import load_dataset
from tuner.provenance import dataset_fingerprint, package_versions, reproduction, seeds, split_recipe
from tuner.runner import trial_counts
from tuner.spec import JobSpec

__all__ = ["failure_cause", "result_bundle"]


def _finite(v: Any) -> float | None:
    return float(v) if v is not None and math.isfinite(float(v)) else None


def failure_cause(t: FrozenTrial, retried: set[int]) -> str:
    """Why a FAIL trial failed, grouped: interrupted, worker lost, or the configuration's own reason."""
    if t.system_attrs.get("interrupted"):
        return "interrupted (cancel or shutdown)"
    if t.number in retried:
        return "worker lost (no heartbeat; retried)"
    reason = t.user_attrs.get("fail_reason")
    if not reason:
        return "error"
    return re.sub(r" at epoch \d+$", "", str(reason).split(":", 1)[0]).strip()  # group across epochs


@lru_cache(maxsize=8)
def _builtin_fingerprint(name: str, task: str) -> dict[str, Any]:
    from tuner.spec import DatasetSpec

    return dataset_fingerprint(load_dataset(DatasetSpec(builtin=name)), task)  # type: ignore[arg-type]


def _dataset(session: Session, job: Job, spec: JobSpec, task: str) -> dict[str, Any]:
    ds = spec.dataset
    if ds.builtin is not None:
        return {"source": "builtin", "name": ds.builtin, "task": task, "target": None,
                **_builtin_fingerprint(ds.builtin, task)}
    row = session.get(Dataset, job.dataset_id) if job.dataset_id else None
    if row is None:
        return {"source": "upload", "id": ds.id, "task": task, "target": ds.target, "available": False}
    return {"source": "upload", "id": row.id, "filename": row.filename, "format": row.format,
            "sha256": row.sha256, "rows": row.rows, "columns": row.columns, "feature_names": row.feature_names,
            "target": row.target, "task": task, "class_counts": row.class_counts, "available": True}


def _best(study: optuna.Study, spec: JobSpec, attrs: dict[str, Any]) -> tuple[FrozenTrial | None, dict[str, Any] | None]:
    number = attrs.get("best_trial_number")
    try:
        best = study.trials[number] if isinstance(number, int) else study.best_trial
    except (ValueError, IndexError):
        return None, None
    ua = best.user_attrs
    folds = None
    if ua.get("fold_values") is not None:
        values = [float(v) for v in ua["fold_values"]]
        folds = {"values": values, "mean": _finite(np.mean(values)), "std": _finite(np.std(values)),
                 "best_epochs": ua.get("fold_best_epochs")}
    return best, {
        "trial": best.number,
        "params": best.params,
        "value": _finite(best.value),
        "objective": spec.objective,
        "direction": spec.direction,
        "folds": folds,
        "best_epoch": ua.get("best_epoch"),
        "final_epochs": attrs.get("best_epoch"),
        "val_metrics": ua.get("val_metrics"),
        "val_metrics_folds": ua.get("val_metrics_folds"),
    }


def _reproduce(session: Session, job: Job, spec: JobSpec, trials: list[FrozenTrial],
               attrs: dict[str, Any]) -> dict[str, Any]:
    """``tuner run`` command, the spec file it reads and the data file an upload needs beside it."""
    not_finished = None
    if job.status == "failed":
        not_finished = f"the job failed ({job.error})" if job.error else "the job failed"
    elif job.status != "succeeded":
        not_finished = f"the job was {job.status}"
    out = reproduction(spec, trials, attrs, study_name=job.study_name, not_finished=not_finished)
    run_spec = dict(job.spec)
    data_file = None
    if spec.dataset.id is not None:  # tuner run reads a file: the upload's copy, named as uploaded
        row = session.get(Dataset, job.dataset_id) if job.dataset_id else None
        fmt = row.format if row is not None else "csv"
        name = PurePath(row.filename).name if row is not None else ""
        if PurePath(name).suffix.lower() not in (".csv", ".parquet", ".pq"):
            name = f"data.{fmt}"
        run_spec["dataset"] = {**{k: v for k, v in dict(job.spec.get("dataset") or {}).items() if k != "id"},
                               "path": name}
        data_file = {"name": name, "sha256": row.sha256 if row is not None else None, "dataset_id": spec.dataset.id}
    return {**out, "spec": run_spec, "data_file": data_file,
            "how": "save `spec` as spec.json (an upload: its file as `data_file.name` beside it, checked against "
                   "`data_file.sha256`) and run `command` in that directory"}


def result_bundle(
    session: Session, job_id: str, *, principal: Principal, storage: optuna.storages.BaseStorage
) -> dict[str, Any]:
    """The bundle for ``GET /jobs/{id}/result`` (404 unknown job, 409 until it has finished)."""
    job = get_job(session, job_id, principal=principal)
    if job.status not in FINISHED_STATUSES:
        raise Conflict(f"job {job_id} is {job.status}; its result is ready once it has finished")
    try:
        spec = JobSpec.model_validate(job.spec)
    except ValidationError as exc:  # e.g. its model plugin was uninstalled since
        raise Conflict(f"job {job_id}: its spec does not validate here any more: {exc.errors()[0]['msg']}") from None
    study = load_study(storage, job.study_name)
    trials = study.get_trials(deepcopy=False) if study is not None else []
    attrs = study.user_attrs if study is not None else {}
    best_trial, best = _best(study, spec, attrs) if study is not None else (None, None)
    task = spec.dataset.known_task() or "classification"
    metrics = attrs.get("test_metrics") or job.test_metrics
    retried = {int(t.system_attrs["failed_trial"]) for t in trials if t.system_attrs.get("failed_trial") is not None}
    versions = attrs.get("environment")
    wall = (job.finished_at - job.started_at).total_seconds() if job.finished_at and job.started_at else None
    return {
        "job_id": job.id,
        "name": job.name,
        "status": job.status,
        "error": job.error,
        "best": best,
        "test": None if not metrics else {
            "metrics": metrics,
            "n_test": metrics.get("n_test"),
            "confusion_matrix": attrs.get("test_confusion_matrix"),
        },
        "model_url": f"/jobs/{job.id}/model" if attrs.get("model_path") and job.status == "succeeded" else None,
        "split": {**split_recipe(spec, task),
                  "seeds": seeds(spec, best_trial.number if best_trial is not None else None)},
        "dataset": _dataset(session, job, spec, task),
        "versions": versions or package_versions(),
        "versions_recorded": versions is not None,  # False: the API's own (the job recorded none)
        "timing": {"created_at": job.created_at, "started_at": job.started_at, "finished_at": job.finished_at,
                   "wall_s": wall,
                   "trials_s": sum(float(t.user_attrs.get("duration_s") or 0.0) for t in trials)},
        "trials": {
            "total": len(trials),
            "by_state": trial_counts(study).as_dict() if study is not None else {},
            "by_failure_cause": dict(Counter(failure_cause(t, retried) for t in trials if t.state == TrialState.FAIL)),
        },
        "reproduce": _reproduce(session, job, spec, trials, attrs),
        "spec": job.spec,
    }
