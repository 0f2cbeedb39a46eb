"""K-fold in lockstep: the same results in meaning as training the folds one after another."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState

from tuner.batched import StackedMLP, StackedOptimizer, can_batch
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


def _run_keeping_weights(spec, monkeypatch: pytest.MonkeyPatch, *, sequential: bool
                         ) -> tuple[optuna.trial.FrozenTrial, list[dict[str, torch.Tensor]]]:
    """:func:`_run` plus each fold's weights at the end (its best epoch's): the sequential path's models as
    ``train_on_fold`` returns them; the lockstep model's rows (it holds every fold's best weights)."""
    from tuner import batched
    from tuner import objective as objective_module

    kept: list = []
    with monkeypatch.context() as mp:
        if sequential:
            real = objective_module.train_on_fold

            def train_on_fold(*a, **k):  # type: ignore[no-untyped-def]
                model, result = real(*a, **k)
                kept.append(model)
                return model, result

            mp.setattr(objective_module, "train_on_fold", train_on_fold)
        else:
            class Recorded(StackedMLP):
                def __init__(self, models: list) -> None:
                    super().__init__(models)
                    kept.append((self, models[0]))

            mp.setattr(batched, "StackedMLP", Recorded)
        trial = _run(spec, sequential=sequential)
    if sequential:
        return trial, [m.state_dict() for m in kept]
    stacked, template = kept[0]
    return trial, [stacked.fold_state(k, template) for k in range(stacked.flat.shape[0])]


def _unequal_folds_csv(tmp_path) -> str:
    """95 rows: 19 test rows, then 3 folds whose training parts hold 50, 51 and 51 rows."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(95, 4))
    y = (X[:, 0] + 0.5 * X[:, 1] + rng.normal(scale=0.7, size=95) > 0).astype(int)
    frame = pd.DataFrame(X, columns=list("abcd"))
    frame["y"] = y
    frame.to_csv(tmp_path / "d.csv", index=False)
    return str(tmp_path / "d.csv")


@pytest.mark.parametrize(("optimizer", "decay_on"), [("adam", "weights"), ("adamw", "weights"), ("sgd", "weights"),
                                                     ("adamw", "all")])
def test_lockstep_equals_sequential_on_unequal_batch_counts(make_spec, tmp_path, monkeypatch: pytest.MonkeyPatch,
                                                           optimizer: str, decay_on: str) -> None:
    """Folds of 50 and 51 training rows, batch 10: the 50-row fold has no sixth batch in any epoch. It is
    not updated then and its step count does not advance (Adam's bias correction), so every fold's
    curves, best epoch and best weights equal training it alone (with torch's own optimiser), with weight
    decay on the weights only or on every parameter."""
    spec = make_spec(dataset={"builtin": None, "path": _unequal_folds_csv(tmp_path), "target": "y"},
                     weight_decay_on=decay_on,
                     split={"test_fraction": 0.2, "stratify": False, "validation": {"kind": "kfold", "k": 3}},
                     budget={"max_epochs": 12}, early_stopping={"patience": 12},
                     search_space={"lr": {"value": 0.01}, "batch_size": {"value": 10}, "dropout": {"value": 0.0},
                                   "weight_decay": {"value": 0.05}, "optimizer": {"value": optimizer},
                                   **({"momentum": {"value": 0.9}} if optimizer == "sgd" else {})})
    assert [len(f.X_train) for f in prepare_data(spec).folds] == [50, 51, 51]
    lock, lock_weights = _run_keeping_weights(spec, monkeypatch, sequential=False)
    seq, seq_weights = _run_keeping_weights(spec, monkeypatch, sequential=True)
    assert lock.state == seq.state == TrialState.COMPLETE
    assert lock.user_attrs["fold_best_epochs"] == seq.user_attrs["fold_best_epochs"]
    for key in ("train_curve", "val_curve"):
        for a, b in zip(lock.user_attrs[key], seq.user_attrs[key], strict=True):
            assert a == pytest.approx(b, rel=1e-5, abs=1e-6), key
    assert lock.user_attrs["fold_values"] == pytest.approx(seq.user_attrs["fold_values"], rel=1e-5, abs=1e-6)
    for a, b in zip(lock_weights, seq_weights, strict=True):
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


def test_lockstep_keeps_the_best_observed_epoch_under_min_delta(make_spec, monkeypatch: pytest.MonkeyPatch) -> None:
    """min_delta 0.2 (accuracy, maximised; scripted per fold): patience counts the epochs since the last
    improvement by more than 0.2, and each fold keeps the epoch of its best value observed, in lockstep as
    when the folds train one after another (same best epochs, values, metrics and weights)."""
    from tuner import batched, training

    spec = make_spec(split=KFOLD, objective="accuracy", budget={"max_epochs": 10},
                     early_stopping={"patience": 3, "min_delta": 0.2},
                     search_space={"lr": {"value": 0.03}, "batch_size": {"value": 16}, "dropout": {"value": 0.0}})
    scripts = [[0.1, 0.4, 0.5, 0.61, 0.7, 0.75, 0.79],  # real improvements at 2 and 4; stops at 7; best 7
               [0.5, 0.6, 0.65, 0.62],  # none after 1: stops at 4, best 3
               [0.3, 0.2, 0.1, 0.35]]  # none after 1: stops at 4, best 4
    lock_order = [v for epoch in range(7) for s in scripts if epoch < len(s) for v in [s[epoch]]]
    it = iter(lock_order)
    monkeypatch.setattr(batched, "epoch_value", lambda *a: next(it))
    lock, lock_weights = _run_keeping_weights(spec, monkeypatch, sequential=False)
    it_seq = iter([v for s in scripts for v in s])
    monkeypatch.setattr(training, "epoch_value", lambda *a, **k: next(it_seq))
    seq, seq_weights = _run_keeping_weights(spec, monkeypatch, sequential=True)
    for t in (lock, seq):
        assert t.user_attrs["val_curve"] == scripts
        assert t.user_attrs["fold_best_epochs"] == [7, 3, 4]
        assert t.user_attrs["fold_values"] == [0.79, 0.65, 0.35]
    for k, v in seq.user_attrs["val_metrics"].items():
        assert lock.user_attrs["val_metrics"][k] == pytest.approx(v, rel=1e-4, abs=1e-5)
    for a, b in zip(lock_weights, seq_weights, strict=True):
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("kind", "fused"), [("adam", True), ("adam", False), ("adamw", True), ("adamw", False),
                                           ("sgd", False)])
@pytest.mark.parametrize("decay_on", ["weights", "all"])
def test_stacked_optimizer_rows_follow_torchs_optimizer_alone(kind: str, fused: bool, decay_on: str) -> None:
    """Three members with their own lr, weight decay and momentum, some inactive on random steps (their
    gradient rows hold noise that must be ignored), member 1 dropped half-way: each row follows torch's
    optimiser on that member alone, stepped only when the member is active; the step counts say so. Adam
    and AdamW through torch's fused kernel over the rows and through the tensor formulas alike."""
    K, P, n_weights = 3, 12, 8
    g = torch.Generator().manual_seed(0)
    init = torch.randn(K, P, generator=g)
    lr, wd, momentum = [0.01, 0.05, 0.002], [0.1, 0.0, 0.5], [0.9, 0.5, 0.0]
    mask = (torch.arange(P) < n_weights).unsqueeze(0)  # the first 8 entries decay by default ("weights")
    flat = torch.nn.Parameter(init.clone())
    opt = StackedOptimizer(flat, kind, lr, wd, momentum if kind == "sgd" else 0.0,
                           decay_mask=None if decay_on == "all" else mask, fused=fused)
    assert opt.fused is fused
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[kind]
    singles = []
    for k in range(K):
        w, b = torch.nn.Parameter(init[k, :n_weights].clone()), torch.nn.Parameter(init[k, n_weights:].clone())
        extra = {"momentum": momentum[k]} if kind == "sgd" else {}
        groups = [{"params": [w], "weight_decay": wd[k]},
                  {"params": [b], "weight_decay": wd[k] if decay_on == "all" else 0.0}]
        singles.append(((w, b), cls(groups, lr=lr[k], **extra)))
    members = [0, 1, 2]  # the member at each stacked position
    counts = [0] * K
    for step in range(40):
        if step == 20:  # member 1 stops: dropped from the stack, the others go on as before
            flat = torch.nn.Parameter(flat.detach()[[0, 2]].clone())
            opt.select([0, 2], flat)
            members = [0, 2]
        grads = torch.randn(len(members), P, generator=g)
        active = (torch.rand(len(members), generator=g) > 0.3).tolist()
        flat.grad = grads.clone()
        opt.step(active)
        for j, k in enumerate(members):
            if active[j]:
                (w, b), single = singles[k]
                w.grad, b.grad = grads[j, :n_weights].clone(), grads[j, n_weights:].clone()
                single.step()
                counts[k] += 1
        for j, k in enumerate(members):
            (w, b), _ = singles[k]
            torch.testing.assert_close(flat.detach()[j], torch.cat([w.detach(), b.detach()]), rtol=1e-5, atol=1e-6)
    assert opt.steps.tolist() == [counts[k] for k in members]


@pytest.mark.parametrize("decay_on", ["weights", "all"])
def test_lockstep_weight_decay_spares_biases_unless_asked(make_spec, decay_on: str) -> None:
    """AdamW wd 0.5, lr 0.1, zero gradient, 10 steps on the lockstep model: its biases stay at 1.0 by
    default and shrink (0.95**10) with weight_decay_on "all"; the weights shrink either way."""
    from tuner.batched import lockstep_optimizer
    from tuner.training import TrainConfig

    spec = make_spec(weight_decay_on=decay_on)
    models = [build_model(spec.model, {"dropout": 0.0}, 4, 3) for _ in range(2)]
    stacked = StackedMLP(models)
    with torch.no_grad():
        stacked.flat.fill_(1.0)
    cfg = TrainConfig.from_params({"lr": 0.1, "batch_size": 8, "weight_decay": 0.5, "optimizer": "adamw"}, spec)
    opt = lockstep_optimizer(stacked, cfg)
    for _ in range(10):
        stacked.flat.grad = torch.zeros_like(stacked.flat)
        opt.step()
    expected = torch.tensor(0.95**10)
    for w in stacked.weights:
        torch.testing.assert_close(w.detach(), expected.expand_as(w))
    for b in stacked.biases:
        torch.testing.assert_close(b.detach(), (expected if decay_on == "all" else torch.tensor(1.0)).expand_as(b))


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
    real_step = batched.StackedOptimizer.step

    def run(values: list[float]) -> tuple[optuna.trial.FrozenTrial, list[int], list[list[torch.Tensor]]]:
        sizes: list[int] = []
        others: list[list[torch.Tensor]] = []  # folds 1 and 2: the last two stacked positions either way

        def step(self, *a, **k):  # type: ignore[no-untyped-def]
            sizes.append(self.param.shape[0])
            others.append([self.param.detach()[-2:].clone(), *(v[-2:].clone() for v in self.state.values())])
            return real_step(self, *a, **k)

        it = iter(values)  # epoch_value is called fold by fold over the folds still training
        monkeypatch.setattr(batched, "epoch_value", lambda *a: float(next(it)))
        monkeypatch.setattr(batched.StackedOptimizer, "step", step)
        return _run(spec, sequential=False), sizes, others

    stopped, sizes, paths = run([1.0, 2, 2, 0.5, 3, 3, 4, 4, 5, 5, 6, 6])
    assert stopped.user_attrs["fold_best_epochs"] == [1, 5, 5] and len(stopped.user_attrs["val_curve"][0]) == 2
    assert stopped.user_attrs["fold_values"] == [1.0, 6.0, 6.0]
    per_epoch = len(sizes) // 5
    assert per_epoch > 0 and sizes == [3] * (2 * per_epoch) + [2] * (3 * per_epoch)
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
    # one [K, P] parameter: the layers share its storage, and backward fills its gradient, twice in a row
    for _ in range(2):
        stacked.zero_grad()
        with torch.autograd.enforce_grad_layout_policy(False):
            stacked(X).square().sum().backward()
        assert sum(t.grad.numel() for t in (*stacked.weights, *stacked.biases)) == stacked.flat.grad.numel()
        for k, m in enumerate(models):
            m.zero_grad()
            m(X[k]).square().sum().backward()
            linears = [layer for layer in m.net if isinstance(layer, torch.nn.Linear)]
            for layer, w, b in zip(linears, stacked.weights, stacked.biases, strict=True):
                # the layers' gradients are views of flat.grad (what the optimiser reads)
                assert w.grad.untyped_storage().data_ptr() == stacked.flat.grad.untyped_storage().data_ptr()
                torch.testing.assert_close(w.grad[k], layer.weight.grad.t(), rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(b.grad[k, 0], layer.bias.grad, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        stacked.flat[1] += 1.0
    assert torch.equal(stacked.weights[0][1], models[1].net[0].weight.detach().t() + 1.0)


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
