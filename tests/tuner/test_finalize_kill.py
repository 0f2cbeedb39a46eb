"""Test-once under a kill at every step of finalisation (issue 20): a process SIGKILLed while it records
the scoring, reads the test rows, writes the model file (``best-model.pt.tmp`` half-written) or stores each
result attribute; the next finalisation (another worker, a resumed ``tuner run``) completes the job with
exactly one scoring recorded, one whole model file and no temporary file left behind."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

SPEC = {"name": "kill", "dataset": {"builtin": "iris"}, "model": {"hidden": [8]},
        "budget": {"n_trials": 2, "max_epochs": 3}, "pruner": {"kind": "none"}, "sampler": {"kind": "random", "seed": 1}}

# Runs in a child: the search, then finalize with a SIGKILL at step K (an attribute write or the model's
# torch.save, which first writes part of the file).
CHILD = r"""
import json, os, signal, sys
from pathlib import Path
import optuna, torch
from tuner.spec import parse_spec
from tuner.data import prepare_data
from tuner.runner import open_study, finalize

spec = parse_spec(json.loads(sys.argv[1])); storage, artifacts, kill_at = sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
data = prepare_data(spec)
study = open_study(spec, storage)
steps = []
def step(name):
    steps.append(name)
    if len(steps) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
real_set = optuna.Study.set_user_attr
def set_user_attr(self, key, value):
    step("attr " + key)
    real_set(self, key, value)
optuna.Study.set_user_attr = set_user_attr
real_take = type(data).take_test
def take_test(self):
    step("take_test")
    return real_take(self)
type(data).take_test = take_test
real_save = torch.save
def save(obj, f, *a, **k):
    Path(f).write_bytes(b"half a model")  # as a kill in the middle of the write leaves it
    step("torch.save")
    return real_save(obj, f, *a, **k)
torch.save = save
finalize(study, spec, data, artifacts_dir=artifacts)
print(json.dumps(steps))
"""


def _child(tmp_path: Path, storage: str, kill_at: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CHILD, json.dumps(SPEC), storage, str(tmp_path / "art"), str(kill_at)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONHASHSEED": "0"},
                          check=False)


@pytest.mark.slow
def test_a_kill_at_every_step_of_finalisation_scores_once(tmp_path: Path) -> None:
    from tuner.data import prepare_data
    from tuner.objective import Objective
    from tuner.runner import finalize, open_study, optimize
    from tuner.spec import parse_spec

    spec = parse_spec(SPEC)
    data = prepare_data(spec)
    base = tmp_path / "base.db"
    optimize(open_study(spec, f"sqlite:///{base}"), Objective(spec, data), n_trials=2, timeout_s=None)
    with sqlite3.connect(base) as conn:  # WAL: everything into the main file, which is copied below
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    k, steps = 0, [""]
    while k < len(steps):
        k += 1
        db = tmp_path / f"k{k}.db"
        shutil.copy(base, db)
        killed = _child(tmp_path / f"k{k}", f"sqlite:///{db}", kill_at=k)
        if k == 1:
            assert killed.returncode == -9, killed.stderr[-2000:]
        if killed.returncode == 0:  # past the last step: the whole finalisation, and its list of steps
            steps = json.loads(killed.stdout.strip().splitlines()[-1])
            assert len(steps) == k - 1 and "take_test" in steps and "torch.save" in steps
            break
        assert killed.returncode == -9, (k, killed.stderr[-2000:])
        steps = [*steps, ""] if len(steps) <= k else steps  # keep going until a run is not killed
        study = optuna.load_study(study_name="kill", storage=f"sqlite:///{db}")  # the next worker finalises
        fresh = prepare_data(spec)
        metrics = finalize(study, spec, fresh, artifacts_dir=tmp_path / f"k{k}" / "art")
        study = optuna.load_study(study_name="kill", storage=f"sqlite:///{db}")
        attrs = study.user_attrs
        best = study.best_trial.number
        assert attrs["test_scoring_count"] == 1 and attrs["test_scored_trials"] == [best], (k, attrs)
        assert attrs["test_metrics"] == metrics and attrs["best_trial_number"] == best
        model = Path(attrs["model_path"])
        assert model.is_file() and model.stat().st_size > 1000, k  # whole, not the half-written bytes
        assert fresh.test_access_count <= 1
    assert k >= 7  # every step was killed once (2 records, the test rows, the model write, the results)
