"""`mlp`: a fully connected network over the flattened features (tabular rows)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from kd.models.registry import dropout_knob, int_knob, register


@register("mlp")
class MLP(nn.Module):
    """Flatten any input, `depth` hidden Linear+ReLU(+Dropout) layers of `width`, then a head."""

    probe_shape = (4,)

    def __init__(self, input_shape: tuple[int, ...], n_classes: int,
                 depth: int = 2, width: int = 128, dropout: float = 0.0):
        super().__init__()
        depth = int_knob("mlp", "depth", depth, 0)
        width = int_knob("mlp", "width", width, 1)
        dropout = dropout_knob("mlp", dropout)
        layers: list[nn.Module] = [nn.Flatten()]
        d_in = math.prod(input_shape)
        for _ in range(depth):
            # Dropout(0.0) is the identity, kept so tensor names never depend on `dropout`
            layers += [nn.Linear(d_in, width), nn.ReLU(), nn.Dropout(dropout)]
            d_in = width
        layers.append(nn.Linear(d_in, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, *input_shape) -> (B, n_classes)
        return self.net(x)

