"""The Optuna objective: reporting, user attributes, pruning, K-fold, failures and stops."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from tuner.data import prepare_data
from tuner.errors import StopRequested
from tuner.objective import Objective
from tuner.runner import open_study, optimize, trial_counts

ALWAYS_PRUNE = optuna.pruners.ThresholdPruner(upper=-1e9)  # any value is "too high" -> prune at once


def _study(spec, pruner=None) -> optuna.Study:
    study = open_study(spec, None)
    if pruner is not None:
        study.pruner = pruner
    return study


NEVER_PRUNE = {"kind": "median", "n_startup_trials": 1000}


def test_holdout_reports_every_epoch_and_records_user_attrs(make_spec) -> None:
    spec = make_spec(search_space={"dropout": {"value": 0.1}, "optimizer": {"choices": ["sgd"]}}, pruner=NEVER_PRUNE)
    data = prepare_data(spec)
    study = _study(spec)
    optimize(study, Objective(spec, data, worker_id="host:1"), n_trials=2, timeout_s=None)
    for t in study.trials:
        assert t.state == TrialState.COMPLETE
        ua = t.user_attrs
        assert set(ua) >= {"best_epoch", "train_curve", "val_curve", "duration_s", "val_metrics", "worker"}
        assert ua["worker"] == "host:1" and ua["device"] == "cpu"
        assert sorted(t.intermediate_values) == list(range(1, len(ua["val_curve"]) + 1))
        assert list(t.intermediate_values.values()) == pytest.approx(ua["val_curve"])
        assert t.value == pytest.approx(min(ua["val_curve"]))
        assert t.value == pytest.approx(ua["val_curve"][ua["best_epoch"] - 1])
        assert ua["val_metrics"]["loss"] == pytest.approx(t.value)
        assert t.params["dropout"] == 0.1 and t.params["optimizer"] == "sgd"
        assert isinstance(t.params["batch_size"], int)
    assert data.test_access_count == 0


def test_without_a_pruner_values_are_written_once_at_the_end(make_spec, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec()
    study = open_study(spec, "sqlite://")
    monkeypatch.setattr(optuna.Trial, "should_prune", lambda self: pytest.fail("asked the pruner"))
    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_intermediate_value",
                        lambda *a: pytest.fail("one transaction per epoch"))
    optimize(study, Objective(spec, prepare_data(spec), worker_id="w"), n_trials=1, timeout_s=None)
    (t,) = study.trials
    assert list(t.intermediate_values.values()) == pytest.approx(t.user_attrs["val_curve"])
    assert set(t.user_attrs) >= {"best_epoch", "train_curve", "val_curve", "duration_s", "val_metrics", "worker",
                                 "device"}
    assert t.value == pytest.approx(t.user_attrs["val_curve"][t.user_attrs["best_epoch"] - 1])


def test_pruned_trials_end_pruned(make_spec) -> None:
    spec = make_spec()
    study = _study(spec, ALWAYS_PRUNE)
    optimize(study, Objective(spec, prepare_data(spec)), n_trials=2, timeout_s=None)
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 2
    assert list(study.trials[0].intermediate_values) == [1]
    assert trial_counts(study).pruned == 2 and trial_counts(study).counted == 2


def test_median_pruner_prunes_a_hopeless_trial(make_spec) -> None:
    spec = make_spec(pruner={"kind": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
                     budget={"max_epochs": 6})
    study = _study(spec)
    study.enqueue_trial({"lr": 0.03, "batch_size": 16})
    study.enqueue_trial({"lr": 0.001, "batch_size": 32})
    optimize(study, Objective(spec, prepare_data(spec)), n_trials=2, timeout_s=None)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED]


@pytest.mark.parametrize("kfold", [False, True])
@pytest.mark.parametrize("pruner", [{"kind": "median", "n_startup_trials": 2},
                                    {"kind": "successive_halving", "min_resource": 1, "reduction_factor": 2}])
def test_pruning_decided_in_process_equals_optunas_should_prune(make_spec, kfold: bool, pruner, monkeypatch) -> None:
    """The in-process median (completed trials read once) and successive-halving (other trials read at
    rung steps only) decisions prune exactly what Optuna's report + should_prune every epoch would, and
    leave the same intermediate values and rung attributes in the study."""
    import tuner.objective as objective_mod

    over = {"split": {"validation": {"kind": "kfold", "k": 3}}} if kfold else {}
    spec = make_spec(pruner=pruner, budget={"max_epochs": 6}, sampler={"kind": "random", "seed": 3}, **over)
    data = prepare_data(spec)
    runs = []
    for mode in ("local", "optuna"):
        if mode == "optuna":
            real_init = objective_mod.Reporter.__init__

            def init(self, trial, real_init=real_init):  # type: ignore[no-untyped-def]
                real_init(self, trial)
                self.mode = "optuna"

            monkeypatch.setattr(objective_mod.Reporter, "__init__", init)
        study = open_study(spec, "sqlite://")
        optimize(study, Objective(spec, data), n_trials=8, timeout_s=None)
        runs.append([(t.state, t.intermediate_values, t.value,
                      {k: v for k, v in t.system_attrs.items() if k.startswith("completed_rung")})
                     for t in study.trials])
    assert runs[0] == runs[1]
    assert any(state == TrialState.PRUNED for state, *_ in runs[0])


def test_kfold_mlp_reports_the_mean_over_folds_every_epoch(make_spec) -> None:
    spec = make_spec(split={"validation": {"kind": "kfold", "k": 3}}, objective="accuracy", pruner=NEVER_PRUNE,
                     early_stopping={"patience": 10})
    study = _study(spec)
    optimize(study, Objective(spec, prepare_data(spec)), n_trials=1, timeout_s=None)
    t = study.trials[0]
    folds = t.user_attrs["fold_values"]
    curves = t.user_attrs["val_curve"]
    assert len(folds) == 3 and len(t.user_attrs["fold_best_epochs"]) == 3 and len(curves) == 3
    assert t.value == pytest.approx(np.mean(folds))
    assert sorted(t.intermediate_values) == [1, 2, 3, 4]  # step = epoch; no fold stops within 4 epochs
    assert [t.intermediate_values[e] for e in range(1, 5)] == pytest.approx(
        [np.mean([c[e - 1] for c in curves]) for e in range(1, 5)]
    )
    assert t.user_attrs["best_epoch"] == max(1, round(np.mean(t.user_attrs["fold_best_epochs"])))


def test_kfold_cnn_reports_running_mean_per_fold(make_spec) -> None:
    spec = make_spec(dataset={"builtin": "digits"}, model={"kind": "cnn", "channels": [2], "hidden": [8]},
                     split={"validation": {"kind": "kfold", "k": 3}}, budget={"max_epochs": 1}, pruner=NEVER_PRUNE)
    study = _study(spec)
    optimize(study, Objective(spec, prepare_data(spec)), n_trials=1, timeout_s=None)
    t = study.trials[0]
    folds = t.user_attrs["fold_values"]
    assert [t.intermediate_values[i] for i in range(3)] == pytest.approx(
        [np.mean(folds[: i + 1]) for i in range(3)]
    )


def test_kfold_wilcoxon_reports_each_fold_and_prunes_by_fold(make_spec) -> None:
    spec = make_spec(split={"validation": {"kind": "kfold", "k": 3}}, pruner={"kind": "wilcoxon"})
    study = _study(spec)
    optimize(study, Objective(spec, prepare_data(spec)), n_trials=1, timeout_s=None)
    t = study.trials[0]
    assert [t.intermediate_values[i] for i in range(3)] == pytest.approx(t.user_attrs["fold_values"])


def test_wilcoxon_pruner_prunes_a_trial_worse_on_every_fold(make_spec) -> None:
    spec = make_spec(split={"validation": {"kind": "kfold", "k": 5}}, pruner={"kind": "wilcoxon"},
                     budget={"max_epochs": 3})
    study = _study(spec)
    study.enqueue_trial({"lr": 0.03, "batch_size": 16})
    study.enqueue_trial({"lr": 0.001, "batch_size": 32})  # learns far less in 3 epochs on every fold
    optimize(study, Objective(spec, prepare_data(spec)), n_trials=2, timeout_s=None)
    good, bad = study.trials
    assert good.state == TrialState.COMPLETE and bad.state == TrialState.PRUNED
    # four per-fold differences of one sign are the first that reach p < 0.1 (one-sided, exact: 1/16)
    assert list(bad.intermediate_values) == [0, 1, 2, 3]
    assert all(bad.intermediate_values[i] > good.intermediate_values[i] for i in range(4))


def test_diverging_trial_is_a_recorded_config_failure(make_spec) -> None:
    spec = make_spec(
        dataset={"builtin": "diabetes"}, split={"stratify": None},
        search_space={"lr": {"value": 10.0}, "optimizer": {"value": "sgd"}, "momentum": {"value": 0.99},
                      "batch_size": {"value": 8}},
    )
    study = _study(spec)
    optimize(study, Objective(spec, prepare_data(spec)), n_trials=2, timeout_s=None)  # does not raise
    for t in study.trials:
        assert t.state == TrialState.FAIL
        assert t.system_attrs["failure"] == "config"
        assert "loss is" in t.user_attrs["fail_reason"] or "validation" in t.user_attrs["fail_reason"]
    counts = trial_counts(study)
    assert counts.config_failed == 2 and counts.failed == 0 and counts.counted == 2


def test_stop_requested_interrupts_without_counting(make_spec) -> None:
    spec = make_spec()
    study = _study(spec)
    with pytest.raises(StopRequested):
        optimize(study, Objective(spec, prepare_data(spec), should_stop=lambda: True), n_trials=3, timeout_s=None)
    (t,) = study.trials
    assert t.state == TrialState.FAIL and t.system_attrs["interrupted"] is True
    counts = trial_counts(study)
    assert counts.failed == 1 and counts.counted == 0


def test_write_trial_attrs_writes_everything_in_one_transaction(tmp_path) -> None:
    """User attrs, system attrs and per-epoch values of a running trial land together, read back by a
    fresh connection exactly as Optuna's own per-key calls would store them (NaN/inf, overwrites)."""
    import sqlalchemy

    from tuner.objective import write_trial_attrs

    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(storage=url, study_name="w")
    trial = study.ask()
    trial.set_user_attr("kept", 1)
    trial.set_user_attr("over", "old")
    trial.report(9.0, 3)
    backend = study._storage._backend if hasattr(study._storage, "_backend") else study._storage
    commits: list[int] = []
    sqlalchemy.event.listen(backend.engine, "commit", lambda conn: commits.append(1))
    write_trial_attrs(trial, user={"over": [1, 2], "new": {"a": None}}, system={"failure": "config"},
                      intermediate={1: 0.5, 2: float("nan"), 3: float("inf"), 4: float("-inf")})
    assert len(commits) == 1
    assert trial._cached_frozen_trial.user_attrs["over"] == [1, 2]
    study.tell(trial, 1.0)
    (t,) = optuna.load_study(study_name="w", storage=url).trials
    assert t.user_attrs == {"kept": 1, "over": [1, 2], "new": {"a": None}}
    assert t.system_attrs["failure"] == "config"
    assert t.intermediate_values[1] == 0.5 and np.isnan(t.intermediate_values[2])
    assert t.intermediate_values[3] == float("inf") and t.intermediate_values[4] == float("-inf")
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        write_trial_attrs(trial, user={"late": 1})


def test_a_trial_costs_a_fixed_number_of_transactions(make_spec, tmp_path) -> None:
    """Per-epoch values and attrs are not one transaction each: a 12-epoch trial commits as few times as a
    2-epoch one (Optuna's own create/suggest/tell plus one write at the start and one at the end)."""
    import sqlalchemy

    counts = []
    for epochs in (2, 12):
        spec = make_spec(budget={"n_trials": 1, "max_epochs": epochs, "timeout_s": None},
                         early_stopping={"patience": 100}, pruner=NEVER_PRUNE, name=f"tx{epochs}")
        study = open_study(spec, f"sqlite:///{tmp_path}/t{epochs}.db")
        backend = study._storage._backend if hasattr(study._storage, "_backend") else study._storage
        commits: list[int] = []
        sqlalchemy.event.listen(backend.engine, "commit", lambda conn, c=commits: c.append(1))
        optimize(study, Objective(spec, prepare_data(spec)), n_trials=1, timeout_s=None)
        (t,) = study.trials
        assert len(t.intermediate_values) == epochs and t.state == TrialState.COMPLETE
        counts.append(len(commits))
    assert counts[0] == counts[1]


def test_suggested_params_are_written_in_one_transaction_as_optuna_writes_them(make_spec, tmp_path) -> None:
    import sqlalchemy

    from tuner.objective import suggest_params

    url = f"sqlite:///{tmp_path}/p.db"
    spec = make_spec(search_space={"lr": {"low": 1e-3, "high": 1e-1, "log": True}, "batch_size": {"choices": [8, 16]},
                                   "dropout": {"value": 0.1}, "n_layers": {"low": 1, "high": 3}})
    study = open_study(spec, url)
    backend = study._storage._backend
    commits: list[int] = []
    sqlalchemy.event.listen(backend.engine, "commit", lambda conn: commits.append(1))
    trial = study.ask()
    commits.clear()
    params = suggest_params(trial, spec)
    assert len(commits) == 1
    study.tell(trial, 1.0)
    (t,) = optuna.load_study(study_name=spec.name, storage=url).trials  # a fresh reader sees Optuna's rows
    assert t.params == params and set(t.distributions) == set(params)
    assert t.distributions["lr"] == optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)
    # a distribution the study does not already use for that name is refused, and nothing is written
    other = make_spec(search_space={"lr": {"choices": [0.5, 0.6]}})
    trial = study.ask()
    with pytest.raises(ValueError):
        suggest_params(trial, other)
    assert optuna.load_study(study_name=spec.name, storage=url).trials[1].params == {}


def test_suggest_params_works_on_a_fixed_trial(make_spec, tmp_path) -> None:
    from tuner.objective import suggest_params

    spec = make_spec()
    params = suggest_params(open_study(spec, f"sqlite:///{tmp_path}/f.db").ask(), spec)  # a real one first
    assert suggest_params(optuna.trial.FixedTrial(params), spec) == params


def test_sampler_seed_is_recorded_only_for_the_seeded_study(make_spec) -> None:
    seeded = make_spec(sampler={"kind": "random", "seed": 1}, name="seeded")
    unseeded = make_spec(sampler={"kind": "random", "seed": None}, name="unseeded")
    objective = Objective(seeded, prepare_data(seeded))
    a, b = open_study(seeded, "sqlite://"), open_study(unseeded, "sqlite://")
    optimize(a, objective, n_trials=1, timeout_s=None)
    optimize(b, objective, n_trials=1, timeout_s=None)
    assert "sampler_seed" in a.trials[0].system_attrs and "sampler_seed" not in b.trials[0].system_attrs


# ------------------------------------------------------------------ K-fold metric means (issue 19)
def test_mean_metrics_is_null_unless_every_fold_defined_the_metric() -> None:
    from tuner.objective import mean_metrics

    folds = [{"loss": 0.5, "accuracy": 0.8, "roc_auc": 0.9}, {"loss": 0.7, "accuracy": 0.6, "roc_auc": None},
             {"loss": 0.6, "accuracy": 0.7, "roc_auc": 0.7}, {"loss": 0.4, "accuracy": 0.9, "roc_auc": float("nan")},
             {"loss": 0.3, "accuracy": 1.0, "roc_auc": 0.8}]
    means = mean_metrics(folds)
    assert dict(means) == {"loss": pytest.approx(0.5), "accuracy": pytest.approx(0.8), "roc_auc": None}
    assert means.folds == {"roc_auc": 3}  # 3 of the 5 folds defined it: not averaged over those 3
    whole = mean_metrics([f | {"roc_auc": 0.5 + i / 10} for i, f in enumerate(folds)])
    assert whole["roc_auc"] == pytest.approx(0.7) and whole.folds == {}
    # a key missing from the first fold still counts; a fold without metrics defines none
    assert mean_metrics([{"loss": 1.0}, {"loss": 2.0, "r2": 0.5}]).folds == {"r2": 1}
    assert mean_metrics([{"loss": 1.0}, None]).folds == {"loss": 1}


@pytest.mark.parametrize("lockstep", [True, False])
def test_kfold_trial_records_how_many_folds_defined_a_null_mean(make_spec, monkeypatch, lockstep: bool) -> None:
    """ROC-AUC undefined in folds 0 and 2 of 3: ``val_metrics.roc_auc`` is null (not the one fold's value)
    and ``val_metrics_folds`` says 1 fold defined it; the other metrics are the 3 folds' means. A trial
    whose folds define everything has no ``val_metrics_folds``. Lockstep and fold-after-fold alike."""
    from tuner import batched, objective, training

    calls: list[int] = []

    def undefined_in_even_folds(real):  # type: ignore[no-untyped-def]
        def wrapped(*args, **kwargs):  # type: ignore[no-untyped-def]
            out = dict(real(*args, **kwargs))
            if len(calls) % 3 in (0, 2) and len(calls) < 3:
                out["roc_auc"] = None
            calls.append(1)
            return out
        return wrapped

    if lockstep:
        monkeypatch.setattr(batched, "classification_metrics_t", undefined_in_even_folds(training.classification_metrics_t))
    else:
        monkeypatch.setattr(batched, "can_batch", lambda *a, **k: False)
        monkeypatch.setattr(objective, "compute_metrics", undefined_in_even_folds(objective.compute_metrics))
    spec = make_spec(split={"validation": {"kind": "kfold", "k": 3}}, pruner=NEVER_PRUNE)
    study = _study(spec)
    optimize(study, Objective(spec, prepare_data(spec)), n_trials=2, timeout_s=None)
    first, second = study.trials
    assert len(calls) == 6
    assert first.user_attrs["val_metrics"]["roc_auc"] is None
    assert first.user_attrs["val_metrics_folds"] == {"roc_auc": 1}
    assert type(first.user_attrs["val_metrics"]) is dict
    assert first.user_attrs["val_metrics"]["loss"] is not None
    assert second.user_attrs["val_metrics"]["roc_auc"] is not None and "val_metrics_folds" not in second.user_attrs


# -------------------------------------------------------------------- conditional momentum (issue 19)
def _asked(spec, n: int) -> list[tuple[dict, optuna.trial.FrozenTrial]]:
    from tuner.objective import suggest_params

    study = open_study(spec, None)
    out = []
    for _ in range(n):
        trial = study.ask()
        params = suggest_params(trial, spec)
        study.tell(trial, float(len(out) % 5))
        out.append((params, study.trials[-1]))
    return out


@pytest.mark.parametrize("sampler", ["random", "tpe", "qmc"])
def test_momentum_is_sampled_only_for_sgd_trials(make_spec, sampler: str) -> None:
    """Whatever the spec's order (momentum listed before optimizer here): an adam/adamw trial stores no
    momentum, an sgd trial does; the service's importance then leaves momentum out (not in every trial)."""
    spec = make_spec(search_space={"momentum": {"low": 0.5, "high": 0.99},
                                   "optimizer": {"choices": ["adam", "sgd", "adamw"]}},
                     sampler={"kind": sampler, "seed": 0})
    runs = _asked(spec, 24)
    optimizers = [t.params["optimizer"] for _, t in runs]
    assert {"adam", "sgd", "adamw"} <= set(optimizers)
    for params, t in runs:
        if t.params["optimizer"] == "sgd":
            assert 0.5 <= t.params["momentum"] <= 0.99 and params["momentum"] == t.params["momentum"]
        else:
            assert "momentum" not in t.params and "momentum" not in params and "momentum" not in t.distributions
    # the service's importance (fANOVA, over the dimensions every trial has) no longer credits momentum
    study = optuna.create_study()
    study.add_trials([t for _, t in runs])
    importances = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    assert "momentum" not in importances and "optimizer" in importances


def test_sgd_without_a_momentum_dimension_trains_with_the_default(make_spec) -> None:
    spec = make_spec(search_space={"optimizer": {"value": "sgd"}})
    ((params, t),) = _asked(spec, 1)
    assert params["momentum"] == 0.9 and "momentum" not in t.params  # the training default, not a dimension


def test_suggestion_order_moves_only_the_optimizer_ahead_of_momentum(make_spec) -> None:
    from tuner.objective import _suggestion_order

    def order(space):  # type: ignore[no-untyped-def]
        return [n for n, _ in _suggestion_order(make_spec(search_space=space).effective_search_space())]

    core = ["lr", "dropout", "batch_size", "weight_decay"]
    assert order({"n_layers": {"value": 1}, "optimizer": {"choices": ["adam"]}}) == [*core, "n_layers", "optimizer"]
    assert order({"momentum": {"value": 0.9}, "n_layers": {"value": 1}, "optimizer": {"choices": ["sgd"]}}) == [
        *core, "optimizer", "momentum", "n_layers"]
    assert order({"optimizer": {"choices": ["sgd"]}, "momentum": {"value": 0.9}}) == [*core, "optimizer", "momentum"]


# ------------------------------------------------------------------ init as a search dimension (issue 19)
@pytest.mark.parametrize("validation", [{"kind": "holdout", "fraction": 0.25}, {"kind": "kfold", "k": 3}])
def test_init_dimension_reaches_every_model_built_and_the_saved_model(make_spec, tmp_path, monkeypatch,
                                                                     validation: dict) -> None:
    """Each trial's models (holdout, or every fold of the lockstep K-fold) are initialised with the trial's
    ``init``; so is the final model (holdout: re-trained or loaded; K-fold: the refit); the result and the
    saved model carry it in their params."""
    import tuner
    from tuner import models
    from tuner.runner import run

    seen: list[str] = []
    real = models.init_weights
    monkeypatch.setattr(models, "init_weights", lambda m, activation, init="auto": (seen.append(init),
                                                                                     real(m, activation, init))[1])
    spec = make_spec(search_space={"init": {"choices": ["he", "glorot", "torch"]}}, split={"validation": validation},
                     budget={"n_trials": 4, "max_epochs": 2, "timeout_s": 60}, sampler={"kind": "random", "seed": 3})
    url = f"sqlite:///{tmp_path}/i.db"
    result = run(spec, storage=url, artifacts_dir=tmp_path / "art", progress=False)
    trials = optuna.load_study(study_name=spec.name, storage=url).trials
    per_trial = 3 if validation["kind"] == "kfold" else 1
    inits = [t.params["init"] for t in trials]
    assert len(set(inits)) > 1 and set(inits) <= {"he", "glorot", "torch"}
    assert seen[: per_trial * len(trials)] == [i for i in inits for _ in range(per_trial)]
    best = result["best_trial"]["params"]["init"]
    assert seen[per_trial * len(trials):] in ([], [best])  # the K-fold refit / a holdout re-training
    loaded = tuner.load_model(result["model_path"])
    assert loaded.params["init"] == best and seen[-1] == best
