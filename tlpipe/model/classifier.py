"""The classifier: normalisation, a backbone body and a head, as one module from [0, 1] images to logits."""

from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def make_head(in_features: int, num_classes: int, hidden: Sequence[int] = (), dropout: float = 0.0) -> nn.Module:
    """A linear layer (no hidden layers), or an MLP with ReLU and dropout after each hidden layer."""
    if not hidden:
        return nn.Linear(in_features, num_classes)
    layers: list[nn.Module] = []
    width = in_features
    for units in hidden:
        layers += [nn.Linear(width, units), nn.ReLU(), nn.Dropout(dropout)]
        width = units
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


class AttentionPool(nn.Module):
    """Attention pooling over the positions of a feature map: (N, C, h, w) -> (N, C).

    A 1x1 convolution scores each position, a softmax over the positions turns the scores into
    weights that sum to 1, and the features are their weighted sum. The scorer starts at zero, so
    the weights start uniform and the pooling starts as global average pooling: a head fitted on
    average-pooled features (the linear probe) is exact at the first step.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.score = nn.Conv2d(channels, 1, kernel_size=1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) -> (N, h * w) pooling weights, each row summing to 1."""
        return torch.softmax(self.score(x).flatten(1).float(), dim=1).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ncp,np->nc", x.flatten(2), self.weights(x))


class AttentionHead(nn.Module):
    """Attention pooling, then a linear layer or an MLP: the head of a spatial backbone."""

    def __init__(self, channels: int, num_classes: int, hidden: Sequence[int] = (), dropout: float = 0.0):
        super().__init__()
        self.pool = AttentionPool(channels)
        self.classify = make_head(channels, num_classes, hidden, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.pool(x))


def _main_output(out):
    """Models whose training forward returns more than one output (a named tuple of logits and
    auxiliary logits) give their main output."""
    return out[0] if isinstance(out, tuple) else out


class Classifier(nn.Module):
    """Images as floats in [0, 1], (N, 3, H, W) -> class logits. Normalisation is built in."""

    def __init__(self, body: nn.Module, head: nn.Module, mean, std):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(_main_output(self.body(self.normalize(x))))
