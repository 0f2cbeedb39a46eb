"""Models: an MLP and a small CNN for image-shaped inputs, initialised by activation; plugin families.

He (Kaiming) initialisation for the ReLU family keeps activations' variance stable through rectifiers;
Xavier (Glorot) suits the symmetric saturating tanh/sigmoid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from tuner.registry import get_factory
from tuner.spec import ModelSpec

__all__ = [
    "CNN",
    "MLP",
    "Dropout",
    "build_model",
    "cnn_factory",
    "dropout",
    "hidden_layers",
    "init_scheme",
    "init_weights",
    "mlp_factory",
    "model_options",
]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}
_RELU_FAMILY = ("relu", "leaky_relu", "elu", "gelu")


def init_scheme(activation: str, init: str = "auto") -> str:
    """The hidden layers' scheme: ``init`` itself unless ``"auto"``, which is ``"he"`` for the ReLU family
    and ``"xavier"`` for tanh and sigmoid."""
    if init != "auto":
        return init
    return "he" if activation in _RELU_FAMILY else "xavier"


def init_weights(model: nn.Module, activation: str, init: str = "auto") -> None:
    """Initialise every Linear/Conv2d weight to suit what follows it; biases to zero.

    Hidden layers feed the activation: He (normal, the activation's gain) for the ReLU family, Xavier
    (uniform, the activation's gain) for tanh and sigmoid. The output layer (the last Linear) feeds no
    activation - its outputs are logits for the softmax or the regression's prediction - so it gets
    Xavier with the linear gain 1: He's ReLU gain there would double the logits' initial variance.

    ``init`` (``model.init``) overrides the hidden layers' scheme: ``"he"`` or ``"xavier"`` whatever the
    activation, ``"glorot"`` (Xavier-uniform with gain 1, as Keras and scikit-learn's MLP) and ``"torch"``
    (the layers keep PyTorch's own initialisation, biases included, output layer too).
    """
    scheme = init_scheme(activation, init)
    if scheme == "torch":
        return
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    head = next((m for m in reversed(layers) if isinstance(m, nn.Linear)), None)
    # the activation's gain: ReLU's for relu/elu/gelu, LeakyReLU's with its slope, tanh's or sigmoid's
    nonlin: Any = "relu" if activation in ("relu", "elu", "gelu") else activation
    slope = nn.LeakyReLU().negative_slope if activation == "leaky_relu" else 0.0
    for m in layers:
        if m is head or scheme == "glorot":
            nn.init.xavier_uniform_(m.weight, gain=1.0)
        elif scheme == "he":
            nn.init.kaiming_normal_(m.weight, a=slope, nonlinearity=nonlin)
        else:
            nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain(nonlin, slope))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def hidden_layers(spec: ModelSpec, params: Mapping[str, Any]) -> list[int]:
    """Hidden widths: ``model.hidden`` unless the search sets ``n_layers`` and/or ``hidden_units``."""
    return _widths(spec.hidden, params)


def _widths(hidden: list[int], params: Mapping[str, Any]) -> list[int]:
    depth = params.get("n_layers")
    width = params.get("hidden_units")
    hidden = list(hidden) or [64]
    if depth is None and width is None:
        return hidden
    if width is not None:
        return [int(width)] * int(depth if depth is not None else len(hidden))
    depth = int(depth)  # type: ignore[arg-type]
    return (hidden + [hidden[-1]] * depth)[:depth]


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout: in training each element is kept with probability ``1 - p`` and scaled by
    ``1 / (1 - p)``. On the CPU, for tensors of 2048 elements or more, the mask comes from ``torch.rand``
    (about twice as fast there as the ``bernoulli_`` kernel of ``nn.functional.dropout``, same
    distribution; below that size its extra operations cost more than they save); elsewhere torch's own."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0 or not x.is_floating_point() or x.numel() < 2048:
        return nn.functional.dropout(x, p, training)
    return x * (torch.rand_like(x) >= p).to(x.dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """``nn.Dropout`` computed by :func:`dropout` (no parameters: checkpoints are the same)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def _mlp_layers(n_in: int, hidden: list[int], n_out: int, activation: str, dropout: float) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(n_in, width), _ACTIVATIONS[activation](), Dropout(dropout)]
        n_in = width
    layers.append(nn.Linear(n_in, n_out))
    return layers


class MLP(nn.Module):
    """Linear -> activation -> Dropout for each hidden layer, then a linear head."""

    def __init__(self, n_features: int, hidden: list[int], n_outputs: int, activation: str, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(*_mlp_layers(n_features, hidden, n_outputs, activation, dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """Conv blocks (conv -> activation -> Dropout2d -> 2x2 max-pool while the map is large enough), MLP head."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        channels: list[int],
        kernel_size: int,
        hidden: list[int],
        n_outputs: int,
        activation: str,
        dropout: float,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        c, h, w = input_shape
        blocks: list[nn.Module] = []
        for out in channels:
            blocks += [
                nn.Conv2d(c, out, kernel_size, padding=kernel_size // 2),
                _ACTIVATIONS[activation](),
                nn.Dropout2d(dropout),
            ]
            if h >= 2 and w >= 2:
                blocks.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Flatten(), *_mlp_layers(c * h * w, hidden, n_outputs, activation, dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.view(x.shape[0], *self.input_shape)))


def mlp_factory(
    params: Mapping[str, Any], n_features: int, n_outputs: int, /, *, hidden: list[int], activation: str,
    init: str = "auto",
) -> nn.Module:
    """The built-in ``mlp`` family (registered in :mod:`tuner.registry` like any plugin)."""
    model = MLP(n_features, _widths(hidden, params), n_outputs, activation, float(params.get("dropout", 0.0)))
    init_weights(model, activation, init)
    return model


def cnn_factory(
    params: Mapping[str, Any],
    n_features: int,
    n_outputs: int,
    /,
    *,
    hidden: list[int],
    activation: str,
    channels: list[int],
    kernel_size: int,
    input_shape: tuple[int, int, int] | None,
    init: str = "auto",
) -> nn.Module:
    """The built-in ``cnn`` family; ``input_shape`` (C, H, W) must hold ``n_features`` values."""
    if input_shape is None:
        raise ValueError("a CNN needs an input shape (C, H, W)")
    c, h, w = input_shape
    if c * h * w != n_features:
        raise ValueError(f"input shape {list(input_shape)} does not match {n_features} features")
    dropout = float(params.get("dropout", 0.0))
    model = CNN((c, h, w), list(channels), kernel_size, _widths(hidden, params), n_outputs, activation, dropout)
    init_weights(model, activation, init)
    return model


def model_options(spec: ModelSpec, input_shape: tuple[int, int, int] | None = None) -> dict[str, Any]:
    """The keyword options the spec's family factory is called with."""
    if spec.kind == "plugin":
        return dict(spec.options)
    options: dict[str, Any] = {"hidden": list(spec.hidden), "activation": spec.activation, "init": spec.init}
    if spec.kind == "cnn":
        shape = tuple(spec.input_shape) if spec.input_shape is not None else input_shape
        options |= {"channels": list(spec.channels), "kernel_size": spec.kernel_size, "input_shape": shape}
    return options


def build_model(
    spec: ModelSpec,
    params: Mapping[str, Any],
    n_features: int,
    n_outputs: int,
    *,
    input_shape: tuple[int, int, int] | None = None,
) -> nn.Module:
    """Build and initialise the model a spec names with a trial's hyperparameters.

    Every family, built-in or plugin, is looked up in :mod:`tuner.registry` and called as
    ``factory(params, n_features, n_outputs, **options)``. ``input_shape`` (C, H, W) is needed for a CNN
    when ``spec.input_shape`` is unset (digits: 1x8x8). A built-in family initialises its weights with
    the trial's ``init`` when the search has that dimension (``search_space.init``), else ``spec.init``.
    """
    factory = get_factory(spec.family)
    options = model_options(spec, input_shape)
    if spec.kind != "plugin" and params.get("init") is not None:  # the search's init replaces model.init
        options["init"] = str(params["init"])
    model = factory(dict(params), n_features, n_outputs, **options)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model family '{spec.family}' returned {type(model).__name__}, not a torch.nn.Module")
    return model
