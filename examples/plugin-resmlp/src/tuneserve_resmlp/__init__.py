"""A residual MLP as a tuneserve model plugin.

``build(params, n_features, n_outputs, **options)`` is the factory tuneserve calls for every trial:
``params`` holds the trial's hyperparameters (``lr``, ``dropout``, ``batch_size``, ``weight_decay`` and any
dimension the job's search space adds, here ``n_blocks``), ``options`` the spec's ``model.options``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["ResMLP", "ResidualBlock", "build"]


class ResidualBlock(nn.Module):
    """x + Dropout(Linear(GELU(Linear(LayerNorm(x)))))."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Dropout(dropout), nn.Linear(width, width)
        )

    def forward(self, x):  # type: ignore[no-untyped-def]
        return x + self.body(x)


class ResMLP(nn.Module):
    def __init__(self, n_features: int, n_outputs: int, *, width: int, n_blocks: int, dropout: float) -> None:
        super().__init__()
        self.stem = nn.Linear(n_features, width)
        self.blocks = nn.Sequential(*(ResidualBlock(width, dropout) for _ in range(n_blocks)))
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, n_outputs))

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.head(self.blocks(self.stem(x)))


def build(params: dict[str, Any], n_features: int, n_outputs: int, /, *, width: int = 64, n_blocks: int = 2) -> nn.Module:
    """The factory. ``n_blocks`` may be searched (it then comes in ``params`` and wins over the option)."""
    blocks = int(params.get("n_blocks", n_blocks))
    return ResMLP(n_features, n_outputs, width=int(width), n_blocks=blocks, dropout=float(params.get("dropout", 0.0)))
