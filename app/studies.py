"""Reading a job's Optuna study: progress counts, best trial so far, trials as plain dicts."""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from tuner.runner import build_result, trial_counts

__all__ = ["load_study", "study_summary", "trial_dict"]


def load_study(storage: optuna.storages.BaseStorage, study_name: str) -> optuna.Study | None:
    """The job's study, or None while no worker has opened it yet (or after it was deleted)."""
    try:
        return optuna.load_study(study_name=study_name, storage=storage, sampler=optuna.samplers.RandomSampler())
    except KeyError:
        return None


def study_summary(study: optuna.Study | None) -> dict[str, Any]:
    """``counts``, ``best_trial``, ``test_metrics``, ``model_path`` (empty when there is no study yet)."""
    if study is None:
        return {"counts": {}, "best_trial": None, "test_metrics": None, "model_path": None}
    return build_result(study)


def _finite(v: float | None) -> float | None:
    return v if v is None or math.isfinite(v) else None


def trial_dict(t: FrozenTrial) -> dict[str, Any]:
    ua = t.user_attrs
    duration = ua.get("duration_s")
    if duration is None and t.duration is not None:
        duration = t.duration.total_seconds()
    return {
        "number": t.number,
        "state": t.state.name.lower(),
        "params": t.params,
        "value": _finite(t.value) if t.values else None,
        "intermediate_values": {k: v for k, v in t.intermediate_values.items() if math.isfinite(v)},
        "val_curve": ua.get("val_curve"),
        "train_curve": ua.get("train_curve"),
        "best_epoch": ua.get("best_epoch"),
        "val_metrics": ua.get("val_metrics"),
        "duration_s": duration,
        "worker": ua.get("worker"),
        "fail_reason": ua.get("fail_reason"),
        "interrupted": bool(t.system_attrs.get("interrupted", False)),
        "retry_of": t.system_attrs.get("failed_trial"),
        "datetime_start": t.datetime_start,
        "datetime_complete": t.datetime_complete,
    }


def counts_of(study: optuna.Study) -> dict[str, int]:
    return trial_counts(study).as_dict()
