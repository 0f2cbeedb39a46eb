"""K-fold in lockstep: the same results in meaning as training the folds one after another."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState

from tuner.batched import StackedMLP, can_batch
from tuner.data import prepare_data
from tuner.models import build_model
from tuner.objective import Objective
from tuner.runner import open_study, optimize

KFOLD = {"validation": {"kind": "kfold", "k": 3}}


def _run(spec, *, sequential: bool) -> optuna.trial.FrozenTrial:
    study = open_study(spec, None)
    objective = Objective(spec, prepare_data(spec))
    if sequential:
        objective._kfold = objective._kfold_sequential  # type: ignore[method-assign]
    optimize(study, objective, n_trials=1, timeout_s=None)
    return study.trials[0]


@pytest.mark.parametrize("objective", ["val_loss", "accuracy"])
def test_lockstep_equals_sequential_without_dropout(make_spec, objective: str) -> None:
    spec = make_spec(split=KFOLD, objective=objective, budget={"max_epochs": 8}, early_stopping={"patience": 2},
                     search_space={"lr": {"value": 0.03}, "batch_size": {"value": 16}, "dropout": {"value": 0.0}})
    assert can_batch(spec)
    lock, seq = _run(spec, sequential=False), _run(spec, sequential=True)
    assert lock.state == seq.state == TrialState.COMPLETE
    # same initial weights and shuffles per fold: the same run up to float rounding of bmm vs addmm
    assert lock.user_attrs["fold_best_epochs"] == seq.user_attrs["fold_best_epochs"]
    assert lock.user_attrs["fold_values"] == pytest.approx(seq.user_attrs["fold_values"], rel=1e-4, abs=1e-5)
    assert [len(c) for c in lock.user_attrs["val_curve"]] == [len(c) for c in seq.user_attrs["val_curve"]]
    assert lock.value == pytest.approx(seq.value, rel=1e-4, abs=1e-5)
    for k, v in seq.user_attrs["val_metrics"].items():
        assert lock.user_attrs["val_metrics"][k] == pytest.approx(v, rel=1e-4, abs=1e-5)


def test_lockstep_with_dropout_is_close_to_sequential(make_spec) -> None:
    spec = make_spec(split=KFOLD, budget={"max_epochs": 6}, early_stopping={"patience": 6},
                     search_space={"lr": {"value": 0.02}, "batch_size": {"value": 16}, "dropout": {"value": 0.2}})
    lock, seq = _run(spec, sequential=False), _run(spec, sequential=True)
    assert len(lock.user_attrs["fold_values"]) == len(seq.user_attrs["fold_values"]) == 3
    assert np.abs(np.subtract(lock.user_attrs["fold_best_epochs"], seq.user_attrs["fold_best_epochs"])).max() <= 3
    assert lock.value == pytest.approx(seq.value, rel=0.25)


def test_a_stopped_fold_leaves_the_others_training_exactly_as_before(make_spec, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fold 0 gets worse at epoch 2 and stops (patience 1): from then on the stacked model holds only the
    two folds still training, and their weights follow exactly the path they follow when fold 0 trains on
    (the optimiser's moments moved with them; weight decay and momentum never touch the stopped fold)."""
    from tuner import batched

    spec = make_spec(split=KFOLD, budget={"max_epochs": 5}, early_stopping={"patience": 1},
                     search_space={"lr": {"value": 0.01}, "batch_size": {"value": 16}, "weight_decay": {"value": 0.1},
                                   "dropout": {"value": 0.0}}, objective="accuracy")
    real_step = torch.optim.Adam.step

    def run(values: list[float]) -> tuple[optuna.trial.FrozenTrial, list[int], list[list[torch.Tensor]]]:
        sizes: list[int] = []
        others: list[list[torch.Tensor]] = []  # folds 1 and 2: the last two stacked positions either way

        def step(self, *a, **k):  # type: ignore[no-untyped-def]
            params = [p for g in self.param_groups for p in g["params"]]
            sizes.append(params[0].shape[0])
            others.append([p.detach()[-2:].clone() for p in params])
            return real_step(self, *a, **k)

        it = iter(values)  # epoch_value is called fold by fold over the folds still training
        monkeypatch.setattr(batched, "epoch_value", lambda *a: float(next(it)))
        monkeypatch.setattr(torch.optim.Adam, "step", step)
        return _run(spec, sequential=False), sizes, others

    stopped, sizes, paths = run([1.0, 2, 2, 0.5, 3, 3, 4, 4, 5, 5, 6, 6])
    assert stopped.user_attrs["fold_best_epochs"] == [1, 5, 5] and len(stopped.user_attrs["val_curve"][0]) == 2
    assert stopped.user_attrs["fold_values"] == [1.0, 6.0, 6.0]
    per_epoch = len(sizes) // 5
    assert sizes == [3] * (2 * per_epoch) + [2] * (3 * per_epoch)
    trained, full_sizes, full_paths = run([1.0, 2, 2, 1.5, 3, 3, 2, 4, 4, 2.5, 5, 5, 3, 6, 6])
    assert trained.user_attrs["fold_best_epochs"] == [5, 5, 5] and full_sizes == [3] * len(sizes)
    for a, b in zip(paths, full_paths, strict=True):
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("objective", ["val_loss", "roc_auc"])
def test_lockstep_equals_sequential_when_folds_stop_at_different_epochs(make_spec, objective: str) -> None:
    """Real early stopping at different epochs per fold (the stopped folds are dropped from the batch):
    still the sequential path's results."""
    spec = make_spec(dataset={"builtin": "breast_cancer"}, split={"validation": {"kind": "kfold", "k": 4}},
                     objective=objective, budget={"max_epochs": 25}, early_stopping={"patience": 2},
                     search_space={"lr": {"value": 0.05}, "batch_size": {"value": 32}, "dropout": {"value": 0.0}})
    lock, seq = _run(spec, sequential=False), _run(spec, sequential=True)
    lengths = [len(c) for c in lock.user_attrs["val_curve"]]
    assert len(set(lengths)) > 1 and max(lengths) < 25  # folds stopped, and not all at once
    assert lengths == [len(c) for c in seq.user_attrs["val_curve"]]
    assert lock.user_attrs["fold_best_epochs"] == seq.user_attrs["fold_best_epochs"]
    assert lock.user_attrs["fold_values"] == pytest.approx(seq.user_attrs["fold_values"], rel=1e-4, abs=1e-5)
    for k, v in seq.user_attrs["val_metrics"].items():
        assert lock.user_attrs["val_metrics"][k] == pytest.approx(v, rel=1e-4, abs=1e-5)


def test_stacked_mlp_matches_the_separate_models(make_spec) -> None:
    spec = make_spec(search_space={"dropout": {"value": 0.0}})
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(build_model(spec.model, {"dropout": 0.0}, 4, 3))
    stacked = StackedMLP(models).eval()
    X = torch.randn(3, 10, 4)
    out = stacked(X)
    for k, m in enumerate(models):
        assert torch.allclose(out[k], m.eval()(X[k]), atol=1e-6)
        m.load_state_dict(stacked.fold_state(k, m))


def test_cnn_and_wilcoxon_fall_back_to_the_sequential_path(make_spec) -> None:
    assert not can_batch(make_spec(dataset={"builtin": "digits"}, model={"kind": "cnn", "channels": [2]}))
    assert not can_batch(make_spec(split=KFOLD, pruner={"kind": "wilcoxon"}))


def test_kfold_pruning_acts_at_epoch_granularity(make_spec) -> None:
    spec = make_spec(split=KFOLD, budget={"max_epochs": 6}, pruner={"kind": "none"})
    study = open_study(spec, None)
    study.pruner = optuna.pruners.ThresholdPruner(upper=-1e9)
    optimize(study, Objective(spec, prepare_data(spec)), n_trials=1, timeout_s=None)
    t = study.trials[0]
    assert t.state == TrialState.PRUNED and list(t.intermediate_values) == [1]
    assert all(len(c) == 1 for c in t.user_attrs["val_curve"])


def test_diverging_lockstep_trial_is_a_config_failure(make_spec) -> None:
    spec = make_spec(
        dataset={"builtin": "diabetes"}, split={"stratify": None, **KFOLD},
        search_space={"lr": {"value": 10.0}, "optimizer": {"value": "sgd"}, "momentum": {"value": 0.99},
                      "batch_size": {"value": 8}},
    )
    t = _run(spec, sequential=False)
    assert t.state == TrialState.FAIL and t.system_attrs["failure"] == "config"
    assert "loss is" in t.user_attrs["fail_reason"]


def test_kfold_folds_of_different_one_hot_widths_run_sequentially(make_spec, tmp_path) -> None:
    # a category that only two rows have: the fold whose training part lacks both has a narrower one-hot
    rng = np.random.default_rng(0)
    n = 60
    colour = np.array(["red", "blue"] * (n // 2), dtype=object)
    colour[:2] = "rare"
    x = rng.normal(size=n)
    pd.DataFrame({"x": x, "colour": colour, "y": (x > 0).astype(int)}).to_csv(tmp_path / "d.csv", index=False)
    spec = make_spec(dataset={"builtin": None, "path": str(tmp_path / "d.csv"), "target": "y"},
                     split={"test_fraction": 0.2, "stratify": False,
                            "validation": {"kind": "kfold", "k": 3}}, budget={"max_epochs": 2})
    data = prepare_data(spec)
    assert len({f.n_features for f in data.folds}) > 1
    assert can_batch(spec) and not can_batch(spec, None, data)
    study = open_study(spec, None)
    optimize(study, Objective(spec, data), n_trials=1, timeout_s=None)
    assert study.trials[0].state == TrialState.COMPLETE


def test_regression_lockstep_losses_are_in_target_units(make_spec) -> None:
    spec = make_spec(dataset={"builtin": "diabetes"}, split=KFOLD, objective="val_loss",
                     budget={"max_epochs": 3}, early_stopping={"patience": 2},
                     search_space={"lr": {"value": 0.03}, "batch_size": {"value": 64}, "dropout": {"value": 0.0}})
    assert can_batch(spec)
    lock, seq = _run(spec, sequential=False), _run(spec, sequential=True)
    assert lock.value == pytest.approx(seq.value, rel=1e-3)
    assert lock.value > 100  # MSE of diabetes progression (std ~77) in its own units, not standardised


def test_a_fold_with_an_empty_last_batch_keeps_its_momentum(make_spec) -> None:
    """7 folds of 120 rows: training parts of 102 and 103 rows; with batch 34 the 102-row folds have no
    fourth batch while the others do. Their skipped step must leave weights *and* SGD momentum (with weight
    decay, which would move both) as they were: the lockstep run equals the sequential one."""
    spec = make_spec(split={"validation": {"kind": "kfold", "k": 7}}, budget={"max_epochs": 4},
                     early_stopping={"patience": 10},
                     search_space={"lr": {"value": 0.05}, "batch_size": {"value": 34}, "dropout": {"value": 0.0},
                                   "optimizer": {"value": "sgd"}, "momentum": {"value": 0.9},
                                   "weight_decay": {"value": 0.01}})
    data = prepare_data(spec)
    sizes = sorted({len(f.X_train) for f in data.folds})
    assert sizes == [102, 103]
    lock, seq = _run(spec, sequential=False), _run(spec, sequential=True)
    assert lock.user_attrs["fold_values"] == pytest.approx(seq.user_attrs["fold_values"], rel=1e-5, abs=1e-6)
    for a, b in zip(lock.user_attrs["train_curve"], seq.user_attrs["train_curve"], strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
