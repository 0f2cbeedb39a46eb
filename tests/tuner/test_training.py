"""The training loop: early stopping keeps the best epoch's weights; failures and stops are raised."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tuner.errors import StopRequested, TrialConfigError
from tuner.training import TrainConfig, evaluate, fit, predict_outputs


def _data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 4, generator=g)
    return X, (X[:, 0] > 0).long()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2))


def _scripted(values: list[float], key: str = "loss"):
    """A validation 'metric' that returns scripted values, epoch after epoch."""
    it = iter(values)
    return lambda outputs, loss: {key: next(it)}


def _scripted_loss(monkeypatch: pytest.MonkeyPatch, values: list[float]) -> None:
    """Script the per-epoch validation objective (whatever it is), epoch after epoch."""
    from tuner import training

    it = iter(values)
    monkeypatch.setattr(training, "epoch_value", lambda *a, **k: next(it))


def test_early_stopping_restores_best_epoch_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def on_epoch(epoch: int, value: float) -> None:
        snapshots[epoch] = {k: v.clone() for k, v in model.state_dict().items()}

    values = [5.0, 4.0, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0]
    cfg = TrainConfig(lr=0.05, batch_size=16, max_epochs=10, patience=3)
    _scripted_loss(monkeypatch, values)
    result = fit(model, _data(), _data(seed=1), cfg, task="classification",
                 val_metrics_fn=_scripted(values), on_epoch=on_epoch)
    assert result.best_epoch == 3 and result.best_value == 3.0
    assert result.epochs_run == 6 and result.val_curve == values[:6]
    assert len(result.train_curve) == 6
    final = model.state_dict()
    for k, v in snapshots[3].items():
        assert torch.equal(final[k], v)
    assert not torch.equal(final["0.weight"], snapshots[6]["0.weight"])
    assert not model.training


def test_min_delta_and_maximize_direction(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = TrainConfig(lr=0.01, batch_size=16, max_epochs=10, patience=2, min_delta=0.05)
    _scripted_loss(monkeypatch, [1.0, 0.98, 0.97, 0.9])
    result = fit(_model(), _data(), _data(seed=1), cfg, task="classification",
                 val_metrics_fn=_scripted([1.0, 0.98, 0.97, 0.9]))
    # no improvement by more than 0.05 after epoch 1: stopped after two more; the best observed is kept
    assert result.epochs_run == 3 and result.best_epoch == 3 and result.best_value == 0.97
    monkeypatch.undo()
    cfg = TrainConfig(lr=0.01, batch_size=16, max_epochs=5, patience=2, objective="accuracy", direction="maximize")
    _scripted_loss(monkeypatch, [0.5, 0.7, 0.6, 0.65, 0.9])
    result = fit(_model(), _data(), _data(seed=1), cfg, task="classification")
    assert result.best_epoch == 2 and result.best_value == 0.7 and result.epochs_run == 4


def test_full_metrics_are_computed_once_from_the_best_epochs_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    kept: dict[int, np.ndarray] = {}

    def on_epoch(epoch: int, value: float) -> None:
        kept[epoch] = evaluate(model, *_data(seed=1), "classification")[1]

    calls: list[tuple[np.ndarray, float]] = []

    def metrics(outputs: np.ndarray, loss: float) -> dict[str, float]:
        calls.append((outputs, loss))
        return {"loss": loss, "accuracy": 0.5}

    _scripted_loss(monkeypatch, [3.0, 2.0, 2.5, 1.0, 1.5, 1.6])
    cfg = TrainConfig(lr=0.01, batch_size=16, max_epochs=6, patience=5)
    result = fit(model, _data(), _data(seed=1), cfg, task="classification", val_metrics_fn=metrics, on_epoch=on_epoch)
    assert len(calls) == 1 and np.allclose(calls[0][0], kept[4])
    assert result.best_epoch == 4 and result.val_curve == [3.0, 2.0, 2.5, 1.0, 1.5, 1.6]
    assert result.val_metrics is not None and result.val_metrics["accuracy"] == 0.5


def test_real_training_learns_and_without_validation_runs_all_epochs() -> None:
    model = _model()
    cfg = TrainConfig(lr=0.05, batch_size=16, max_epochs=15, patience=15)
    result = fit(model, _data(256), _data(128, seed=1), cfg, task="classification")
    assert result.val_metrics is not None and result.val_metrics["accuracy"] > 0.85
    assert result.train_curve[-1] < result.train_curve[0]
    result = fit(_model(), _data(), None, TrainConfig(lr=0.01, batch_size=8, max_epochs=4), task="classification")
    assert result.epochs_run == 4 and result.best_epoch == 4 and result.val_curve == []


def test_evaluation_is_deterministic_in_eval_mode() -> None:
    model = _model()
    X, y = _data()
    a = predict_outputs(model, X, batch=10)
    b = predict_outputs(model, X)
    assert torch.allclose(a, b) and not model.training
    loss, proba = evaluate(model, X, y, "classification")
    assert proba.shape == (64, 2) and np.allclose(proba.sum(1), 1, atol=1e-5) and loss > 0


def test_diverging_loss_raises_config_error() -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 4, generator=g) * 10
    y = X.sum(1) * 100
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    cfg = TrainConfig(lr=10.0, batch_size=8, max_epochs=20, optimizer="sgd", momentum=0.9)
    with pytest.raises(TrialConfigError, match="loss is"):
        fit(model, (X, y), None, cfg, task="regression")


def test_should_stop_is_checked_at_epoch_boundaries() -> None:
    calls: list[int] = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(StopRequested):
        fit(_model(), _data(), _data(seed=1), TrainConfig(lr=0.01, batch_size=16, max_epochs=10, patience=10),
            task="classification", should_stop=should_stop)
    assert len(calls) == 3


@pytest.mark.parametrize("n_classes", [2, 4])
def test_torch_epoch_metrics_equal_scikit_learn(n_classes: int) -> None:
    from tuner.metrics import compute_metrics
    from tuner.training import epoch_value

    g = torch.Generator().manual_seed(n_classes)
    y = torch.randint(0, n_classes, (97,), generator=g)
    out = torch.randn(97, n_classes, generator=g).round(decimals=1)  # coarse logits: many tied scores
    out[:, 0] += (y == 0) * 1.0
    loss = nn.functional.cross_entropy(out, y)
    proba = torch.softmax(out, 1).numpy()
    ref = compute_metrics("classification", y.numpy(), proba, float(loss))
    for objective in ("accuracy", "f1_macro", "roc_auc"):
        assert epoch_value(objective, "classification", out, y, loss) == pytest.approx(ref[objective], abs=1e-6)
    assert epoch_value("val_loss", "classification", out, y, loss) == pytest.approx(ref["loss"])


def test_torch_regression_metrics_are_in_the_targets_units() -> None:
    from tuner.metrics import compute_metrics
    from tuner.training import epoch_value

    g = torch.Generator().manual_seed(0)
    y = torch.randn(50, generator=g)
    out = (y + 0.3 * torch.randn(50, generator=g)).reshape(-1, 1)
    scale, mean = 7.5, 100.0
    ref = compute_metrics("regression", (y * scale + mean).double().numpy(), (out.reshape(-1) * scale + mean).double().numpy(), 0.0)
    for objective in ("mse", "mae", "r2"):
        value = epoch_value(objective, "regression", out, y, torch.tensor(0.0), scale)
        assert value == pytest.approx(ref[objective], rel=1e-5)


@pytest.mark.parametrize("objective", ["accuracy", "roc_auc", "f1_macro"])
def test_best_epochs_torch_value_equals_the_scikit_learn_metric(objective: str) -> None:
    cfg = TrainConfig(lr=0.05, batch_size=16, max_epochs=6, patience=6, objective=objective, direction="maximize")
    result = fit(_model(), _data(256), _data(97, seed=1), cfg, task="classification")
    assert result.val_metrics is not None
    assert result.best_value == pytest.approx(result.val_metrics[objective], abs=1e-6)
    assert result.val_curve[result.best_epoch - 1] == result.best_value


def test_nan_validation_loss_fails_whatever_the_objective(monkeypatch: pytest.MonkeyPatch) -> None:
    from tuner import training

    real = training.predict_outputs
    monkeypatch.setattr(training, "predict_outputs", lambda m, X, *a: real(m, X, *a) * float("nan"))
    cfg = TrainConfig(lr=0.01, batch_size=16, max_epochs=3, objective="accuracy", direction="maximize")
    with pytest.raises(TrialConfigError, match="validation loss is nan"):
        fit(_model(), _data(), _data(seed=1), cfg, task="classification")


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_optimizer_is_fused_and_steps_like_the_multi_tensor_one(name: str) -> None:
    from tuner.training import TrainConfig, make_optimizer

    cfg = TrainConfig(lr=0.01, batch_size=8, weight_decay=1e-3, optimizer=name, momentum=0.9)
    X, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    finals = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        opt = make_optimizer(model, cfg)
        assert opt.defaults["fused"] is True
        if not fused:  # the same optimiser (same parameter groups) with the multi-tensor kernels
            defaults = {k: v for k, v in opt.defaults.items() if k != "decoupled_weight_decay" or name != "adamw"}
            groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in opt.param_groups]
            opt = type(opt)(groups, **{**defaults, "fused": None, "foreach": True})
        for _ in range(20):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(X), y).backward()
            opt.step()
        finals.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*finals, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("classes", [2, 4])
def test_batched_roc_auc_equals_the_per_fold_one_and_scikit_learn(classes: int) -> None:
    """Padded folds of different lengths, ties (rounded scores) and a fold missing a class (NaN)."""
    from sklearn.metrics import roc_auc_score

    from tuner.training import batched_roc_auc, roc_auc

    g = torch.Generator().manual_seed(0)
    lengths = [30, 25, 17]
    A, N = len(lengths), max(lengths)
    logits = (torch.randn(A, N, classes, generator=g) * 2).round() / 2  # many ties
    proba = torch.softmax(logits, dim=2)
    y = torch.randint(0, classes, (A, N), generator=g)
    y[2] = 0  # the third fold holds one class only: undefined
    valid = torch.arange(N).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    got = batched_roc_auc(proba, y, valid)
    for k, n in enumerate(lengths):
        one = roc_auc(proba[k, :n], y[k, :n])
        if k == 2:
            assert np.isnan(one) and torch.isnan(got[k])
            continue
        assert float(got[k]) == pytest.approx(one, abs=1e-12)
        p = proba[k, :n].double().numpy()
        ref = roc_auc_score(y[k, :n].numpy(), p[:, 1]) if classes == 2 else roc_auc_score(
            y[k, :n].numpy(), p / p.sum(1, keepdims=True), multi_class="ovr", labels=np.arange(classes))
        assert float(got[k]) == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("case", range(40))
def test_torch_metric_set_equals_scikit_learns(case: int) -> None:
    """The lockstep path's per-fold metric set (torch) equals compute_metrics (scikit-learn), including
    classes absent from the truth and/or the predictions, one-class truth (ROC-AUC undefined: None) and
    many tied scores."""
    from tuner.metrics import compute_metrics
    from tuner.training import classification_metrics_t

    g = torch.Generator().manual_seed(case)
    n_classes = [2, 3, 5, 10][case % 4]
    n = int(torch.randint(3, 120, (1,), generator=g))
    used = n_classes if case % 5 else max(1, n_classes // 2)  # every fifth case: the upper classes never occur
    if case % 13 == 0:
        used = 1  # one class only in the truth
    y = torch.randint(0, used, (n,), generator=g)
    logits = torch.randn(n, n_classes, generator=g).round(decimals=case % 3)  # coarse: ties
    logits[torch.arange(n), y] += float(case % 7) / 3
    if case % 6 == 0:
        logits[:, -1] += 5.0  # a class that the model predicts everywhere, present or not in the truth
    proba = torch.softmax(logits, 1).float()
    ref = compute_metrics("classification", y.numpy(), proba.numpy(), 0.5)
    got = classification_metrics_t(proba, y, 0.5)
    assert got.keys() == ref.keys()
    for key, value in ref.items():
        if value is None:
            assert got[key] is None, key
        else:
            assert got[key] == pytest.approx(value, abs=1e-6), key


def test_f1_macro_objective_ignores_classes_absent_from_truth_and_predictions() -> None:
    """The per-epoch f1_macro objective is scikit-learn's macro F1 (labels in the truth or the predictions):
    five output classes of which only two occur, every row right -> 1.0, not 2/5."""
    from sklearn.metrics import f1_score

    from tuner.training import epoch_value

    y = torch.tensor([0, 1, 1, 0, 1])
    out = torch.full((5, 5), -3.0)
    out[torch.arange(5), y] = 3.0
    loss = nn.functional.cross_entropy(out, y)
    assert epoch_value("f1_macro", "classification", out, y, loss) == pytest.approx(1.0)
    assert f1_score(y.numpy(), out.argmax(1).numpy(), average="macro", zero_division=0) == pytest.approx(1.0)


# ---------------------------------------------------------- ROC-AUC ties: lockstep == scikit-learn (issue 19)
def _tied_case(rng: np.random.Generator, classes: int, kind: str, n: int) -> np.ndarray:
    """``n`` float32 probability rows with many exact ties across rows.

    ``rounded``: probabilities rounded to 1-2 decimals (the last class takes the rest), so many rows share
    a class's value while their float32 row sums differ by an ulp; ``dyadic``: multiples of 1/8 that sum
    to 1 exactly (nothing for a normalisation to change); ``logits``: the softmax of integer logits."""
    if kind == "logits":
        logits = torch.from_numpy(rng.integers(-2, 3, size=(n, classes)).astype(np.float32))
        return torch.softmax(logits, dim=1).numpy()
    if kind == "dyadic":
        parts = np.stack([np.bincount(rng.integers(0, classes, size=8), minlength=classes) for _ in range(n)])
        return (parts / 8).astype(np.float32)
    decimals = int(rng.integers(1, 3))
    p = np.round(rng.dirichlet(np.ones(classes), size=n), decimals)[:, :-1]
    p = np.clip(p, 0, None)
    p = p / np.maximum(1.0, p.sum(1, keepdims=True) * 1.0001)
    last = np.clip(1 - p.sum(1, keepdims=True), 0, 1)
    return np.concatenate([p, last], axis=1).astype(np.float32)


@pytest.mark.parametrize(("classes", "cases"), [(2, 300), (5, 300), (10, 50)])
def test_lockstep_roc_auc_breaks_exact_ties_as_scikit_learn(classes: int, cases: int) -> None:
    """Random sets of padded folds of unequal length with exact ties (at least 300 folds compared for 2 and
    5 classes, 300 random cases each): the lockstep ROC-AUC (one ``batched_roc_auc`` call) equals the per-fold :func:`roc_auc`
    exactly, and scikit-learn's ``roc_auc_score`` on the same raw probabilities (every tenth case also through
    ``tuner.metrics`` itself) to 1e-12. A fold missing a class is NaN here, None there."""
    from sklearn.metrics import roc_auc_score

    from tuner.metrics import classification_metrics
    from tuner.training import batched_roc_auc, roc_auc

    rng = np.random.default_rng(classes)
    compared = 0
    for case in range(cases):
        kind = ("rounded", "dyadic", "logits")[case % 3]
        lengths = [int(v) for v in rng.integers(2, 50, size=int(rng.integers(1, 4)))]
        A, N = len(lengths), max(lengths)
        proba = np.zeros((A, N, classes), dtype=np.float32)
        y = np.zeros((A, N), dtype=np.int64)
        for k, n in enumerate(lengths):
            proba[k, :n] = _tied_case(rng, classes, kind, n)
            proba[k, n:] = rng.random((N - n, classes))  # padding: anything, never read
            used = classes if rng.random() > 0.1 else max(1, classes - 1)  # now and then a class is missing
            y[k, :n] = rng.integers(0, used, size=n)
            y[k, n:] = rng.integers(0, classes, size=N - n)
        valid = torch.arange(N).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
        got = batched_roc_auc(torch.from_numpy(proba), torch.from_numpy(y), valid).tolist()
        for k, n in enumerate(lengths):
            p, t = proba[k, :n], y[k, :n]
            one = roc_auc(torch.from_numpy(p.copy()), torch.from_numpy(t.copy()))
            if case % 10 == 0:  # scikit-learn, as tuner.metrics calls it
                ref = classification_metrics(t, p, 0.0)["roc_auc"]
                assert (ref is None) if np.isnan(got[k]) else abs(got[k] - ref) <= 1e-12, (case, k, got[k], ref)
            if len(np.unique(t)) < classes:  # a class missing: undefined
                assert np.isnan(got[k]) and np.isnan(one), (case, k)
                continue
            compared += 1
            assert got[k] == one, (case, k)  # the same computation, bit for bit
            if classes == 2:
                direct = roc_auc_score(t, p[:, 1])
            else:
                assert np.allclose(1, p.sum(axis=1))  # what scikit-learn accepts: it ranks these very numbers
                direct = roc_auc_score(t, p, multi_class="ovr", labels=np.arange(classes))
            assert abs(got[k] - direct) <= 1e-12, (case, k, kind, got[k], direct)
    assert compared >= cases


def test_lockstep_roc_auc_objective_equals_the_final_per_fold_metric() -> None:
    """The lockstep path's per-epoch ROC-AUC (softmax of the stacked outputs) equals, bit for bit, the one
    its final per-fold metric set computes from each fold's own outputs (the trial value and
    ``val_metrics.roc_auc`` agree), with coarse logits (ties) and 3/5/10 classes."""
    from tuner.training import batched_roc_auc, classification_metrics_t

    g = torch.Generator().manual_seed(0)
    for case in range(60):
        classes = (3, 5, 10)[case % 3]
        lengths = torch.randint(classes * 3, 80, (4,), generator=g)
        N = int(lengths.max())
        out = (torch.randn(4, N, classes, generator=g) * 2).round(decimals=case % 2)
        y = torch.arange(4 * N).view(4, N) % classes  # every class in every fold
        y = y[:, torch.randperm(N, generator=g)]
        y[:, : classes] = torch.arange(classes)
        valid = torch.arange(N).unsqueeze(0) < lengths.unsqueeze(1)
        with torch.inference_mode():
            got = batched_roc_auc(torch.softmax(out, dim=2), y, valid).tolist()
            for k, n in enumerate(lengths.tolist()):
                final = classification_metrics_t(torch.softmax(out[k, :n], dim=1).float(), y[k, :n], 0.5)
                assert final["roc_auc"] == got[k], (case, k)


def test_min_delta_patience_counts_real_improvements_but_the_best_observed_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """min_delta 0.2: epochs 2 and 4 improve by more than 0.2 (patience restarts), epochs 5-7 improve by
    less (patience 3 runs out at epoch 7). Epoch 7 holds the lowest value: its weights, outputs and metrics
    are kept, not epoch 4's."""
    model = _model()
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    outputs: dict[int, np.ndarray] = {}

    def on_epoch(epoch: int, value: float) -> None:
        snapshots[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        outputs[epoch] = evaluate(model, *_data(seed=1), "classification")[1]

    calls: list[np.ndarray] = []

    def metrics(out: np.ndarray, loss: float) -> dict[str, float]:
        calls.append(out)
        return {"loss": loss}

    values = [0.9, 0.6, 0.5, 0.389, 0.3, 0.25, 0.221, 0.1, 0.05]
    _scripted_loss(monkeypatch, values)
    cfg = TrainConfig(lr=0.05, batch_size=16, max_epochs=9, patience=3, min_delta=0.2)
    result = fit(model, _data(), _data(seed=1), cfg, task="classification", val_metrics_fn=metrics,
                 on_epoch=on_epoch)
    assert result.epochs_run == 7 and result.val_curve == values[:7]
    assert result.best_epoch == 7 and result.best_value == 0.221
    assert len(calls) == 1 and np.allclose(calls[0], outputs[7]) and not np.allclose(calls[0], outputs[4])
    for k, v in snapshots[7].items():
        assert torch.equal(model.state_dict()[k], v)
    # maximize: the same rule the other way round
    monkeypatch.undo()
    _scripted_loss(monkeypatch, [0.5, 0.55, 0.58, 0.59, 0.9])
    cfg = TrainConfig(lr=0.01, batch_size=16, max_epochs=5, patience=3, min_delta=0.1, objective="accuracy",
                      direction="maximize")
    result = fit(_model(), _data(), _data(seed=1), cfg, task="classification")
    assert result.epochs_run == 4 and result.best_epoch == 4 and result.best_value == 0.59


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_weight_decay_spares_biases_unless_asked(name: str) -> None:
    """AdamW wd 0.5, lr 0.1, zero gradient for 10 steps: the weight shrinks by 0.95 per step, the bias stays
    at 1.0 by default; with weight_decay_on "all" it shrinks too (0.95**10 = 0.599). Adam and SGD (L2
    through the gradient) spare the bias the same way."""
    from tuner.training import make_optimizer

    for decay_on in ("weights", "all"):
        model = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(1.0)
        cfg = TrainConfig(lr=0.1, batch_size=8, weight_decay=0.5, optimizer=name, momentum=0.0,
                          weight_decay_on=decay_on)
        opt = make_optimizer(model, cfg)
        for _ in range(10):
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
            opt.step()
        weight, bias, norm_weight, norm_bias = (p.detach() for p in model.parameters())
        assert float(weight.max()) < 0.9  # decayed either way (AdamW: 0.95**10; Adam: normalised L2 step)
        for p in (bias, norm_weight, norm_bias):
            if decay_on == "weights":
                assert torch.equal(p, torch.ones_like(p))
            else:
                assert float(p.max()) < 0.9
        if name == "adamw":
            expected = 0.95**10
            torch.testing.assert_close(weight, torch.full_like(weight, expected))
            if decay_on == "all":
                torch.testing.assert_close(bias, torch.full_like(bias, expected))


def test_weight_decay_on_is_a_spec_field_read_by_the_train_config(make_spec) -> None:
    from tuner.spec import SpecError

    params = {"lr": 0.01, "batch_size": 16}
    assert make_spec().weight_decay_on == "weights"
    assert TrainConfig.from_params(params, make_spec()).weight_decay_on == "weights"
    assert TrainConfig.from_params(params, make_spec(weight_decay_on="all")).weight_decay_on == "all"
    with pytest.raises(SpecError):
        make_spec(weight_decay_on="biases")
