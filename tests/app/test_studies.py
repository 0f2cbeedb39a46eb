"""app/studies.py: the aggregate-query progress summary agrees with loading the whole study."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from app.core.config import Settings
from app.db import make_storage
from app.studies import load_study, progress_summary, study_summary, trial_page


def test_progress_summary_matches_full_load(settings: Settings) -> None:
    storage = make_storage(settings.database_url)
    assert progress_summary(storage, "absent") == study_summary(None)
    study = optuna.create_study(storage=storage, study_name="s", direction="minimize")
    dist = optuna.distributions.FloatDistribution(0.0, 1.0)
    for i, state in enumerate([TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                               TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]):
        value = [0.5, 0.2][i] if state == TrialState.COMPLETE else None
        system = {"failure": "config"} if i == 3 else {}
        study.add_trial(optuna.trial.create_trial(
            state=state, value=value, params={"x": 0.1 * i}, distributions={"x": dist},
            user_attrs={"best_epoch": i + 1}, system_attrs=system,
        ))
    study.set_user_attr("test_metrics", {"accuracy": 0.9})
    fast = progress_summary(storage, "s")
    full = study_summary(load_study(storage, "s"))
    assert fast == {k: full[k] for k in ("counts", "best_trial", "test_metrics", "model_path")}
    assert fast["counts"] == {"complete": 2, "pruned": 1, "failed": 1, "config_failed": 1, "running": 1,
                              "waiting": 1, "counted": 4}
    assert fast["best_trial"]["number"] == 1 and fast["best_trial"]["best_epoch"] == 2


def test_trial_page_matches_slicing_the_full_list(settings: Settings) -> None:
    storage = make_storage(settings.database_url)
    assert trial_page(storage, "absent", limit=10, offset=0) == ([], 0)
    study = optuna.create_study(storage=storage, study_name="p")
    for i in range(7):
        study.enqueue_trial({"x": i})
        study.tell(study.ask({"x": optuna.distributions.IntDistribution(0, 9)}), float(i))
    full = load_study(storage, "p").get_trials()
    for offset, limit in [(0, 3), (3, 3), (6, 3), (9, 3)]:
        page, total = trial_page(storage, "p", limit=limit, offset=offset)
        assert total == 7
        assert [(t.number, t.params, t.value) for t in page] == [
            (t.number, t.params, t.value) for t in full[offset : offset + limit]]


def test_trial_page_equals_the_per_trial_path(settings: Settings) -> None:
    """The batched page is what ``storage.get_trial`` gives trial by trial (every table, every state)."""
    from app.studies import trial_dict

    storage = make_storage(settings.database_url)
    study = optuna.create_study(storage=storage, study_name="b", direction="maximize")
    dists = {"x": optuna.distributions.FloatDistribution(0.0, 1.0),
             "k": optuna.distributions.CategoricalDistribution(["a", "b"])}
    states = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.COMPLETE, TrialState.RUNNING,
              TrialState.WAITING, TrialState.COMPLETE]
    for i, state in enumerate(states):
        study.add_trial(optuna.trial.create_trial(
            state=state, value={0: 0.5, 3: float("inf"), 6: -1.0}.get(i), params={"x": 0.1 * i, "k": "ab"[i % 2]},
            distributions=dists, user_attrs={"best_epoch": i, "val_curve": [0.1 * j for j in range(i)]},
            system_attrs={"failure": "config"} if state == TrialState.FAIL else {"interrupted": i == 1},
            intermediate_values={j: (float("nan") if j == 2 else 0.1 * j) for j in range(i)},
        ))
    old = [storage.get_trial(t._trial_id) for t in study.get_trials()]
    page, total = trial_page(storage, "b", limit=100, offset=0)
    assert total == len(states) and repr(page) == repr(old)  # repr: NaN != NaN
    assert repr([trial_dict(t) for t in page]) == repr([trial_dict(t) for t in old])
    page, _ = trial_page(storage, "b", limit=2, offset=3)
    assert repr(page) == repr(old[3:5])


def test_trial_page_reads_in_a_bounded_number_of_queries(settings: Settings) -> None:
    import sqlalchemy as sa

    storage = make_storage(settings.database_url)
    study = optuna.create_study(storage=storage, study_name="q")
    for i in range(12):
        trial = study.ask({"x": optuna.distributions.IntDistribution(0, 20)})
        trial.set_user_attr("curve", [i])
        trial.report(float(i), 0)
        study.tell(trial, float(i))
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    counts = []
    for limit in (1, 12):
        statements.clear()
        sa.event.listen(storage.engine, "before_cursor_execute", record)
        try:
            page, _ = trial_page(storage, "q", limit=limit, offset=0)
        finally:
            sa.event.remove(storage.engine, "before_cursor_execute", record)
        assert len(page) == limit
        counts.append(sum(st.lstrip().upper().startswith("SELECT") for st in statements))
    assert counts[0] == counts[1] <= 9  # study id, total, page ids, trials, then 5 batched child tables


def test_trial_dict_says_how_many_folds_defined_a_metric():
    import optuna

    from app.schemas import TrialPublic
    from app.studies import trial_dict

    t = optuna.trial.create_trial(value=0.5, user_attrs={"val_metrics": {"roc_auc": None, "accuracy": 0.9},
                                                          "val_metrics_folds": {"roc_auc": 3}})
    d = trial_dict(t)
    assert d["val_metrics"]["roc_auc"] is None and d["val_metrics_folds"] == {"roc_auc": 3}
    assert TrialPublic.model_validate(d).val_metrics_folds == {"roc_auc": 3}
    assert trial_dict(optuna.trial.create_trial(value=0.5))["val_metrics_folds"] is None
