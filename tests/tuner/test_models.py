"""Model construction: shapes, depth/width overrides, dropout placement and initialisation by activation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tuner.models import CNN, MLP, build_model, hidden_layers, init_scheme
from tuner.spec import ModelSpec


def test_mlp_shape_and_dropout_after_each_hidden_layer() -> None:
    model = build_model(ModelSpec(hidden=[16, 8]), {"dropout": 0.3}, 5, 3)
    assert isinstance(model, MLP)
    kinds = [type(m).__name__ for m in model.net]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert all(m.p == 0.3 for m in model.net if isinstance(m, nn.Dropout))
    assert model(torch.zeros(4, 5)).shape == (4, 3)


def test_depth_and_width_override_hidden() -> None:
    spec = ModelSpec(hidden=[32, 16])
    assert hidden_layers(spec, {}) == [32, 16]
    assert hidden_layers(spec, {"n_layers": 3, "hidden_units": 10}) == [10, 10, 10]
    assert hidden_layers(spec, {"hidden_units": 7}) == [7, 7]
    assert hidden_layers(spec, {"n_layers": 1}) == [32]
    assert hidden_layers(spec, {"n_layers": 3}) == [32, 16, 16]


def test_cnn_for_digits_shape_with_dropout2d() -> None:
    spec = ModelSpec(kind="cnn", channels=[4, 8], hidden=[16])
    model = build_model(spec, {"dropout": 0.1}, 64, 10, input_shape=(1, 8, 8))
    assert isinstance(model, CNN)
    assert sum(isinstance(m, nn.Dropout2d) for m in model.features) == 2
    assert model(torch.zeros(3, 64)).shape == (3, 10)
    with pytest.raises(ValueError):
        build_model(spec, {}, 63, 10, input_shape=(1, 8, 8))


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "elu", "gelu"])
def test_he_init_for_relu_family(activation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    gains: list[float] = []
    real = nn.init.kaiming_normal_

    def spy(tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", generator=None):  # type: ignore[no-untyped-def]
        gains.append(nn.init.calculate_gain(nonlinearity, a))
        return real(tensor, a=a, mode=mode, nonlinearity=nonlinearity, generator=generator)

    monkeypatch.setattr(nn.init, "kaiming_normal_", spy)
    torch.manual_seed(0)
    model = build_model(ModelSpec(hidden=[400], activation=activation), {}, 1000, 2)
    w = model.net[0].weight.detach()
    assert init_scheme(activation) == "he"
    # the gain matches the activation's own negative slope (LeakyReLU: 0.01), exactly, for the hidden layer
    # (the output layer feeds no activation: Xavier, see test_output_layer_is_xavier_with_linear_gain)
    slope = model.net[1].negative_slope if activation == "leaky_relu" else 0.0
    assert gains == [math.sqrt(2.0 / (1 + slope**2))]
    assert float(w.std()) == pytest.approx(gains[0] / math.sqrt(1000), rel=0.03)
    assert float(w.abs().max()) > math.sqrt(6.0 / 1400)  # a normal draw, not Xavier-uniform's bound
    assert float(model.net[0].bias.detach().abs().max()) == 0.0


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_xavier_init_for_tanh_and_sigmoid(activation: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(hidden=[400], activation=activation), {}, 1000, 2)
    w = model.net[0].weight.detach()
    assert init_scheme(activation) == "xavier"
    gain = nn.init.calculate_gain(activation)
    bound = gain * math.sqrt(6.0 / (1000 + 400))
    assert float(w.abs().max()) <= bound + 1e-6
    assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.03)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_output_layer_is_xavier_with_linear_gain(activation: str, kind: str) -> None:
    """The head's outputs are logits (or the regression's prediction), not fed to the hidden activation:
    Xavier-uniform with gain 1 and zero bias, whatever the hidden layers use."""
    torch.manual_seed(0)
    if kind == "mlp":
        model = build_model(ModelSpec(hidden=[400, 300], activation=activation), {}, 1000, 200)
    else:
        model = build_model(ModelSpec(kind="cnn", channels=[4], hidden=[300], activation=activation), {}, 64, 200,
                            input_shape=(1, 8, 8))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    head, hidden = linears[-1], linears[-2]
    assert head.out_features == 200
    bound = math.sqrt(6.0 / (300 + 200))
    w = head.weight.detach()
    assert float(w.abs().max()) <= bound + 1e-6
    assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert float(head.bias.detach().abs().max()) == 0.0
    # the hidden layer before it keeps its activation's scheme (He for ReLU is normal, with a larger spread)
    if activation == "relu":
        assert float(hidden.weight.detach().std()) == pytest.approx(math.sqrt(2.0 / hidden.in_features), rel=0.05)


@pytest.mark.parametrize(("init", "activation", "std"), [
    ("auto", "relu", math.sqrt(2.0 / 1000)),  # He
    ("he", "relu", math.sqrt(2.0 / 1000)),
    ("he", "tanh", (5.0 / 3.0) / math.sqrt(1000)),  # He with tanh's gain
    ("xavier", "relu", math.sqrt(2.0) * math.sqrt(2.0 / 1400)),  # Xavier with ReLU's gain
    ("glorot", "relu", math.sqrt(2.0 / 1400)),  # gain 1, as Keras and scikit-learn
    ("torch", "relu", 1.0 / math.sqrt(3 * 1000)),  # nn.Linear's own kaiming_uniform(a=sqrt(5))
])
def test_model_init_option(init: str, activation: str, std: float) -> None:
    torch.manual_seed(0)
    spec = ModelSpec(hidden=[400], activation=activation, init=init)  # type: ignore[arg-type]
    model = build_model(spec, {}, 1000, 2)
    hidden, head = model.net[0], [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert float(hidden.weight.detach().std()) == pytest.approx(std, rel=0.03)
    if init == "torch":  # nothing re-initialised: PyTorch's uniform biases stay, the head keeps its own init
        assert float(hidden.bias.detach().abs().max()) > 0.0
        assert float(head.weight.detach().abs().max()) <= 1.0 / math.sqrt(400) + 1e-6
    else:
        assert float(hidden.bias.detach().abs().max()) == 0.0
        assert float(head.weight.detach().std()) == pytest.approx(math.sqrt(2.0 / 402), rel=0.2)  # Xavier, gain 1


def test_model_init_reaches_cnn_and_lockstep_folds() -> None:
    from tuner.batched import StackedMLP

    torch.manual_seed(0)
    cnn = build_model(ModelSpec(kind="cnn", channels=[64], hidden=[32], init="glorot"), {}, 64, 10,
                      input_shape=(1, 8, 8))
    conv = next(m for m in cnn.modules() if isinstance(m, nn.Conv2d))
    fan_in, fan_out = 1 * 3 * 3, 64 * 3 * 3
    assert float(conv.weight.detach().std()) == pytest.approx(math.sqrt(2.0 / (fan_in + fan_out)), rel=0.1)
    # the lockstep K-fold model stacks the folds' models as built: same initial weights
    folds = [build_model(ModelSpec(hidden=[400], init="torch"), {}, 1000, 2) for _ in range(2)]
    stacked = StackedMLP(folds)
    for k, fold in enumerate(folds):  # weights stored [K, in, out], biases [K, 1, out]
        assert torch.equal(stacked.weights[0].detach()[k], fold.net[0].weight.detach().t())
        assert torch.equal(stacked.biases[0].detach()[k, 0], fold.net[0].bias.detach())
    assert not torch.equal(stacked.weights[0][0], stacked.weights[0][1])  # built one after the other here
    # and what reaches the stack is the option's init: PyTorch's own (uniform biases, 1/sqrt(3 fan_in) spread)
    assert float(stacked.biases[0].detach().abs().max()) > 0.0
    assert float(stacked.weights[0].detach().std()) == pytest.approx(1.0 / math.sqrt(3 * 1000), rel=0.03)


def test_model_init_is_for_builtin_families() -> None:
    from tuner.spec import SpecError, parse_spec

    with pytest.raises(SpecError) as exc:
        parse_spec({"name": "p", "dataset": {"builtin": "iris"},
                    "model": {"kind": "plugin", "name": "resmlp", "init": "glorot"}})
    assert exc.value.errors == [("model.init: applies to the built-in mlp and cnn families; a plugin initialises "
                                "its own model")]
    with pytest.raises(SpecError) as exc:
        parse_spec({"name": "p", "dataset": {"builtin": "iris"}, "model": {"init": "lecun"}})
    assert any(e.startswith("model.init") for e in exc.value.errors), exc.value.errors


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_a_trials_init_replaces_model_init(kind: str) -> None:
    """``search_space.init``: the trial's ``init`` param builds exactly what ``model.init`` would, whatever
    ``model.init`` says; without the param, ``model.init`` applies as before."""
    extra = {"kind": "cnn", "channels": [4], "hidden": [16]} if kind == "cnn" else {"hidden": [32, 16]}
    shape = (1, 8, 8) if kind == "cnn" else None

    def weights(spec: ModelSpec, params: dict) -> list[torch.Tensor]:
        torch.manual_seed(3)
        model = build_model(spec, {"dropout": 0.0, **params}, 64, 10, input_shape=shape)
        return [p.detach().clone() for p in model.parameters()]

    for init in ("auto", "he", "xavier", "glorot", "torch"):
        as_option = weights(ModelSpec(**extra, init=init), {})
        for base in ("auto", "he", "torch"):
            as_param = weights(ModelSpec(**extra, init=base), {"init": init})
            assert all(torch.equal(a, b) for a, b in zip(as_option, as_param, strict=True)), (init, base)
    he, torch_default = weights(ModelSpec(**extra), {"init": "he"}), weights(ModelSpec(**extra), {"init": "torch"})
    assert not torch.equal(he[0], torch_default[0])
    assert all(torch.equal(a, b) for a, b in zip(weights(ModelSpec(**extra, init="torch"), {}), torch_default,
                                                 strict=True))


def test_the_lockstep_stack_follows_the_trials_init() -> None:
    """tuner.batched builds each fold's model through build_model: the stack starts from the trial's init."""
    from tuner.batched import StackedMLP

    spec = ModelSpec(hidden=[400])  # model.init auto: He
    torch.manual_seed(0)
    folds = [build_model(spec, {"init": "torch"}, 1000, 2) for _ in range(2)]
    stacked = StackedMLP(folds)
    # PyTorch's own init: uniform biases, weights with a 1/sqrt(3 fan_in) spread (He's is sqrt(2/fan_in))
    assert float(stacked.biases[0].detach().abs().max()) > 0.0
    assert float(stacked.weights[0].detach().std()) == pytest.approx(1.0 / math.sqrt(3 * 1000), rel=0.03)
