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
    assert result.best_epoch == 1 and result.epochs_run == 3
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
        if not fused:  # the same optimiser with the multi-tensor kernels
            defaults = {k: v for k, v in opt.defaults.items() if k != "decoupled_weight_decay" or name != "adamw"}
            opt = type(opt)(model.parameters(), **{**defaults, "fused": None, "foreach": True})
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
