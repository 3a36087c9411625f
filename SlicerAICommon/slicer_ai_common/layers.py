"""Small network layers both models use (torch only)."""
from __future__ import annotations

import torch.nn as nn


class DropPath(nn.Module):
    """Per-sample stochastic depth (identity in eval and when p == 0)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self):
        return f"p={self.p}"


class Permute(nn.Module):
    """x.permute(*dims) as a module (channels-last layers inside nn.Sequential)."""

    def __init__(self, *dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


class Mlp(nn.Module):
    """Linear -> GELU -> Linear (parameter names fc1 / fc2, as the published checkpoints use)."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))
