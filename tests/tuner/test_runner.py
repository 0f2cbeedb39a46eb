"""Running a job: the test-once rule, test isolation, reproducibility, resume, finalisation and results."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest
from sklearn.datasets import load_iris

import tuner.runner as runner_mod
from tuner.data import prepare_data
from tuner.objective import Objective
from tuner.runner import build_result, finalize, open_study, optimize, run, trial_counts
from tuner.spec import SpecError, parse_spec


def _trials_signature(study: optuna.Study) -> list[tuple]:
    return [(t.number, t.state, t.params, t.value, t.intermediate_values, t.user_attrs.get("val_curve"))
            for t in study.trials]


def test_test_set_scored_exactly_once(make_spec, tmp_path: Path) -> None:
    spec = make_spec()
    data = prepare_data(spec)
    study = open_study(spec, None)
    optimize(study, Objective(spec, data, artifacts_dir=tmp_path), n_trials=3, timeout_s=None)
    assert data.test_access_count == 0
    metrics = finalize(study, spec, data, artifacts_dir=tmp_path)
    assert data.test_access_count == 1
    assert set(metrics) >= {"loss", "accuracy", "precision", "recall", "f1_macro", "roc_auc"}
    assert finalize(study, spec, data, artifacts_dir=tmp_path) == metrics  # same best trial: stored result
    assert data.test_access_count == 1
    assert study.user_attrs["test_metrics"] == metrics
    assert Path(study.user_attrs["model_path"]).is_file()
    assert study.user_attrs["best_trial_number"] == study.best_trial.number
    assert study.user_attrs["test_scored_trials"] == [study.best_trial.number]
    assert build_result(study)["test_scoring_count"] == 1


def test_corrupted_test_rows_leave_the_search_unchanged(tmp_path: Path) -> None:
    X, y = load_iris(return_X_y=True)
    frame = pd.DataFrame(X, columns=list("abcd")).assign(label=y, kind="x")
    path = tmp_path / "iris.csv"
    spec = parse_spec({
        "name": "iso", "dataset": {"path": str(path), "target": "label"}, "model": {"hidden": [8]},
        "split": {"stratify": False, "seed": 3}, "budget": {"n_trials": 3, "max_epochs": 4},
        "pruner": {"kind": "median", "n_startup_trials": 1}, "sampler": {"kind": "tpe", "seed": 2},
    })
    signatures = []
    for corrupt in (False, True):
        if corrupt:  # a class, a category and a token that no other row has; wild feature values
            test_rows = prepare_data(spec).splits.test
            frame = frame.astype({"a": object})
            frame.loc[test_rows, "label"] = 7
            frame.loc[test_rows, "kind"] = "never-seen"
            frame.loc[test_rows, ["b", "c", "d"]] *= 1000.0
            frame.loc[test_rows[0], "a"] = "?"
        frame.to_csv(path, index=False)
        data = prepare_data(spec)
        assert data.classes == [0, 1, 2] and data.n_features == 5
        study = open_study(spec, None)
        optimize(study, Objective(spec, data), n_trials=3, timeout_s=None)
        assert data.test_access_count == 0
        signatures.append(_trials_signature(study))
    assert signatures[0] == signatures[1]


def test_same_spec_and_seed_reproduce_params_and_values(make_spec) -> None:
    spec = make_spec(sampler={"kind": "tpe", "seed": 7}, pruner={"kind": "median", "n_startup_trials": 1},
                     search_space={"dropout": {"low": 0.0, "high": 0.3}})
    runs = []
    for _ in range(2):
        study = open_study(spec, None)
        optimize(study, Objective(spec, prepare_data(spec)), n_trials=3, timeout_s=None)
        runs.append(_trials_signature(study))
    assert runs[0] == runs[1]


def test_run_end_to_end_resume_and_result(make_spec, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'runs.db'}"
    spec = make_spec(budget={"n_trials": 2})
    result = run(spec, storage=storage, artifacts_dir=tmp_path / "art", progress=False, num_threads=1)
    assert result["status"] == "completed" and result["study_name"] == "tiny"
    assert set(result["best_trial"]) == {"number", "params", "value", "best_epoch"}
    assert result["counts"]["counted"] == 2 and result["model_path"].endswith("best-model.pt")
    bigger = make_spec(budget={"n_trials": 3})
    result = run(bigger, storage=storage, artifacts_dir=tmp_path / "art", progress=False, rescore_test=True)
    assert result["counts"]["complete"] == 3  # one more trial, not three
    result = run(bigger, storage=storage, artifacts_dir=tmp_path / "art", progress=False, rescore_test=True)
    assert result["counts"]["complete"] == 3
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert "spec" in study.user_attrs and "test_metrics" in study.user_attrs
    assert build_result(study)["status"] == "completed"
    with pytest.raises(SpecError, match="already exists with a different spec"):
        open_study(make_spec(objective="accuracy"), storage)


def test_keyboard_interrupt_keeps_finished_trials(make_spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class InterruptAtSecond(Objective):
        def __call__(self, trial):  # type: ignore[no-untyped-def]
            if trial.number == 1:
                raise KeyboardInterrupt
            return super().__call__(trial)

    monkeypatch.setattr(runner_mod, "Objective", InterruptAtSecond)
    storage = f"sqlite:///{tmp_path / 'runs.db'}"
    spec = make_spec(budget={"n_trials": 3})
    result = run(spec, storage=storage, artifacts_dir=tmp_path, progress=False)
    assert result["status"] == "interrupted" and result["test_metrics"] is None
    assert result["counts"]["complete"] == 1 and result["counts"]["counted"] == 1
    monkeypatch.setattr(runner_mod, "Objective", Objective)
    result = run(spec, storage=storage, artifacts_dir=tmp_path, progress=False)
    assert result["status"] == "completed" and result["counts"]["complete"] == 3


def test_kfold_refit_trains_on_all_non_test_rows_for_the_mean_best_epoch(
    make_spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(split={"validation": {"kind": "kfold", "k": 3}}, objective="f1_macro",
                     budget={"max_epochs": 9}, early_stopping={"patience": 9})
    data = prepare_data(spec)
    study = open_study(spec, None)
    study.add_trial(optuna.trial.create_trial(
        params={"lr": 0.01, "dropout": 0.0, "batch_size": 16, "weight_decay": 1e-5},
        distributions={
            "lr": optuna.distributions.FloatDistribution(1e-3, 3e-2, log=True),
            "dropout": optuna.distributions.FloatDistribution(0.0, 0.5),
            "batch_size": optuna.distributions.CategoricalDistribution([16, 32]),
            "weight_decay": optuna.distributions.FloatDistribution(1e-6, 1e-2, log=True),
        },
        value=0.9, user_attrs={"fold_best_epochs": [2, 3, 6], "best_epoch": 4},
    ))
    calls: list[dict] = []
    real = runner_mod.train_on_fold

    def spy(spec_, data_, fold, params, **kw):  # type: ignore[no-untyped-def]
        model, result = real(spec_, data_, fold, params, **kw)
        calls.append({"rows": len(fold.X_train), "val": fold.X_val, "max_epochs": kw.get("max_epochs"),
                      "epochs_run": result.epochs_run, "params": params})
        return model, result

    monkeypatch.setattr(runner_mod, "train_on_fold", spy)
    metrics = finalize(study, spec, data, artifacts_dir=tmp_path)
    (call,) = calls
    assert call["rows"] == len(data.dev_y) == 120 and call["val"] is None  # every non-test row, no validation
    assert call["max_epochs"] == 4 and call["epochs_run"] == 4  # round(mean(2, 3, 6)) epochs, all of them
    assert call["params"]["lr"] == 0.01
    assert study.user_attrs["best_epoch"] == 4 and data.test_access_count == 1 and 0 <= metrics["f1_macro"] <= 1


def test_regression_run_metrics(make_spec, tmp_path: Path) -> None:
    spec = make_spec(dataset={"builtin": "diabetes"}, split={"stratify": None}, objective="mae",
                     budget={"n_trials": 2, "max_epochs": 3})
    result = run(spec, artifacts_dir=tmp_path, progress=False)
    assert set(result["test_metrics"]) >= {"loss", "mse", "mae", "r2"}
    assert result["best_trial"]["value"] > 1.0  # MAE in the target's units, not standardised


def test_counts_and_no_result(make_spec, tmp_path: Path) -> None:
    spec = make_spec(search_space={"lr": {"value": 10.0}, "optimizer": {"value": "sgd"},
                                   "momentum": {"value": 0.99}, "batch_size": {"value": 4}},
                     dataset={"builtin": "diabetes"}, split={"stratify": None})
    result = run(spec, progress=False, artifacts_dir=tmp_path)
    assert result["status"] == "no_result" and result["best_trial"] is None
    assert result["counts"]["config_failed"] == 3


def test_trial_counts_read_every_outcome_back_from_storage(make_spec, tmp_path: Path) -> None:
    spec = make_spec(budget={"n_trials": 4, "max_epochs": 2})
    storage = f"sqlite:///{tmp_path / 'c.db'}"
    study = open_study(spec, storage)
    study.enqueue_trial({"lr": 1e-3})
    optimize(study, Objective(spec, prepare_data(spec)), n_trials=1, timeout_s=None)  # complete
    pruned = study.ask()
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    config = study.ask()
    study._storage.set_trial_system_attr(config._trial_id, "failure", "config")
    study.tell(config, state=optuna.trial.TrialState.FAIL)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)  # e.g. interrupted: not counted
    study.ask()  # still running
    study.enqueue_trial({"lr": 2e-3})
    counts = trial_counts(open_study(spec, storage))  # another process reading the same study
    assert counts.as_dict() == {"complete": 1, "pruned": 1, "failed": 1, "config_failed": 1, "running": 1,
                                "waiting": 1, "counted": 3}


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_cuda_device_run(make_spec, tmp_path: Path) -> None:
    spec = make_spec(split={"validation": {"kind": "kfold", "k": 2}})
    result = run(spec, artifacts_dir=tmp_path, progress=False, device="auto")
    assert result["status"] == "completed"
    spec = make_spec(name="gpu-holdout")
    result = run(spec, artifacts_dir=tmp_path, progress=False, device="cuda")
    assert result["status"] == "completed"


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_resume_fails_the_running_trials_of_dead_processes_only(make_spec, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """RUNNING trials whose process died (SIGKILL) end FAIL as interrupted when ``tuner run`` resumes and are
    replaced (n_trials stays exact); a live process's trials, another host's and a just-created one stay."""
    import socket
    import subprocess
    import sys
    import time

    from optuna.trial import TrialState

    from tuner.runner import _proc_stat, _process_start, fail_orphaned_trials, process_owner

    storage = f"sqlite:///{tmp_path / 'runs.db'}"
    spec = make_spec(budget={"n_trials": 3})
    study = open_study(spec, storage)
    host = socket.gethostname()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    zombie = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    zombie_started = _process_start(zombie.pid)
    zombie.kill()  # killed, not reaped: its pid still answers
    try:
        owners = {
            "dead": {"host": host, "pid": _dead_pid(), "started": None},
            "zombie": {"host": host, "pid": zombie.pid, "started": zombie_started},
            "reused": {"host": host, "pid": live.pid, "started": -1},  # the pid now names another process
            "live": {"host": host, "pid": live.pid, "started": _process_start(live.pid)},
            "self": process_owner(),  # this process: e.g. a second tuner run on the same study
            "other-host": {"host": host + "-elsewhere", "pid": _dead_pid(), "started": None},
        }
        trials = {}
        for name, owner in owners.items():
            t = study.ask()
            study._storage.set_trial_system_attr(t._trial_id, "owner", owner)
            trials[name] = t.number
        old_style = study.ask()  # only the Objective's user attr "worker" (host:pid)
        old_style.set_user_attr("worker", f"{host}:{_dead_pid()}")
        trials["old-style"] = old_style.number
        trials["just-created"] = study.ask().number  # its owner is about to be written: left alone
        for _ in range(50):  # until the kill has landed
            if _proc_stat(zombie.pid) is None or _proc_stat(zombie.pid)[0] in "ZX":
                break
            time.sleep(0.05)
        stale = ["dead", "zombie", "reused", "old-style"]
        assert sorted(fail_orphaned_trials(study)) == sorted(trials[name] for name in stale)
        assert fail_orphaned_trials(study) == []  # once
        by_number = {t.number: t for t in study.trials}
        for name in stale:
            t = by_number[trials[name]]
            assert t.state == TrialState.FAIL and t.system_attrs["interrupted"] is True
            assert t.system_attrs["failure"] == "interrupted" and t.user_attrs["fail_reason"].startswith("interrupted:")
        for name in ("live", "self", "other-host", "just-created"):
            assert by_number[trials[name]].state == TrialState.RUNNING
        counts = trial_counts(study)
        assert (counts.failed, counts.running, counts.counted) == (4, 4, 0)  # interrupted: not counted
    finally:
        for proc in (live, zombie):
            proc.kill()
            proc.wait()
    # the live process has ended now: a resume fails its trial too, and runs the whole budget
    capsys.readouterr()
    result = run(spec, storage=storage, artifacts_dir=tmp_path / "art", progress=False, num_threads=1)
    assert result["stale_trials_failed"] == [trials["live"]]
    assert "1 stale running trial(s) failed" in capsys.readouterr().err
    assert result["status"] == "completed" and result["counts"]["complete"] == 3 == result["counts"]["counted"]
    assert result["counts"]["failed"] == 5 and result["counts"]["running"] == 3  # this process, another host, new
    assert result["reproduce"]["exact"] is False  # trials of several processes


def test_run_result_says_how_to_reproduce_it(make_spec, tmp_path: Path) -> None:
    spec = make_spec(budget={"n_trials": 2})
    result = run(spec, storage=f"sqlite:///{tmp_path / 'a.db'}", artifacts_dir=tmp_path / "art", progress=False,
                 num_threads=1)
    rep = result["reproduce"]
    assert rep["exact"] is True, rep["why"]
    assert rep["command"] == ("tuner run spec.json --jobs 1 --threads 1 --device cpu "
                              "--storage sqlite:///reproduce.db --study-name tiny")
    assert result["stale_trials_failed"] == []
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'a.db'}")
    assert study.user_attrs["scored_with"] == {"device": "cpu", "torch_threads": 1}
    assert {t.system_attrs["torch_threads"] for t in study.trials} == {1}
    # a resume with a bigger budget re-seeds the sampler: not the search one fresh run makes
    resumed = run(make_spec(budget={"n_trials": 3}), storage=f"sqlite:///{tmp_path / 'a.db'}",
                  artifacts_dir=tmp_path / "art", progress=False, num_threads=1, rescore_test=True)
    assert resumed["reproduce"]["exact"] is False
    assert "the sampler was seeded 2 times" in resumed["reproduce"]["why"]


def test_reproduction_says_when_a_search_cannot_repeat_exactly(make_spec) -> None:
    from datetime import datetime, timedelta

    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from tuner.provenance import reproduction
    from tuner.runner import sampler_seed

    spec = make_spec(budget={"n_trials": 3})
    t0 = datetime(2026, 1, 1, 12)

    def trial(n: int, *, start: int, seconds: int = 1, worker: str = "h:1", device: str = "cpu", threads=2,
              seed: int | None = sampler_seed(1, None, 0), state=TrialState.COMPLETE, **system):
        t = create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None, params={"lr": 0.01},
                         distributions={"lr": FloatDistribution(1e-3, 1e-1, log=True)},
                         user_attrs={"worker": worker, "device": device},
                         system_attrs={**({"torch_threads": threads} if threads else {}),
                                       **({"sampler_seed": seed} if seed is not None else {}), **system})
        t.number, t.datetime_start = n, t0 + timedelta(seconds=start)
        t.datetime_complete = t.datetime_start + timedelta(seconds=seconds)
        return t

    scored = {"scored_with": {"device": "cpu", "torch_threads": 2}, "test_scoring_count": 1}
    good = [trial(0, start=0), trial(1, start=2), trial(2, start=4)]
    rep = reproduction(spec, good, scored, study_name="s")
    assert rep["exact"] is True and "--threads 2 --device cpu" in rep["command"]

    def why(trials, attrs=scored, **kw):
        out = reproduction(kw.pop("spec", spec), trials, attrs, study_name="s", **kw)
        assert out["exact"] is False
        return out["why"]

    assert "run by 2 workers/processes" in why([*good[:2], trial(2, start=4, worker="h:2")])
    assert "trials ran at the same time (#1 and #2)" in why([*good[:2], trial(2, start=2)])
    assert "seeded 2 times" in why([*good[:2], trial(2, start=4, seed=7)])
    assert "not the one a fresh run gets" in why([trial(n, start=2 * n, seed=7) for n in range(3)])
    assert "it ran on cuda" in why([*good[:2], trial(2, start=4, device="cuda")])
    gpu = reproduction(spec, [trial(n, start=2 * n, device="cuda") for n in range(3)], scored, study_name="s")
    assert "--device cuda" in gpu["command"]
    assert "different torch thread counts (1, 2)" in why([*good[:2], trial(2, start=4, threads=1)])
    assert "thread count was not recorded" in why([*good[:2], trial(2, start=4, threads=None)])
    assert "stopped after 2 of 3 trials" in why(good[:2])
    lost = trial(2, start=4, state=TrialState.FAIL, interrupted=True)
    assert "did not end on their own" in why([*good, lost])
    config = trial(3, start=6, state=TrialState.FAIL, failure="config")  # its own fault: counts, repeats
    assert reproduction(spec, [*good, config], scored, study_name="s")["exact"] is True
    assert "scored 2 times" in why(good, {**scored, "test_scoring_count": 2})
    assert "has no seed" in why(good, spec=make_spec(budget={"n_trials": 3}, sampler={"kind": "random", "seed": None}))
    assert "the job was cancelled" in why(good, not_finished="the job was cancelled")
