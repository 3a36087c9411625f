"""Volume in, liver mask out: orientation, intensity normalisation, resampling, sliding window with
Gaussian blending, thresholding and post-processing, with progress and cancel.

Resampling policy: the model was trained at TRAIN_SPACING (CHAOS T2, 1.25 x 1.25 x 7.7 mm). An input
whose spacing differs by more than `resample_tolerance` (relative, any axis) is resampled to it
(trilinear) for inference and the probabilities are resampled back to the input grid before
thresholding; otherwise it runs on the input grid as is. The mask always has the input's shape and
geometry.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .volumes import Geometry, check_array, from_canonical, orientation_transform, to_canonical

TRAIN_SPACING_IJK = (1.25, 1.25, 7.7)
MODELS_DIR = Path(__file__).resolve().parent.parent / "Resources" / "Models"


class NoWeightsError(RuntimeError):
    """No trained SRMA-Mamba weights are installed (and none were given)."""


@dataclass
class InferenceConfig:
    roi_size: tuple = (224, 224, 64)   # (i, j, k) window, each divisible by 16
    overlap: float = 0.25
    sw_batch_size: int = 4
    threshold: float = 0.5
    largest_component: bool = True
    fill_holes: bool = True
    resample_tolerance: float = 0.1
    amp: bool = False                  # bf16 autocast on GPU


def normalize_intensity(arr: np.ndarray) -> np.ndarray:
    """Clip to the 0.5-99.5 percentiles, then zero mean and unit variance (float32)."""
    a = arr.astype(np.float32, copy=False)
    lo, hi = np.percentile(a, [0.5, 99.5])
    a = np.clip(a, lo, hi)
    std = float(a.std())
    return ((a - float(a.mean())) / (std if std > 0 else 1.0)).astype(np.float32)


def postprocess(mask: np.ndarray, largest_component=True, fill_holes=True) -> np.ndarray:
    from scipy import ndimage

    m = mask.astype(bool)
    if largest_component and m.any():
        lab, n = ndimage.label(m)
        if n > 1:
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            m = lab == int(sizes.argmax())
    if fill_holes and m.any():
        m = ndimage.binary_fill_holes(m)
    return m.astype(np.uint8)


class LiverSegmenter:
    """A loaded model ready to segment volumes; the one inference path for module, CLI and evaluate."""

    def __init__(self, model, device, weights_id: str = "unknown", config: InferenceConfig | None = None):
        self.model = model.eval().to(device)
        self.device = device
        self.weights_id = weights_id
        self.config = config or InferenceConfig()

    @classmethod
    def load(cls, weights: str | Path | None = None, device="auto", config: InferenceConfig | None = None,
             models_dir: Path = MODELS_DIR):
        """Installed weights (verified by sha256), or a user file: manifest folder, .safetensors or .pth."""
        from slicer_ai_common.devices import resolve_device
        from slicer_ai_common.weights import find_models, load_into, load_weights_file

        from .model import SRMAConfig, SRMAMamba

        dev = resolve_device(device) if isinstance(device, str) else device
        if weights is None:
            recs = find_models(models_dir)
            if not recs:
                raise NoWeightsError(
                    f"no trained SRMA-Mamba weights are installed (looked in {models_dir}); "
                    "install a model folder there or pass a weights file (--weights)")
            rec = recs[0]
            sd = rec.load_state_dict(verify=True)
        else:
            sd, rec = load_weights_file(weights)
        cfg_d = rec.manifest.get("config", {})
        known = SRMAConfig.__dataclass_fields__
        cfg = SRMAConfig(**{k: (tuple(v) if k == "depths" else v) for k, v in cfg_d.items() if k in known})
        model = load_into(SRMAMamba(cfg), sd)
        return cls(model, dev, rec.weights_id, config)

    def predict_probabilities(self, x, progress=None, device=None, sw_batch_size=None):
        """x: normalised float32 tensor (1, 1, I, J, K) on CPU -> liver probability (I, J, K) on CPU."""
        import torch
        from monai.inferers import sliding_window_inference

        cfg = self.config
        device = device or self.device
        model = self.model.to(device)
        roi = tuple(cfg.roi_size)
        sw = sw_batch_size or cfg.sw_batch_size
        n_win = 1
        for s, r in zip(x.shape[2:], roi):
            step = max(1, int(r * (1 - cfg.overlap)))
            n_win *= max(1, math.ceil((max(s, r) - r) / step) + 1)
        n_calls = max(1, math.ceil(n_win / sw))
        done = [0]

        def predictor(t):
            if progress is not None:
                progress.step("segmenting", done[0] / n_calls)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda"):
                out = model(t)[0].float()
            done[0] += 1
            if progress is not None:
                progress.step("segmenting", done[0] / n_calls)
            return out

        with torch.inference_mode():
            logits = sliding_window_inference(x.to(device), roi, sw, predictor, overlap=cfg.overlap,
                                              mode="gaussian", sw_device=device, device=torch.device("cpu"))
        return torch.sigmoid(logits[0, 0].float())

    def predict(self, arr_kji: np.ndarray, geom: Geometry, progress=None, fallback_notify=None):
        """-> (uint8 mask in the input's (k, j, i) shape, info dict with timing and device)."""
        import torch
        import torch.nn.functional as F
        from slicer_ai_common.devices import run_with_fallback

        t0 = time.perf_counter()
        cfg = self.config
        arr = check_array(np.asarray(arr_kji))
        if progress is not None:
            progress.step("preparing", 0.0)
        perm, flips = orientation_transform(geom.direction)
        can = to_canonical(arr, perm, flips)  # (k, j, i) in the training orientation
        sp_ijk = np.asarray(geom.spacing, dtype=float)
        # spacing of the canonical array's axes, (k, j, i) order
        sp_kji_in = np.array([sp_ijk[::-1][p] for p in perm])
        img = normalize_intensity(can).transpose(2, 1, 0)  # (i, j, k)
        x = torch.from_numpy(np.ascontiguousarray(img))[None, None]
        sp_ijk_can = sp_kji_in[::-1]
        target = np.array(TRAIN_SPACING_IJK)
        resample = bool(np.any(np.abs(sp_ijk_can / target - 1) > cfg.resample_tolerance))
        in_size = x.shape[2:]
        if resample:
            new_size = [max(16, int(round(s * sp / t))) for s, sp, t in zip(in_size, sp_ijk_can, target)]
            x = F.interpolate(x, size=new_size, mode="trilinear", align_corners=False)
        notes = []

        def run(device, bs):
            return self.predict_probabilities(x, progress, device=device, sw_batch_size=bs)

        batches = tuple(sorted({cfg.sw_batch_size, 2, 1}, reverse=True))
        prob, used_device, tried = run_with_fallback(run, self.device, batches,
                                                     notify=lambda m: (notes.append(m), fallback_notify and fallback_notify(m)))
        if resample:
            prob = F.interpolate(prob[None, None], size=list(in_size), mode="trilinear", align_corners=False)[0, 0]
        if progress is not None:
            progress.step("post-processing", 1.0)
        mask = (prob.numpy() > cfg.threshold).astype(np.uint8).transpose(2, 1, 0)  # (k, j, i)
        mask = postprocess(mask, cfg.largest_component, cfg.fill_holes)
        mask = from_canonical(mask, perm, flips)
        assert mask.shape == arr.shape
        vox_ml = float(np.prod(geom.spacing)) / 1000.0
        info = dict(volume_ml=float(mask.sum()) * vox_ml, seconds=time.perf_counter() - t0,
                    device=str(used_device), weights_id=self.weights_id, resampled=resample, notes=notes)
        return mask, info
