"""Several trained copies of one network (same recipe, other seeds) used as one classifier.

Averaging the logits of independently trained copies is the cheapest accuracy a fixed recipe has left: on
the leak-free BUSI folds, two EfficientNet-Lite0 seeds averaged were right on 0.851 of the images where each
alone was right on 0.829 and 0.837 (docs/EVALUATION.md). The ensemble keeps the single network's interface
(forward_features / forward_head / cam_weights), so classification, mirror averaging, the CPU freeze and
the closed-form Grad-CAM of inference.py work on it unchanged:

- forward_features: the members' last feature maps stacked along the channels;
- forward_head: each member's head on its own channels, the logits averaged;
- cam_weights: the members' rows side by side, divided by the member count. The average logit is linear in
  the stacked pooled features with exactly these rows, so its Grad-CAM is the map of the average logit
  (the members' maps averaged before the ReLU), with no backward.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class MemberMean(nn.Module):
    """members: networks of one architecture (equal feature-map channels), trained apart."""

    def __init__(self, members):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)
        # frozen on the CPU only where every member may be (no data-dependent control flow)
        self.cpu_freeze = all(getattr(m, "cpu_freeze", False) for m in members)

    def forward_features(self, x):
        return torch.cat([m.forward_features(x) for m in self.members], dim=1)

    def forward_head(self, fmap):
        n = len(self.members)                 # members of one architecture: equal channel blocks
        if fmap.shape[1] % n:
            raise ValueError(f"a feature map of {fmap.shape[1]} channels does not split over {n} members")
        parts = torch.chunk(fmap, n, dim=1)
        return torch.stack([m.forward_head(p) for m, p in zip(self.members, parts)]).mean(dim=0)

    def cam_weights(self):
        rows = [m.cam_weights() if hasattr(m, "cam_weights") else None for m in self.members]
        if any(r is None for r in rows):
            return None
        return torch.cat(rows, dim=1) / len(rows)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))
