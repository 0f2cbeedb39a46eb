"""Reading a job's Optuna study: progress counts, best trial so far, trials as plain dicts."""

from __future__ import annotations

import json
import math
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.trial import FrozenTrial

from tuner.runner import build_result, trial_counts

__all__ = ["load_study", "progress_summary", "study_summary", "trial_dict", "trial_page"]


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


_COUNT_BY_STATE = sa.text("SELECT state, COUNT(*) FROM trials WHERE study_id = :sid GROUP BY state")
_COUNT_CONFIG_FAILED = sa.text(
    "SELECT COUNT(*) FROM trials t JOIN trial_system_attributes a ON a.trial_id = t.trial_id"
    " WHERE t.study_id = :sid AND t.state = 'FAIL' AND a.key = 'failure' AND a.value_json = :v"
)


def progress_summary(storage: optuna.storages.BaseStorage, study_name: str) -> dict[str, Any]:
    """What :func:`study_summary` returns, without loading every trial.

    ``GET /jobs/{id}`` is polled often and a study may hold thousands of trials with their curves:
    counts come from two aggregate queries on Optuna's tables, the best trial from the storage's own
    ``get_best_trial``. Storages other than RDB fall back to the full load.
    """
    if not isinstance(storage, optuna.storages.RDBStorage):
        return study_summary(load_study(storage, study_name))
    try:
        sid = storage.get_study_id_from_name(study_name)
    except KeyError:
        return study_summary(None)
    with storage.engine.connect() as conn:
        by_state = {str(st).rsplit(".", 1)[-1].upper(): int(n) for st, n in conn.execute(_COUNT_BY_STATE, {"sid": sid})}
        config_failed = int(conn.execute(_COUNT_CONFIG_FAILED, {"sid": sid, "v": json.dumps("config")}).scalar() or 0)
    counts = {
        "complete": by_state.get("COMPLETE", 0),
        "pruned": by_state.get("PRUNED", 0),
        "failed": by_state.get("FAIL", 0) - config_failed,
        "config_failed": config_failed,
        "running": by_state.get("RUNNING", 0),
        "waiting": by_state.get("WAITING", 0),
    }
    counts["counted"] = counts["complete"] + counts["pruned"] + config_failed
    best_trial = None
    if counts["complete"]:
        try:
            bt = storage.get_best_trial(sid)
            best_trial = {"number": bt.number, "params": bt.params, "value": bt.value,
                          "best_epoch": bt.user_attrs.get("best_epoch")}
        except ValueError:
            pass
    attrs = storage.get_study_user_attrs(sid)
    return {"counts": counts, "best_trial": best_trial, "test_metrics": attrs.get("test_metrics"),
            "model_path": attrs.get("model_path")}


_PAGE_IDS = sa.text(
    "SELECT trial_id FROM trials WHERE study_id = :sid ORDER BY number LIMIT :limit OFFSET :offset"
)
_COUNT_ALL = sa.text("SELECT COUNT(*) FROM trials WHERE study_id = :sid")


def trial_page(storage: optuna.storages.BaseStorage, study_name: str, *, limit: int, offset: int
               ) -> tuple[list[FrozenTrial], int]:
    """One page of trials in number order and the total, reading only that page's trials (RDB storage)."""
    if not isinstance(storage, optuna.storages.RDBStorage):
        study = load_study(storage, study_name)
        trials = study.get_trials(deepcopy=False) if study is not None else []
        return list(trials[offset : offset + limit]), len(trials)
    try:
        sid = storage.get_study_id_from_name(study_name)
    except KeyError:
        return [], 0
    with storage.engine.connect() as conn:
        total = int(conn.execute(_COUNT_ALL, {"sid": sid}).scalar() or 0)
        ids = [r[0] for r in conn.execute(_PAGE_IDS, {"sid": sid, "limit": limit, "offset": offset})]
    return [storage.get_trial(tid) for tid in ids], total


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
        "device": ua.get("device"),
        "fail_reason": ua.get("fail_reason"),
        "interrupted": bool(t.system_attrs.get("interrupted", False)),
        "retry_of": t.system_attrs.get("failed_trial"),
        "datetime_start": t.datetime_start,
        "datetime_complete": t.datetime_complete,
    }


def counts_of(study: optuna.Study) -> dict[str, int]:
    return trial_counts(study).as_dict()
