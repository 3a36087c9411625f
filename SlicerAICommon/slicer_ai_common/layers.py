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
