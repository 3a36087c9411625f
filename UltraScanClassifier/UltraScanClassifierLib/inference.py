"""Classify breast-ultrasound images: calibrated probabilities, label, Grad-CAM heatmap, timing.

    clf = UltrasoundClassifier.load()                     # the shipped model, sha256-checked
    r = clf.classify(array, spacing=(0.1, 0.1))           # (H, W) or (H, W, 3), any size
    r.label, r.probabilities, r.heatmap  (H, W) in [0, 1] on the input's own pixel grid

The whole image is resized to 224 x 224 (as in training), or to the size the model's manifest names
(`input.size`: a network trained on random-resized crops sees objects larger than a whole image of the
same size shows them, so classifying somewhat larger can match them; chosen per model by
cross-validation, training/ultrascan/input_sizes.py); the heatmap is mapped back onto the input grid, so
it overlays the input exactly. Where the model's manifest names a heatmap size (`input.heatmap_size`,
e.g. 320 for the shipped EfficientNet-Lite0), the heatmap is the Grad-CAM of a second forward at that
size, explaining the class of the classifying forward: a 10 x 10 instead of a 7 x 7 map, which points at
the lesion more often (docs/EVALUATION.md: 0.855 vs 0.801 of 518 held-out lesions over five folds).
Pixel spacing is not used by the network (BUSI has none) and is carried to the result for
the caller's geometry.
"""
from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from slicer_ai_common.catalog import load_model_weights
from slicer_ai_common.devices import resolve_device, run_with_fallback
from slicer_ai_common.progress import Progress
from slicer_ai_common.weights import ModelRecord, find_models, load_into

from .catalog import DEFAULT_MODEL, MODELS_DIR, model_names
from .images import check_image, read_image_frame
from .model import CLASSES, UltraScanNet, UltraScanNetConfig, build_classifier, normalize

INPUT_SIZE = 224
DISCLAIMER = "Decision support only, not a diagnosis: a radiologist makes the call."


def disclaimer(manifest: dict) -> str:
    """The decision-support note, with the model's cross-validated accuracy where its manifest has it
    (`cross_validation[cross_validation_key]`, the key defaulting to the UltraScanNet row)."""
    try:
        key = manifest.get("cross_validation_key", "ultrascannet")
        acc = manifest["cross_validation"][key]["mean_sd"]["accuracy"]["mean"]
    except (KeyError, TypeError):
        return DISCLAIMER
    return (f"Decision support only, not a diagnosis: this model was right on {100 * acc:.0f}% of held-out "
            "BUSI images in cross-validation; a radiologist makes the call.")


@dataclass
class Classification:
    label: str
    probabilities: dict
    logits: np.ndarray
    heatmap: np.ndarray | None
    seconds: float
    weights_id: str
    device: str
    spacing: tuple = (1.0, 1.0)
    notes: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {"label": self.label, "probabilities": {k: round(float(v), 6) for k, v in self.probabilities.items()},
                "seconds": round(self.seconds, 4), "weights": self.weights_id, "device": self.device,
                "notes": self.notes}


def preprocess(image01: np.ndarray, size: int = INPUT_SIZE) -> torch.Tensor:
    """(H, W, 3) float in [0, 1] -> normalised (1, 3, size, size), the whole image resized (bicubic, antialiased)."""
    x = torch.from_numpy(np.ascontiguousarray(image01)).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    return normalize(x)


def grad_cam(model, x, target=None, analytic: bool = True, features=None):
    """Grad-CAM on the last feature map: (logits (B, K), cam (B, 1, h, w) >= 0, not normalised).
    target: class per image, or a function of the logits giving it (default: the predicted class), so that
    the one forward both classifies and explains. Needs forward_features / forward_head.

    Where the head is a global mean followed by linear maps (the model's `cam_weights()` gives d logit /
    d pooled feature), the gradient of a logit is that row / (h * w) at every pixel, so Grad-CAM is computed
    in closed form from the forward alone: the same map as the backward gives (tested), without the backward
    pass (analytic=False forces the backward). features: what computes the feature map in that case
    (default model.forward_features; e.g. its frozen CPU version)."""
    rows = model.cam_weights() if analytic and hasattr(model, "cam_weights") else None
    if rows is not None:
        with torch.no_grad():
            fmap = (features or model.forward_features)(x)
            logits = model.forward_head(fmap).float()
            top = logits.argmax(dim=1) if target is None else target(logits) if callable(target) else target
            w = rows.to(fmap.dtype)[top.to(fmap.device)][:, :, None, None] / (fmap.shape[2] * fmap.shape[3])
            cam = torch.relu((w * fmap).sum(dim=1, keepdim=True))
        return logits, cam
    with torch.enable_grad():
        fmap = model.forward_features(x).detach().requires_grad_(True)
        logits = model.forward_head(fmap)
        top = logits.argmax(dim=1) if target is None else target(logits.detach()) if callable(target) else target
        logits.gather(1, top[:, None]).sum().backward()
        w = fmap.grad.mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((w * fmap).sum(dim=1, keepdim=True)).detach()
    return logits.detach(), cam


class _Features(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_features(x)


def frozen_cpu_features(model, example: torch.Tensor):
    """model.forward_features traced and frozen by TorchScript for the CPU, in channels-last layout, or None
    where that fails or differs from eager on `example` by more than 1e-4 of its range. Why: frozen, each
    convolution's BatchNorm is folded and its weights are prepacked once for oneDNN instead of reordered on
    every call; EfficientNet-Lite0's features for an image and its mirror take 37 instead of 66 ms on 2 cores
    (docs/BENCHMARKS.md). torch.jit is deprecated in favour of torch.compile, which needs a C++ compiler
    that a Slicer workstation does not have; so its warning is silenced here and eager is the fallback."""
    try:
        net = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            frozen = torch.jit.freeze(torch.jit.trace(_Features(net).eval(), example.contiguous(
                memory_format=torch.channels_last), check_trace=False))
            got, want = frozen(example), model.forward_features(example)
    except Exception:                                   # noqa: BLE001 - any failure means: stay eager
        return None
    if got.shape != want.shape or float((got - want).abs().max()) > 1e-4 * max(1.0, float(want.abs().max())):
        return None
    return frozen


class UltrasoundClassifier:
    def __init__(self, model, record: ModelRecord, device, temperature: float = 1.0):
        self.model = model.eval()
        self.record = record
        self.device = device
        self.temperature = float(temperature)
        self.classes = list(record.manifest.get("classes", CLASSES))
        # the classifying forward's size (manifest input.size; 224 where it says none)
        self.input_size = int(record.manifest.get("input", {}).get("size", INPUT_SIZE) or INPUT_SIZE)
        # mirror averaging at test time where the model was cross-validated that way (manifest input.tta_flip)
        self.tta_flip = bool(record.manifest.get("input", {}).get("tta_flip", False))
        self.analytic_cam = True              # heatmap in closed form where the head allows (grad_cam)
        # the heatmap from a second, finer forward where the manifest says so (input.heatmap_size); else
        # from the classifying forward itself
        self.heatmap_size = int(record.manifest.get("input", {}).get("heatmap_size", 0) or 0) or None
        # on the CPU, the feature extractor frozen by TorchScript where the model says it traces (fixed layers,
        # no data-dependent control flow); one per input shape, built at its first CPU call, eager if that fails
        self.cpu_freeze = bool(getattr(model, "cpu_freeze", False))
        self._frozen = {}

    @property
    def weights_id(self) -> str:
        return self.record.weights_id

    @property
    def disclaimer(self) -> str:
        return disclaimer(self.record.manifest)

    @classmethod
    def available(cls, root=MODELS_DIR):
        return find_models(root)

    @classmethod
    def model_names(cls, root=MODELS_DIR) -> list:
        """Names of the shipped models (folders with a manifest), the default first."""
        return model_names(root)

    @classmethod
    def load(cls, model=None, device: str = "auto", verify: bool = True) -> "UltrasoundClassifier":
        """model: None (the shipped default), the name of a shipped model (`model_names()`), a model folder,
        its model.json, or a weights file (.safetensors / .pth UltraScanNet state dict, e.g. the authors'
        checkpoint; then uncalibrated, T = 1)."""
        dev = resolve_device(device)
        sd, rec = load_model_weights(model, MODELS_DIR, default=DEFAULT_MODEL, verify=verify, what="model")
        arch = rec.manifest.get("architecture", "UltraScanNet")
        if arch == "UltraScanNet" and int(rec.manifest.get("config", {}).get("members", 1)) == 1:
            cfg = UltraScanNetConfig.from_dict(rec.manifest.get("config", {}))
            if "head.weight" in sd:
                cfg.num_classes = int(sd["head.weight"].shape[0])
            net = UltraScanNet(cfg)
        else:
            net, _ = build_classifier(arch, rec.manifest.get("config", {}))
        net = load_into(net, sd).to(dev)
        return cls(net, rec, dev, rec.manifest.get("temperature", 1.0))

    # --------------------------------------------------------------------------------------- one image
    def _features(self, x, device):
        """What computes the feature map on this device: the frozen CPU extractor where there is one."""
        if device.type != "cpu" or not self.cpu_freeze:
            return None
        key = tuple(x.shape)
        if key not in self._frozen:
            self._frozen[key] = frozen_cpu_features(self.model, x) or False
        return self._frozen[key] or None

    def _run(self, x, device, want_heatmap, out_hw, x_heat=None):
        """x: (n, 3, input_size, input_size); x_heat: the same images at heatmap_size, where the heatmap comes
        from there."""
        model = self.model.to(device)
        x = x.to(device)
        n = x.shape[0]
        if self.tta_flip:                     # the image and its mirror in one batch, logits averaged
            x = torch.cat([x, x.flip(3)])
        feats = self._features(x, torch.device(device))
        if not want_heatmap or x_heat is not None:
            with torch.no_grad():
                lg = (model.forward_head(feats(x)) if feats else model(x)).float().cpu()
            lg = (lg[:n] + lg[n:]) / 2 if self.tta_flip else lg
            if not want_heatmap:
                return lg, None
            x_heat = x_heat.to(device)        # the finer forward explains the class shown (of the 224 logits)
            _, cam = grad_cam(model, x_heat, lg.argmax(1).to(device), analytic=self.analytic_cam,
                              features=self._features(x_heat, torch.device(device)))
            return lg, self._heat(cam, out_hw)
        if self.tta_flip:                     # one forward: the class of the averaged logits, explained on both
            logits, cam = grad_cam(model, x, lambda lg: ((lg[:n] + lg[n:]) / 2).argmax(1).repeat(2),
                                   analytic=self.analytic_cam, features=feats)
            logits, cam = (logits[:n] + logits[n:]) / 2, (cam[:n] + cam[n:].flip(3)) / 2
        else:
            logits, cam = grad_cam(model, x, analytic=self.analytic_cam, features=feats)
        return logits.detach().float().cpu(), self._heat(cam, out_hw)

    @staticmethod
    def _heat(cam, out_hw):
        """(n, 1, h, w) maps -> n arrays on the images' own grids, each scaled to a maximum of 1."""
        heat = []
        for i in range(cam.shape[0]):
            h = F.interpolate(cam[i:i + 1].float(), size=out_hw[i], mode="bilinear", align_corners=False)[0, 0]
            h = h / h.max() if float(h.max()) > 0 else h
            heat.append(h.cpu().numpy().astype(np.float32))
        return heat

    def _heat_input(self, images, heatmap):
        """The images at heatmap_size for the finer heatmap forward, or None (heatmap from the 224 forward)."""
        if not heatmap or not self.heatmap_size:
            return None
        return torch.cat([preprocess(i, self.heatmap_size) for i in images])

    def classify(self, image, spacing=(1.0, 1.0), heatmap: bool = True, name: str = "image",
                 progress: Progress | None = None, notify=None) -> Classification:
        """Validate, classify and explain one 2D image (H, W) / (H, W, 3|4) of any numeric type."""
        if spacing is None or len(spacing) < 2 or not all(np.isfinite(s) and s > 0 for s in spacing[:2]):
            raise ValueError(f"{name}: pixel spacing must be two positive numbers, got {spacing}")
        img = check_image(image, name)
        if progress:
            progress.step("classifying", 0.1)
        t0 = time.perf_counter()
        x, xh = preprocess(img, self.input_size), self._heat_input([img], heatmap)
        (logits, heat), used, tried = run_with_fallback(
            lambda dev, _bs: self._run(x, dev, heatmap, [img.shape[:2]], xh), self.device, batch_sizes=(1,),
            notify=notify)
        if used != self.device:
            self.device = used
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        if progress:
            progress.step("classifying", 1.0)
        return self._result(logits[0].numpy(), heat[0] if heat else None, secs, tuple(float(s) for s in spacing[:2]),
                            tried)

    def _result(self, logits, heat, secs, spacing, notes=()):
        z = np.asarray(logits, dtype=np.float64)
        p = np.exp((z - z.max()) / self.temperature)
        p = p / p.sum()
        return Classification(label=self.classes[int(np.argmax(p))],
                              probabilities={c: float(v) for c, v in zip(self.classes, p)},
                              logits=logits, heatmap=heat, seconds=secs, weights_id=self.weights_id,
                              device=str(self.device), spacing=spacing, notes=list(notes))

    def classify_file(self, path, heatmap: bool = True, progress=None, frame: int | None = None) -> Classification:
        arr, spacing, n_frames = read_image_frame(path, frame)
        multi = bool(frame) and n_frames > 1
        name = Path(path).name + (f" [frame {frame}]" if multi else "")
        r = self.classify(arr, spacing, heatmap=heatmap, name=name, progress=progress)
        if multi:
            r.notes.append(f"frame {frame} of a multi-frame file")
        return r

    # ------------------------------------------------------------------------------------------ batches
    def classify_batch(self, images, heatmap: bool = False, batch_size: int = 16, notify=None) -> list:
        """Many (already read) images at once; one forward per batch of up to batch_size."""
        imgs = [check_image(a, f"image {i}") for i, a in enumerate(images)]
        out = []
        for s in range(0, len(imgs), batch_size):
            chunk = imgs[s:s + batch_size]
            x, xh = torch.cat([preprocess(i, self.input_size) for i in chunk]), self._heat_input(chunk, heatmap)
            t0 = time.perf_counter()
            (logits, heat), used, tried = run_with_fallback(
                lambda dev, _bs: self._run(x, dev, heatmap, [i.shape[:2] for i in chunk], xh), self.device,
                batch_sizes=(1,), notify=notify)
            self.device = used
            secs = (time.perf_counter() - t0) / len(chunk)
            out += [self._result(logits[j].numpy(), heat[j] if heat else None, secs, (1.0, 1.0), tried)
                    for j in range(len(chunk))]
        return out
