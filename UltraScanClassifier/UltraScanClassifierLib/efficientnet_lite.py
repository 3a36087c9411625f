"""EfficientNet-Lite0 for the runtime, built from MONAI's EfficientNet (already a runtime dependency).

EfficientNet-Lite (Google, 2020) is EfficientNet-B0's layout without squeeze-and-excitation and with
ReLU6 in place of swish. MONAI's `EfficientNet` takes the block strings, so a block string without
`se` gives the Lite blocks; its swish modules are swapped for ReLU6 after construction. For Lite0 (width
and depth 1.0) stem and head need no fixing. Why not the `efficientnet-lite-pytorch` package that the
training code uses for the ImageNet teacher: it would be one more runtime dependency for a network
MONAI already builds; the two give the same logits to float64 rounding (tested), and
`from_training_keys` renames the teacher's flat block numbering to MONAI's per-stage one.
"""
from __future__ import annotations

import re

import torch.nn as nn

# TF EfficientNet-Lite0 block strings: repeats, kernel, stride, expansion, in/out channels; no SE
LITE0_BLOCKS = ("r1_k3_s11_e1_i32_o16", "r2_k3_s22_e6_i16_o24", "r2_k5_s22_e6_i24_o40", "r3_k3_s22_e6_i40_o80",
                "r3_k5_s11_e6_i80_o112", "r4_k5_s22_e6_i112_o192", "r1_k3_s11_e6_i192_o320")
REPEATS = tuple(int(re.match(r"r(\d+)", b).group(1)) for b in LITE0_BLOCKS)


def _relu6(module: nn.Module) -> None:
    for name, child in module.named_children():
        if "swish" in type(child).__name__.lower():
            setattr(module, name, nn.ReLU6())
        else:
            _relu6(child)


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 classifier with forward_features / forward_head (for Grad-CAM), like UltraScanNet."""

    cpu_freeze = True       # fixed layers, no data-dependent control flow: the CPU runs it frozen (inference.py)

    def __init__(self, num_classes: int = 3, in_chans: int = 3, image_size: int = 224):
        super().__init__()
        from monai.networks.nets.efficientnet import EfficientNet

        self.net = EfficientNet(list(LITE0_BLOCKS), spatial_dims=2, in_channels=in_chans, num_classes=num_classes,
                                width_coefficient=1.0, depth_coefficient=1.0, dropout_rate=0.2,
                                image_size=image_size, drop_connect_rate=0.2)
        _relu6(self.net)

    def forward_features(self, x):
        n = self.net
        x = n._swish(n._bn0(n._conv_stem(n._conv_stem_padding(x))))
        x = n._blocks(x)
        return n._swish(n._bn1(n._conv_head(n._conv_head_padding(x))))

    def forward_head(self, fmap):
        return self.net._fc(self.net._dropout(fmap.mean(dim=(2, 3))))

    def cam_weights(self):
        """(classes, channels): the linear layer after the global mean (dropout is the identity in eval mode),
        so Grad-CAM's channel weights are its rows divided by h * w and the heatmap needs no backward."""
        return None if self.training else self.net._fc.weight

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def from_training_keys(sd: dict) -> dict:
    """State dict of the training code's teacher (`baselines.EfficientNetLite`, keys `net._blocks.<i>.`
    numbered through all stages) -> this module's keys (MONAI nests the blocks per stage and keeps the
    global number: `net._blocks.<stage>.<i>.`). Other keys unchanged."""
    stage = [s for s, r in enumerate(REPEATS) for _ in range(r)]
    out = {}
    for k, v in sd.items():
        m = re.match(r"net\._blocks\.(\d+)\.(.*)", k)
        if m:
            i = int(m.group(1))
            k = f"net._blocks.{stage[i]}.{i}.{m.group(2)}"
        out[k] = v
    return out
