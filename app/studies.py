"""Reading a job's Optuna study: progress counts, best trial so far, trials as plain dicts."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.storages._rdb import models as _models  # Optuna's table models: batched reads
from optuna.trial import FrozenTrial
from sqlalchemy import orm

from tuner.runner import build_result, trial_counts

__all__ = ["load_study", "load_trials", "progress_summary", "read_summary", "study_summary", "trial_dict",
           "trial_page"]


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
_STUDY_ID = sa.text("SELECT study_id FROM studies WHERE study_name = :name")
_STUDY_ATTRS = sa.text(
    "SELECT key, value_json FROM study_user_attributes"
    " WHERE study_id = :sid AND key IN ('test_metrics', 'model_path')"
)
_DIRECTION = sa.text("SELECT direction FROM study_directions WHERE study_id = :sid AND objective = 0")


def progress_summary(storage: optuna.storages.BaseStorage, study_name: str) -> dict[str, Any]:
    """What :func:`study_summary` returns, without loading every trial.

    A study may hold thousands of trials with their curves: counts come from two aggregate queries on
    Optuna's tables, the best trial from one ordered query (see :func:`read_summary`). Storages other
    than RDB fall back to the full load.
    """
    if not isinstance(storage, optuna.storages.RDBStorage):
        return study_summary(load_study(storage, study_name))
    with orm.Session(storage.engine) as session:
        return read_summary(session, study_name)


def read_summary(session: orm.Session, study_name: str) -> dict[str, Any]:
    """``counts``, ``best_trial``, ``test_metrics``, ``model_path`` of a study, read with plain SQL on
    ``session``'s connection (Optuna's tables live in the service's database), so the caller can read
    and write the job row in the same transaction."""
    sid = session.execute(_STUDY_ID, {"name": study_name}).scalar()
    if sid is None:
        return study_summary(None)
    rows = session.execute(_COUNT_BY_STATE, {"sid": sid})
    by_state = {str(st).rsplit(".", 1)[-1].upper(): int(n) for st, n in rows}
    config_failed = int(
        session.execute(_COUNT_CONFIG_FAILED, {"sid": sid, "v": json.dumps("config")}).scalar() or 0)
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
        direction = str(session.execute(_DIRECTION, {"sid": sid}).scalar() or "MINIMIZE")
        find = (_models.TrialModel.find_max_value_trial_id if direction.upper().endswith("MAXIMIZE")
                else _models.TrialModel.find_min_value_trial_id)
        try:
            (bt,) = load_trials(session, [find(sid, 0, session)])
        except ValueError:
            pass
        else:
            best_trial = {"number": bt.number, "params": bt.params, "value": bt.value,
                          "best_epoch": bt.user_attrs.get("best_epoch")}
    attrs = {k: json.loads(v) for k, v in session.execute(_STUDY_ATTRS, {"sid": sid})}
    return {"counts": counts, "best_trial": best_trial, "test_metrics": attrs.get("test_metrics"),
            "model_path": attrs.get("model_path")}


def load_trials(session: orm.Session, trial_ids: Sequence[int]) -> list[FrozenTrial]:
    """The trials with these ids, in the given order, in six batched SELECTs (trials, then params,
    values, intermediate values, user and system attributes ``WHERE trial_id IN (...)``) instead of
    six per trial as ``storage.get_trial`` does. Built the way Optuna's RDB storage builds them."""
    if not trial_ids:
        return []
    m = _models
    rows = (session.query(m.TrialModel)
            .options(orm.selectinload(m.TrialModel.params), orm.selectinload(m.TrialModel.values),
                     orm.selectinload(m.TrialModel.intermediate_values),
                     orm.selectinload(m.TrialModel.user_attributes),
                     orm.selectinload(m.TrialModel.system_attributes))
            .filter(m.TrialModel.trial_id.in_(list(trial_ids))).all())
    by_id: dict[int, FrozenTrial] = {int(t.trial_id): _frozen(t) for t in rows}
    return [by_id[i] for i in trial_ids if i in by_id]


def _frozen(t: Any) -> FrozenTrial:
    m = _models
    values: list[float] | None = None
    if t.values:
        values = [0.0] * len(t.values)
        for v in t.values:
            values[v.objective] = m.TrialValueModel.stored_repr_to_value(v.value, v.value_type)
    params = sorted(t.params, key=lambda p: p.param_id)
    dists = {p.param_name: optuna.distributions.json_to_distribution(p.distribution_json) for p in params}
    return FrozenTrial(
        number=t.number, state=t.state, value=None, values=values,
        datetime_start=t.datetime_start, datetime_complete=t.datetime_complete,
        params={p.param_name: dists[p.param_name].to_external_repr(p.param_value) for p in params},
        distributions=dists,
        user_attrs={a.key: json.loads(a.value_json) for a in t.user_attributes},
        system_attrs={a.key: json.loads(a.value_json) for a in t.system_attributes},
        intermediate_values={
            v.step: m.TrialIntermediateValueModel.stored_repr_to_intermediate_value(
                v.intermediate_value, v.intermediate_value_type)
            for v in t.intermediate_values
        },
        trial_id=t.trial_id,
    )


_PAGE_IDS = sa.text(
    "SELECT trial_id FROM trials WHERE study_id = :sid ORDER BY number LIMIT :limit OFFSET :offset"
)
_COUNT_ALL = sa.text("SELECT COUNT(*) FROM trials WHERE study_id = :sid")


def trial_page(storage: optuna.storages.BaseStorage, study_name: str, *, limit: int, offset: int
               ) -> tuple[list[FrozenTrial], int]:
    """One page of trials in number order and the total, reading only that page's trials (RDB storage)
    in a bounded number of batched queries (:func:`load_trials`)."""
    if not isinstance(storage, optuna.storages.RDBStorage):
        study = load_study(storage, study_name)
        trials = study.get_trials(deepcopy=False) if study is not None else []
        return list(trials[offset : offset + limit]), len(trials)
    with orm.Session(storage.engine) as session:
        sid = session.execute(_STUDY_ID, {"name": study_name}).scalar()
        if sid is None:
            return [], 0
        total = int(session.execute(_COUNT_ALL, {"sid": sid}).scalar() or 0)
        ids = [r[0] for r in session.execute(_PAGE_IDS, {"sid": sid, "limit": limit, "offset": offset})]
        return load_trials(session, ids), total


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
        "val_metrics_folds": ua.get("val_metrics_folds"),  # K-fold: folds that defined a metric, when not all
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
