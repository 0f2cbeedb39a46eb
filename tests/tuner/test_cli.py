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
