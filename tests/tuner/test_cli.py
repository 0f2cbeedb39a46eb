"""``tuner run``: each example end to end on a tiny budget, bad specs, resume and Ctrl-C."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import tuner.runner as runner_mod
from tuner.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.*"))


def _tiny_copy(example: Path, tmp_path: Path, n_trials: int = 2, max_epochs: int = 2) -> Path:
    """The example with its budget cut down, written in the same format."""
    text = example.read_text()
    is_yaml = example.suffix in (".yaml", ".yml")
    data = yaml.safe_load(text) if is_yaml else json.loads(text)
    data["budget"] = {"n_trials": n_trials, "max_epochs": max_epochs, "timeout_s": 120}
    out = tmp_path / example.name
    out.write_text(yaml.safe_dump(data) if is_yaml else json.dumps(data))
    return out


def _check_result(result: dict) -> None:
    assert result["status"] == "completed"
    best = result["best_trial"]
    assert isinstance(best["number"], int) and best["params"] and isinstance(best["value"], float)
    assert result["test_metrics"] and "loss" in result["test_metrics"]
    assert Path(result["model_path"]).is_file()


def test_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"digits-mlp.json", "digits-cnn.json", "breast-cancer-kfold.yaml", "diabetes-regression.json"} <= names


@pytest.mark.parametrize("example", [p for p in EXAMPLES if p.name != "digits-mlp.json"], ids=lambda p: p.name)
def test_example_runs_in_process(example: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _tiny_copy(example, tmp_path)
    code = main(["run", str(spec), "--storage", f"sqlite:///{tmp_path / 'r.db'}", "--artifacts",
                 str(tmp_path / "art"), "--quiet", "--threads", "2"])
    out = capsys.readouterr().out
    assert code == 0
    _check_result(json.loads(out))


def test_digits_mlp_via_python_m_with_progress_and_resume(tmp_path: Path) -> None:
    spec = _tiny_copy(ROOT / "examples" / "digits-mlp.json", tmp_path)
    cmd = [sys.executable, "-m", "tuner", "run", str(spec), "--storage", f"sqlite:///{tmp_path / 'r.db'}",
           "--artifacts", str(tmp_path / "art"), "--threads", "2", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # exactly one JSON document on stdout
    _check_result(result)
    assert "2/2" in proc.stderr  # the progress bar
    assert result["counts"]["counted"] == 2
    again = subprocess.run([*cmd, "--quiet"], capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False)
    assert again.returncode == 0 and again.stderr == ""
    assert json.loads(again.stdout)["counts"] == result["counts"]  # nothing left to run


def test_bad_spec_exits_2_with_field_reasons(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "b", "dataset": {"builtin": "iris"},
                               "split": {"validation": {"kind": "kfold", "k": 1}},
                               "search_space": {"lr": {"low": -1, "high": 1, "log": True}}}))
    assert main(["run", str(bad), "--storage", f"sqlite:///{tmp_path / 'r.db'}"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "split.validation.k: must be at least 2" in err
    assert "search_space.lr.low: must be > 0 on a log scale" in err
    assert not (tmp_path / "r.db").exists()  # failed before opening the storage
    missing = tmp_path / "m.json"
    missing.write_text(json.dumps({"name": "m", "dataset": {"path": str(tmp_path / "none.csv"), "target": "y"}}))
    assert main(["run", str(missing), "--storage", f"sqlite:///{tmp_path / 'r.db'}"]) == 2
    assert capsys.readouterr().err.startswith("dataset.path: no such file")


def test_ctrl_c_prints_interrupted_and_exits_130(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(runner_mod, "optimize", interrupted)
    spec = _tiny_copy(ROOT / "examples" / "digits-mlp.json", tmp_path)
    code = main(["run", str(spec), "--storage", f"sqlite:///{tmp_path / 'r.db'}", "--quiet", "--jobs", "1"])
    assert code == 130
    assert json.loads(capsys.readouterr().out)["status"] == "interrupted"


def test_parser_is_extensible() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    sub.add_parser("serve")  # the service adds its own subcommands
    args = parser.parse_args(["run", "x.json", "--threads", "3"])
    assert args.threads == 3 and args.storage == "sqlite:///runs.db" and args.artifacts == Path("artifacts")


def test_resume_after_sigkill_fails_the_killed_trial_and_runs_the_exact_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``tuner run`` killed with SIGKILL mid-trial leaves it RUNNING; the resume fails it (interrupted: it does
    not use up the budget), says so on stderr and in the result, and ends with n_trials counted, none running."""
    import os
    import signal
    import time

    import optuna
    from optuna.trial import TrialState

    from tuner.runner import fail_orphaned_trials

    spec = tmp_path / "slow.json"
    spec.write_text(json.dumps({
        "name": "slow", "dataset": {"builtin": "iris"}, "model": {"hidden": [16]},
        "search_space": {"lr": {"low": 1e-3, "high": 1e-2, "log": True}, "batch_size": {"choices": [4]}},
        "budget": {"n_trials": 2, "max_epochs": 40}, "early_stopping": {"patience": 1000},
        "pruner": {"kind": "none"}, "sampler": {"kind": "random", "seed": 3},
    }))
    storage = f"sqlite:///{tmp_path / 'r.db'}"
    args = ["run", str(spec), "--storage", storage, "--artifacts", str(tmp_path / "art"), "--jobs", "1",
            "--threads", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "tuner", *args, "--quiet"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        running = None
        while running is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            try:
                study = optuna.load_study(study_name="slow", storage=storage)
            except KeyError:
                continue
            trials = study.get_trials(deepcopy=False)
            if any(t.state == TrialState.COMPLETE for t in trials):
                running = next((t for t in trials if t.state == TrialState.RUNNING and "owner" in t.system_attrs),
                               None)
        assert running is not None, proc.stderr.read().decode() if proc.poll() is not None else "no trial started"
        assert running.system_attrs["owner"]["pid"] == proc.pid
        assert fail_orphaned_trials(study) == []  # its process is alive: a second tuner run leaves it alone
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert study._storage.get_trial(running._trial_id).state == TrialState.RUNNING  # left behind by the kill
    capsys.readouterr()
    assert main([*args, "--quiet"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["stale_trials_failed"] == [running.number]
    assert f"1 stale running trial(s) failed (#{running.number})" in captured.err
    counts = result["counts"]
    assert counts["running"] == 0 and counts["failed"] == 1
    assert counts["counted"] == counts["complete"] == 2  # the killed trial was replaced, not counted
    t = study._storage.get_trial(running._trial_id)
    assert t.state == TrialState.FAIL and t.system_attrs["interrupted"] is True
    assert t.system_attrs["failure"] == "interrupted"
    assert result["reproduce"]["exact"] is False  # a resumed search: not the one a fresh run makes
    assert result["reproduce"]["argv"][2] == str(spec)


def test_device_cuda_without_cuda_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna
    import torch

    from tuner.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as with the pinned CPU build
    spec = {"name": "cuda", "dataset": {"builtin": "iris"}, "budget": {"n_trials": 1, "max_epochs": 1}}
    (tmp_path / "s.json").write_text(json.dumps(spec))
    db = tmp_path / "c.db"
    code = main(["run", str(tmp_path / "s.json"), "--device", "cuda", "--storage", f"sqlite:///{db}", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("--device cuda: no CUDA device is available") and "\n" not in err
    assert not db.exists() or not optuna.get_all_study_summaries(f"sqlite:///{db}")  # nothing started, no trial left
