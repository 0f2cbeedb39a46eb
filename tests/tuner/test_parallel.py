"""``run(..., jobs=N)``: exactly n_trials over all processes, the test set scored once, in the parent."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest

from tuner.data import PreparedData
from tuner.runner import open_study, run, trial_counts


@pytest.fixture
def test_access_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every ``take_test`` call, in any process, appends its pid to a file."""
    log = tmp_path / "take_test.log"
    real = PreparedData.take_test

    def take_test(self: PreparedData):  # type: ignore[no-untyped-def]
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return real(self)

    monkeypatch.setattr(PreparedData, "take_test", take_test)
    return log


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
def test_jobs_run_exactly_n_trials_and_score_the_test_set_once(
    make_spec, tmp_path: Path, test_access_log: Path, storage: str
) -> None:
    spec = make_spec(budget={"n_trials": 5, "max_epochs": 2}, pruner={"kind": "median", "n_startup_trials": 1})
    url = None if storage == "memory" else f"sqlite:///{tmp_path / 'jobs.db'}"
    result = run(spec, storage=url, artifacts_dir=tmp_path / "art", progress=False, jobs=3)
    assert result["status"] == "completed"
    assert result["counts"]["counted"] == 5 and result["counts"]["running"] == 0
    assert test_access_log.read_text().split() == [str(os.getpid())]  # once, in the parent
    assert result["test_metrics"] is not None
    if url is not None:
        study = open_study(spec, url)
        assert trial_counts(study).counted == 5
        workers = {t.user_attrs["worker"] for t in study.trials}
        assert str(os.getpid()) not in {w.rsplit(":", 1)[1] for w in workers}  # the parent only watched
        # resuming the finished job starts no trial and scores nothing again
        again = run(spec, storage=url, artifacts_dir=tmp_path / "art", progress=False, jobs=3)
        assert again["counts"] == result["counts"] and len(test_access_log.read_text().split()) == 1


def test_jobs_resume_only_the_missing_trials(make_spec, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    spec = make_spec(budget={"n_trials": 2, "max_epochs": 1})
    run(spec, storage=url, artifacts_dir=tmp_path, progress=False, jobs=2)
    more = spec.model_copy(update={"budget": spec.budget.model_copy(update={"n_trials": 4})})
    # a new best trial among the two new ones would be a second test scoring: allowed explicitly here
    result = run(more, storage=url, artifacts_dir=tmp_path, progress=False, jobs=2, rescore_test=True)
    assert result["counts"]["counted"] == 4
    assert result["test_scoring_count"] in (1, 2)
    assert len(optuna.load_study(study_name=spec.name, storage=url).trials) == 4


def test_one_remaining_trial_runs_in_this_process(make_spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--jobs N with a single trial left starts no search processes (nor the fork server): it runs here."""
    import tuner.parallel

    def no_processes(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("search_parallel started processes for one trial")

    monkeypatch.setattr(tuner.parallel, "search_parallel", no_processes)
    url = f"sqlite:///{tmp_path / 'one.db'}"
    spec = make_spec(budget={"n_trials": 1, "max_epochs": 1})
    result = run(spec, storage=url, artifacts_dir=tmp_path, progress=False, jobs=4)
    assert result["status"] == "completed" and result["counts"]["counted"] == 1
    (trial,) = optuna.load_study(study_name=spec.name, storage=url).trials
    assert trial.user_attrs["worker"].rsplit(":", 1)[1] == str(os.getpid())  # trained in this process
    # with two trials left the processes are used (the same patch now fails the run)
    more = spec.model_copy(update={"budget": spec.budget.model_copy(update={"n_trials": 3})})
    with pytest.raises(AssertionError, match="started processes"):
        run(more, storage=url, artifacts_dir=tmp_path, progress=False, jobs=4, rescore_test=True)


def test_fork_server_warm_up_leaves_no_thread_or_file_behind(tmp_path, monkeypatch) -> None:
    """tuner._warmup runs in the fork server before it forks the search processes: it must not leave a
    thread (a forked child would inherit a lock it holds) or a temporary file behind."""
    import tempfile
    import threading

    from tuner import _warmup

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = threading.active_count()
    _warmup.warm_up()
    assert threading.active_count() == before
    assert list(tmp_path.iterdir()) == []


def test_in_memory_sqlite_urls_keep_their_tables(make_spec) -> None:
    """The WAL pragmas reconnect a file database; an in-memory one (plain or URI form) is left alone."""
    from tuner.runner import open_study

    for url in ("sqlite://", "sqlite:///:memory:", "sqlite:///file:tunermem?mode=memory&cache=shared&uri=true"):
        study = open_study(make_spec(name="mem"), url)
        assert study.study_name == "mem" and study.trials == []
