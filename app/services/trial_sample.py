"""A bounded, batched read of a job's trials into a light in-memory Optuna study.

Plots and importances take an ``optuna.Study``; loading a 5,000-trial study from the database (every
trial with its user attributes and curves) takes seconds. Here a few aggregate-friendly SQL queries pick
the trials that matter (the best complete ones and the most recent ones), read only their params, values
and intermediate values in batches, and hand them to an in-memory study that ``optuna.visualization``
and ``optuna.importance`` read like any other.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.trial import FrozenTrial, TrialState

__all__ = ["SampleLimits", "count_complete", "sample_study"]

_BATCH = 500


@dataclass(frozen=True)
class SampleLimits:
    """How many trials a sample holds: the ``best`` complete ones plus the ``recent`` newest of any state.

    ``max_steps`` downsamples each trial's intermediate values (evenly, keeping the last step).
    """

    best: int = 200
    recent: int = 300
    max_steps: int | None = None
    states: tuple[str, ...] | None = None  # only these (Optuna state names) among the recent ones


_COMPLETE = sa.text("SELECT COUNT(*) FROM trials WHERE study_id = :sid AND state = 'COMPLETE'")


def _study_id(storage: optuna.storages.RDBStorage, study_name: str) -> int | None:
    try:
        return storage.get_study_id_from_name(study_name)
    except KeyError:
        return None


def count_complete(storage: optuna.storages.BaseStorage, study_name: str) -> int:
    """Complete trials of the study (0 when it does not exist yet), with one COUNT query on RDB storage."""
    if not isinstance(storage, optuna.storages.RDBStorage):
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:
            return 0
        return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    sid = _study_id(storage, study_name)
    if sid is None:
        return 0
    with storage.engine.connect() as conn:
        return int(conn.execute(_COMPLETE, {"sid": sid}).scalar() or 0)


def _chunks(ids: Sequence[int]) -> Iterable[list[int]]:
    for i in range(0, len(ids), _BATCH):
        yield list(ids[i : i + _BATCH])


def _downsample(steps: dict[int, float], max_steps: int | None) -> dict[int, float]:
    if max_steps is None or len(steps) <= max_steps:
        return steps
    keys = sorted(steps)
    stride = len(keys) / max_steps
    picked = {keys[int(i * stride)] for i in range(max_steps - 1)} | {keys[-1]}
    return {k: steps[k] for k in sorted(picked)}


def _value(value: float | None, kind: str | None) -> float:
    if kind is not None:
        kind = str(kind).rsplit(".", 1)[-1].upper()
    if kind == "INF_POS":
        return math.inf
    if kind == "INF_NEG":
        return -math.inf
    if kind == "NAN" or value is None:
        return math.nan
    return float(value)


def _pick_ids(conn: sa.Connection, sid: int, limits: SampleLimits, minimize: bool) -> list[int]:
    order = "ASC" if minimize else "DESC"
    best = conn.execute(sa.text(
        "SELECT t.trial_id FROM trials t JOIN trial_values v ON v.trial_id = t.trial_id"
        " WHERE t.study_id = :sid AND t.state = 'COMPLETE' AND v.objective = 0 AND v.value IS NOT NULL"
        f" ORDER BY v.value {order} LIMIT :n"), {"sid": sid, "n": limits.best}).scalars().all()
    state_filter = " AND state != 'WAITING'"
    params: dict[str, Any] = {"sid": sid, "n": limits.recent}
    if limits.states is not None:
        state_filter += " AND state IN :states"
        params["states"] = list(limits.states)
    recent_q = sa.text(
        f"SELECT trial_id FROM trials WHERE study_id = :sid{state_filter} ORDER BY number DESC LIMIT :n")
    if limits.states is not None:
        recent_q = recent_q.bindparams(sa.bindparam("states", expanding=True))
    recent = conn.execute(recent_q, params).scalars().all()
    return sorted(set(best) | set(recent))


def sample_study(
    storage: optuna.storages.BaseStorage, study_name: str, limits: SampleLimits = SampleLimits()
) -> optuna.Study | None:
    """An in-memory study with a bounded sample of the job's trials (None while the study does not exist).

    Trials keep their original numbers, params, distributions, values and intermediate values; user and
    system attributes are left out (the plots do not read them).
    """
    if not isinstance(storage, optuna.storages.RDBStorage):
        try:
            src = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:
            return None
        return _in_memory(src.directions, src.get_trials(deepcopy=False)[-limits.recent :], limits.max_steps)
    sid = _study_id(storage, study_name)
    if sid is None:
        return None
    directions = storage.get_study_directions(sid)
    minimize = directions[0] == optuna.study.StudyDirection.MINIMIZE
    with storage.engine.connect() as conn:
        ids = _pick_ids(conn, sid, limits, minimize)
        rows: dict[int, dict[str, Any]] = {}
        params: dict[int, dict[str, tuple[float, str]]] = defaultdict(dict)
        values: dict[int, float] = {}
        steps: dict[int, dict[int, float]] = defaultdict(dict)
        for chunk in _chunks(ids):
            p = {"ids": chunk}
            for tid, number, state, start, end in conn.execute(sa.text(
                    "SELECT trial_id, number, state, datetime_start, datetime_complete FROM trials"
                    " WHERE trial_id IN :ids").bindparams(sa.bindparam("ids", expanding=True)), p):
                rows[tid] = {"number": number, "state": str(state).rsplit(".", 1)[-1].upper(),
                             "start": start, "end": end}
            for tid, name, value, dist in conn.execute(sa.text(
                    "SELECT trial_id, param_name, param_value, distribution_json FROM trial_params"
                    " WHERE trial_id IN :ids").bindparams(sa.bindparam("ids", expanding=True)), p):
                params[tid][name] = (value, dist)
            for tid, value, kind in conn.execute(sa.text(
                    "SELECT trial_id, value, value_type FROM trial_values WHERE objective = 0 AND trial_id IN :ids"
                    ).bindparams(sa.bindparam("ids", expanding=True)), p):
                values[tid] = _value(value, kind)
            for tid, step, value, kind in conn.execute(sa.text(
                    "SELECT trial_id, step, intermediate_value, intermediate_value_type"
                    " FROM trial_intermediate_values WHERE trial_id IN :ids"
                    ).bindparams(sa.bindparam("ids", expanding=True)), p):
                steps[tid][int(step)] = _value(value, kind)
    trials: list[FrozenTrial] = []
    for tid in ids:
        row = rows.get(tid)
        if row is None:
            continue
        dists: dict[str, BaseDistribution] = {}
        ext: dict[str, Any] = {}
        for name, (internal, dist_json) in params[tid].items():
            dist = json_to_distribution(dist_json)
            dists[name] = dist
            ext[name] = dist.to_external_repr(internal)
        state = TrialState[row["state"]]
        if state == TrialState.COMPLETE and tid not in values:
            continue
        trial = FrozenTrial(
            number=row["number"], state=state, value=values.get(tid) if state == TrialState.COMPLETE else None,
            datetime_start=row["start"], datetime_complete=row["end"], params=ext, distributions=dists,
            user_attrs={}, system_attrs={}, intermediate_values=steps.get(tid, {}), trial_id=tid,
        )
        trials.append(trial)
    return _in_memory(directions, trials, limits.max_steps)


def _in_memory(directions: Sequence[optuna.study.StudyDirection], trials: Sequence[FrozenTrial],
               max_steps: int | None) -> optuna.Study:
    study = optuna.create_study(directions=list(directions), storage=optuna.storages.InMemoryStorage())
    numbers = [t.number for t in trials]
    for t in trials:
        if max_steps is not None:
            t = _copy_with_steps(t, _downsample(t.intermediate_values, max_steps))
        study.add_trial(t)
    # add_trial renumbers 0..n-1; the plots label trials by number, so give them their real numbers back.
    for stored, number in zip(study.get_trials(deepcopy=False), numbers, strict=True):
        stored.number = number
    return study


def _copy_with_steps(t: FrozenTrial, steps: dict[int, float]) -> FrozenTrial:
    return FrozenTrial(
        number=t.number, state=t.state, value=t.value if t.state == TrialState.COMPLETE else None,
        datetime_start=t.datetime_start, datetime_complete=t.datetime_complete, params=t.params,
        distributions=t.distributions, user_attrs={}, system_attrs={}, intermediate_values=steps,
        trial_id=t._trial_id,
    )

