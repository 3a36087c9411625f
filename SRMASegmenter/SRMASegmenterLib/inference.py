"""Volume in, liver (and optionally spleen / kidney) masks out: orientation, intensity normalisation,
resampling to the model's grid, one window or a sliding window, softmax / sigmoid, post-processing,
with progress and cancel.

Grid policy: every model states in its manifest the spacing it was trained at (`train_spacing_ijk`)
and its window (`inference.roi_size`); the published-style models without them use TRAIN_SPACING_IJK
and a 224 x 224 x 64 window. An input whose spacing differs from the model's by more than
`resample_tolerance` (relative, any axis) is resampled to it (Gaussian pre-filter on the axes that
shrink, then trilinear), and the class probabilities are resampled back to the input grid before the
labels are taken, so every mask has the input's shape and geometry. A volume that fits the window runs
as one window (padded to the window, as in training, with the image's minimum); a larger one runs as
overlapping windows with Gaussian blending.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slicer_ai_common.resources import resource_dir
from slicer_ai_common.weights import NoWeightsError  # noqa: F401 - raised by the loader; callers catch it here

from .volumes import Geometry, check_array, check_geometry, from_canonical, orientation_transform, to_canonical

TRAIN_SPACING_IJK = (1.25, 1.25, 7.7)   # the published-style binary model (CHAOS T2 as distributed)
DEFAULT_ROI = (224, 224, 64)
GPU_UPLOAD_DTYPES = tuple(np.dtype(t) for t in ("int16", "uint8", "int8", "int32", "float32", "float64"))
MODELS_DIR = resource_dir(__file__, "SRMASegmenterResources", "Models")   # Slicer / checkout / wheel


@dataclass
class InferenceConfig:
    roi_size: tuple | None = None      # (i, j, k) window, each divisible by 16; None: the model's own
    spacing: tuple | None = None       # model grid (i, j, k) mm; None: the model's training spacing
    overlap: float = 0.25
    sw_batch_size: int = 4
    threshold: float = 0.5             # binary (one-channel) models only; softmax models take the argmax
    largest_component: bool = True
    fill_holes: bool = True
    resample_tolerance: float = 0.1
    amp: bool = True                   # bf16 autocast on GPU (H100, 3 CHAOS volumes: 0.183 -> 0.128 s per
                                       # volume, Dice 0.999 against the fp32 masks; docs/BENCHMARKS.md)
    tta: bool = False                  # mirror test-time augmentation (anterior-posterior and cranio-caudal
                                       # flips, the axes mirrored in training; never left-right)
    cuda_graphs: bool = True           # GPU: replay the window's forward as a captured CUDA graph (one capture
                                       # per window shape and process; eager if capture fails; docs/BENCHMARKS.md)


def normalize_intensity(arr: np.ndarray) -> np.ndarray:
    """Clip to the 0.5-99.5 percentiles, then zero mean and unit variance (float32)."""
    a = arr.astype(np.float32, copy=False)
    lo, hi = np.percentile(a, [0.5, 99.5])
    a = np.clip(a, lo, hi)
    std = float(a.std())
    return ((a - float(a.mean())) / (std if std > 0 else 1.0)).astype(np.float32)


def normalize_intensity_tensor(x):
    """`normalize_intensity` for a tensor on any device (used on the GPU: one sort instead of numpy's
    partition on the CPU): numpy's linear-interpolated 0.5 / 99.5 percentiles, clip, zero mean, unit
    variance (population sd), float32."""
    import torch

    x = x.to(torch.float32)
    s = x.reshape(-1).sort().values
    n = s.numel()

    def pct(q):
        pos = q / 100.0 * (n - 1)
        i = int(math.floor(pos))
        j = min(i + 1, n - 1)
        return s[i] + (pos - i) * (s[j] - s[i])

    a = x.clamp(pct(0.5), pct(99.5))
    std = a.std(correction=0)
    return (a - a.mean()) / torch.where(std > 0, std, torch.ones_like(std))


def gaussian_blur_axis(x, sigma: float, axis: int):
    """Gaussian blur of a (B, C, I, J, K) tensor along spatial axis 0, 1 or 2 (sigma in voxels, kernel
    +-3 sigma, replicated edges), each channel on its own."""
    import torch
    import torch.nn.functional as F

    r = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    shape = [1, 1, 1]
    shape[axis] = 2 * r + 1
    pad = [0, 0, 0, 0, 0, 0]
    pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
    return F.conv3d(F.pad(x, pad, mode="replicate"), k.view(1, 1, *shape).repeat(c, 1, 1, 1, 1), groups=c)


def resample(x, in_spacing, out_spacing, size=None):
    """(B, C, I, J, K) float tensor from one grid to another: a Gaussian pre-filter (sigma = (f - 1) / 2
    voxels) on every axis that shrinks by f > 1, then trilinear. `size` overrides the computed size."""
    import torch.nn.functional as F

    f = [float(o) / float(i) for i, o in zip(in_spacing, out_spacing)]
    if size is None:
        size = [max(1, int(round(s / fi))) for s, fi in zip(x.shape[2:], f)]
    for ax, fi in enumerate(f):
        if fi > 1.01:
            x = gaussian_blur_axis(x, (fi - 1) / 2, ax)
    if list(size) != list(x.shape[2:]):
        x = F.interpolate(x, size=list(size), mode="trilinear", align_corners=False)
    return x


def resample_labels(lab, in_spacing, out_spacing, num_classes, size=None):
    """Integer labels (I, J, K) tensor to another grid: one-hot, `resample`, argmax."""
    import torch.nn.functional as F

    oh = F.one_hot(lab.long(), num_classes).permute(3, 0, 1, 2)[None].float()
    return resample(oh, in_spacing, out_spacing, size)[0].argmax(0).to(lab.dtype)


def one_window_pads(shape, roi) -> list:
    """F.pad's (last axis first) padding that centres a volume smaller than the window in it, as MONAI's
    sliding_window_inference pads (the extra voxel after), so the one-window path sees the same input."""
    pads = []
    for s, r in zip(reversed(tuple(shape)), reversed(tuple(roi))):
        d = max(r - s, 0)
        pads += [d // 2, d - d // 2]
    return pads


class CudaGraphForward:
    """`fn(x)` replayed from a captured CUDA graph, one per input shape / dtype / device: the window's
    hundreds of small kernels (norms, the scans, convolutions) are launched as one graph instead of one
    Python call each. The first call per shape warms up on a side stream and captures; a capture that
    fails (an op that syncs with the host, an out-of-memory) turns graphs off for this object and the
    call runs eagerly, so the result never depends on whether a graph was used. The output is a copy."""

    def __init__(self, fn):
        self.fn = fn
        self.graphs = {}
        self.failed = None               # why capture was given up, if it was

    def __call__(self, x):
        import torch

        if self.failed is not None or x.device.type != "cuda":
            return self.fn(x)
        key = (tuple(x.shape), x.dtype, x.device)
        if key not in self.graphs:
            try:
                static_in = x.clone()
                side = torch.cuda.Stream(x.device)
                side.wait_stream(torch.cuda.current_stream(x.device))
                with torch.cuda.stream(side):
                    for _ in range(2):       # first calls: lazy initialisation, Triton compilation
                        self.fn(static_in)
                torch.cuda.current_stream(x.device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    static_out = self.fn(static_in)
                self.graphs[key] = (graph, static_in, static_out)
            except Exception as e:           # noqa: BLE001 - any capture failure means: run eagerly
                self.failed = f"{type(e).__name__}: {e}"
                self.graphs.clear()
                torch.cuda.synchronize(x.device)
                return self.fn(x)
        graph, static_in, static_out = self.graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()


def class_labels(prob, threshold: float = 0.5):
    """Probabilities (C, ...) -> uint8 labels: P > threshold for one channel, else the most probable class
    (ties to the lower index, as numpy's argmax). `max(0).indices` rather than `argmax(0)`: the same
    indices, 8.8x faster on the CPU for a (5, 256, 256, 36) volume (203 -> 23 ms on 2 threads)."""
    import torch

    if prob.shape[0] == 1:
        return (prob[0] > threshold).to(torch.uint8)
    return prob.max(0).indices.to(torch.uint8)


def fill_binary_holes(m: np.ndarray) -> np.ndarray:
    """scipy's binary_fill_holes (6-connected background; the array border is outside), computed by
    labelling the background once and keeping what touches the border: the same result, about 3x faster
    on a liver mask (77 -> 26 ms, 256 x 256 x 31)."""
    from scipy import ndimage

    lab, n = ndimage.label(~m)
    if n == 0:
        return m.copy()
    outside = np.zeros(n + 1, bool)
    outside[0] = True
    for ax in range(m.ndim):
        outside[np.take(lab, 0, axis=ax)] = True
        outside[np.take(lab, -1, axis=ax)] = True
    return m | ~outside[lab]


def postprocess(mask: np.ndarray, largest_component=True, fill_holes=True) -> np.ndarray:
    """Keep the largest 6-connected component and fill its holes, inside the mask's bounding box (the
    same result as on the whole array: everything outside the box is background that reaches the border)."""
    from scipy import ndimage

    m = mask.astype(bool)
    out = np.zeros(m.shape, np.uint8)
    if not m.any():
        return out
    box = ndimage.find_objects(m.view(np.uint8))[0]
    c = m[box]
    if largest_component:
        lab, n = ndimage.label(c)
        if n > 1:
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            c = lab == int(sizes.argmax())
    if fill_holes:
        c = fill_binary_holes(c)
    out[box] = c
    return out


class LiverSegmenter:
    """A loaded model ready to segment volumes; the one inference path for module, CLI and evaluate."""

    def __init__(self, model, device, weights_id: str = "unknown", config: InferenceConfig | None = None,
                 manifest: dict | None = None):
        self.model = model.eval().to(device)
        self.device = device
        self.weights_id = weights_id
        self.config = config or InferenceConfig()
        manifest = manifest or {}
        self.manifest = manifest
        inf = manifest.get("inference", {})
        if self.config.spacing is None:
            self.config.spacing = tuple(manifest.get("train_spacing_ijk", TRAIN_SPACING_IJK))
        if self.config.roi_size is None:
            self.config.roi_size = tuple(inf.get("roi_size", DEFAULT_ROI))
        cfg = model.cfg
        self.classes = list(cfg.class_names) if cfg.out_chans > 1 else ["background", *cfg.class_names]
        self._graphed = None              # CudaGraphForward of the window, made on the first GPU call

    @property
    def organs(self) -> list:
        """The organs this model can segment (foreground class names)."""
        return self.classes[1:]

    @classmethod
    def load(cls, weights: str | Path | None = None, device="auto", config: InferenceConfig | None = None,
             models_dir: Path = MODELS_DIR):
        """Installed weights (verified by sha256), or a user file: manifest folder, .safetensors or .pth."""
        from slicer_ai_common.devices import resolve_device
        from slicer_ai_common.catalog import load_model_weights
        from slicer_ai_common.weights import load_into

        from .model import SRMAConfig, SRMAMamba

        dev = resolve_device(device) if isinstance(device, str) else device
        sd, rec = load_model_weights(weights, models_dir, what="SRMA-Mamba")
        cfg = SRMAConfig.from_dict(rec.manifest.get("config", {}))
        model = load_into(SRMAMamba(cfg), sd)   # refuses weights whose class count differs from the manifest's
        return cls(model, dev, rec.weights_id, config, rec.manifest)

    def _probabilities(self, t):
        """Class probabilities of one batch of windows (B, C, ...) (C = 1: sigmoid of the binary output)."""
        import torch

        cfg = self.config
        on_gpu = t.device.type == "cuda"
        # under a CUDA graph, no autocast weight cache (a graph must not capture casts cached outside it); eager,
        # the cache saves re-casting every weight on every call
        with torch.autocast(t.device.type, dtype=torch.bfloat16, enabled=cfg.amp and on_gpu,
                            cache_enabled=not (on_gpu and cfg.cuda_graphs)):
            out = self.model(t)[0].float()
        return torch.sigmoid(out) if out.shape[1] == 1 else torch.softmax(out, dim=1)

    def _forward(self, t, device):
        if device.type == "cuda" and self.config.cuda_graphs:
            if self._graphed is None:
                self._graphed = CudaGraphForward(self._probabilities)
            return self._graphed(t)
        return self._probabilities(t)

    def predict_probabilities(self, x, progress=None, device=None, sw_batch_size=None, out_device=None):
        """x: normalised float32 tensor (1, 1, I, J, K) on the model's grid -> probabilities (C, I, J, K)
        (C = 1 for a binary model: P(liver)) on out_device (default: the CPU)."""
        import torch
        from monai.inferers import sliding_window_inference

        cfg = self.config
        device = device or self.device
        self.model.to(device)
        roi = tuple(cfg.roi_size)
        sw = sw_batch_size or cfg.sw_batch_size
        flips = [()] + ([(3,), (4,)] if cfg.tta else [])
        n_win = 1
        for s, r in zip(x.shape[2:], roi):
            step = max(1, int(r * (1 - cfg.overlap)))
            n_win *= max(1, math.ceil((max(s, r) - r) / step) + 1)
        n_calls = max(1, math.ceil(n_win / sw)) * len(flips)
        done = [0]

        def predictor(t):
            if progress is not None:
                progress.step("segmenting", done[0] / n_calls)
            out = self._forward(t, device)
            done[0] += 1
            if progress is not None:
                progress.step("segmenting", done[0] / n_calls)
            return out

        pad_value = float(x.min())   # as in training: outside the volume is the image's darkest value
        one_window = all(s <= r for s, r in zip(x.shape[2:], roi))
        total = None
        with torch.inference_mode():
            for fl in flips:
                xi = x.flip(fl) if fl else x
                if one_window:       # MONAI's padding and crop without its window bookkeeping (same numbers)
                    pads = one_window_pads(xi.shape[2:], roi)
                    xp = torch.nn.functional.pad(xi.to(device), pads, value=pad_value)
                    crop = tuple(slice(pads[2 * (2 - a)], pads[2 * (2 - a)] + xi.shape[2 + a]) for a in range(3))
                    p = predictor(xp)[0][(slice(None), *crop)].to(torch.device(out_device or "cpu"))
                else:
                    p = sliding_window_inference(xi.to(device), roi, sw, predictor, overlap=cfg.overlap,
                                                 mode="gaussian", cval=pad_value, sw_device=device,
                                                 device=torch.device(out_device or "cpu"))[0]
                p = p.flip([d - 1 for d in fl]) if fl else p
                total = p if total is None else total + p
        return (total / len(flips)).float()

    def predict(self, arr_kji: np.ndarray, geom: Geometry, progress=None, fallback_notify=None, organs=None,
                keep_probabilities=False):
        """-> (uint8 liver mask in the input's (k, j, i) shape, info dict with timing and device).

        organs: further organs to segment ("spleen", "right_kidney", "left_kidney"; a multi-class model
        only); their masks are in info["organs"][name] and their volumes in info["organ_volumes_ml"].
        keep_probabilities: also info["probabilities"], the model's class probabilities on the input's
        grid, float32 (classes, k, j, i), the ones the labels were taken from, before post-processing (for
        evaluation: decision rules chosen by cross-validation, training.srma.decision_rule).
        """
        import torch
        from slicer_ai_common.devices import run_with_fallback

        organs = [o for o in (organs or []) if o != "liver"]
        unknown = [o for o in organs if o not in self.organs]
        if unknown:
            raise ValueError(f"this model ({self.weights_id}) segments {', '.join(self.organs)}; "
                             f"it cannot segment {', '.join(unknown)}")
        t0 = time.perf_counter()
        marks = [("start", t0)]

        def mark(stage, device=None):         # where the time goes: info["timings_s"] (bench_pipeline.py)
            if device is not None and device.type == "cuda":
                torch.cuda.synchronize(device)
            marks.append((stage, time.perf_counter()))

        cfg = self.config
        arr = check_array(np.asarray(arr_kji))
        check_geometry(geom)
        if progress is not None:
            progress.step("preparing", 0.0)
        perm, flips = orientation_transform(geom.direction)
        can = to_canonical(arr, perm, flips)  # (k, j, i) in the training orientation
        sp_ijk = np.asarray(geom.spacing, dtype=float)
        sp_ijk_can = np.array([sp_ijk[::-1][p] for p in perm])[::-1]   # spacing of the canonical (i, j, k) axes
        mark("check + orientation")
        raw = can.transpose(2, 1, 0)                       # (i, j, k)
        target = np.array(cfg.spacing, dtype=float)
        resample_needed = bool(np.any(np.abs(sp_ijk_can / target - 1) > cfg.resample_tolerance))
        in_size = list(raw.shape)
        notes = []
        trained = (self.manifest or {}).get("inference", {}).get("roi_size")
        if trained and any(r < 0.75 * t for r, t in zip(cfg.roi_size, trained)):
            notes.append(f"window {tuple(cfg.roi_size)} is much smaller than the {tuple(trained)} the model was trained "
                         "on: expect a worse segmentation (measured on case 20: Dice 0.95 of the one-window mask at "
                         "64 x 64 x 32)")

        def run(device, bs):
            # everything from the model grid to the labels stays on the device (one copy in, uint8 labels out);
            # an out-of-memory anywhere here falls back as a whole
            if device.type == "cuda":     # the stored type goes up (half the bytes of float32), turned on the GPU
                host = np.ascontiguousarray(can if can.dtype in GPU_UPLOAD_DTYPES else can.astype(np.float32))
                xd = torch.from_numpy(host).to(device).permute(2, 1, 0).to(torch.float32).contiguous()
                xd = normalize_intensity_tensor(xd)[None, None]
            else:
                xd = torch.from_numpy(np.ascontiguousarray(normalize_intensity(raw)))[None, None]
            mark("normalisation", device)
            if resample_needed:
                xd = resample(xd, sp_ijk_can, target)
            mark("resample to model grid", device)
            prob = self.predict_probabilities(xd, progress, device=device, sw_batch_size=bs, out_device=device)
            mark("model (windows)", device)
            if progress is not None:
                progress.step("post-processing", 1.0)
            if resample_needed:
                prob = resample(prob[None], target, sp_ijk_can, size=in_size)[0]
            mark("resample back", device)
            if keep_probabilities:
                kept["prob"] = prob.float().cpu()
            lab = class_labels(prob, cfg.threshold).cpu()
            mark("argmax", device)
            return lab

        kept = {}
        batches = tuple(sorted({cfg.sw_batch_size, 2, 1}, reverse=True))
        labels, used_device, tried = run_with_fallback(
            run, self.device, batches, notify=lambda m: (notes.append(m), fallback_notify and fallback_notify(m)))
        labels = labels.numpy().transpose(2, 1, 0)  # (k, j, i), canonical
        vox_ml = float(np.prod(geom.spacing)) / 1000.0

        def organ_mask(name):
            m = postprocess(labels == self.classes.index(name), cfg.largest_component, cfg.fill_holes)
            m = from_canonical(m, perm, flips)
            assert m.shape == arr.shape
            return m

        mask = organ_mask("liver")
        extra = {o: organ_mask(o) for o in organs}
        mark("largest component + holes")
        timings = {name: round(t - marks[i][1], 4) for i, (name, t) in enumerate(marks[1:])}
        info = dict(volume_ml=float(mask.sum()) * vox_ml, seconds=time.perf_counter() - t0, timings_s=timings,
                    device=str(used_device), weights_id=self.weights_id, resampled=resample_needed, notes=notes,
                    organs=extra, organ_volumes_ml={o: float(m.sum()) * vox_ml for o, m in extra.items()})
        if keep_probabilities:      # (C, i, j, k) canonical -> (C, k, j, i) in the input's orientation
            can_prob = kept["prob"].numpy().transpose(0, 3, 2, 1)
            info["probabilities"] = np.stack([from_canonical(c, perm, flips) for c in can_prob])
        if used_device.type == "cuda":
            g = self._graphed
            info["cuda_graph"] = ("off (config)" if not cfg.cuda_graphs else f"off: {g.failed}" if g and g.failed
                                  else "on")
        return mask, info
