"""Reading ultrasound images and checking them before they reach the model.

PNG / JPEG / BMP / TIFF / GIF / WebP through Pillow (8- and 16-bit, grayscale, palette, RGB, RGBA; one frame);
DICOM and other formats through SimpleITK. Every failure is an ImageError naming the file and what is wrong.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from slicer_ai_common.messages import itk_error_text

PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp")
IMAGE_SUFFIXES = PILLOW_SUFFIXES + (".dcm",)


class ImageError(ValueError):
    """The input is not a classifiable 2D image (unreadable, empty, constant, NaN, 3D, ...)."""


MIN_SIGNAL = 0.01        # an ultrasound image has tissue in far more than 1 % of its pixels (BUSI: 40-99 %)
MAX_PIXELS = 50_000_000   # 50 MP: far above any ultrasound frame (<= 1920 x 1080), far below memory trouble


def _check_size(p: Path, width: int, height: int):
    if width * height > MAX_PIXELS:
        raise ImageError(f"{p.name}: {width} x {height} pixels is above the limit of {MAX_PIXELS // 10**6} "
                         "megapixels; downscale it first")


def _pick_frame(p: Path, n: int, frame: int | None) -> int:
    """0-based index of the frame to classify in a file of n frames: a cine loop needs a choice; a
    single-frame file ignores it."""
    if n == 1:
        return 0
    if frame is None:
        raise ImageError(f"{p.name}: {n} frames (a cine loop); choose one frame (--frame 1..{n})")
    if not 1 <= frame <= n:
        raise ImageError(f"{p.name}: frame {frame} asked for, the file has {n} (1..{n})")
    return frame - 1


def read_image(path: os.PathLike, frame: int | None = None) -> tuple[np.ndarray, tuple[float, float]]:
    """-> (array (H, W) or (H, W, C), pixel spacing (x, y) in mm; (1, 1) where the file has none).
    `frame` (1-based) picks one frame of a multi-frame file (DICOM cine, animated GIF, multi-page TIFF);
    without it such a file is refused; single-frame files ignore it."""
    arr, spacing, _ = read_image_frame(path, frame)
    return arr, spacing


def read_image_frame(path: os.PathLike, frame: int | None = None) -> tuple[np.ndarray, tuple[float, float], int]:
    """`read_image`, and how many frames the file holds (1 for a still image)."""
    p = Path(path)
    if not p.exists():
        raise ImageError(f"{p}: no such file")
    if p.is_dir():
        raise ImageError(f"{p}: is a folder, not an image")
    if not p.is_file():                              # a FIFO, socket or device would block or never end
        raise ImageError(f"{p}: not a regular file")
    if p.stat().st_size == 0:
        raise ImageError(f"{p}: empty file")
    if p.suffix.lower() in PILLOW_SUFFIXES:
        try:
            from PIL import Image
            with Image.open(p) as im:
                _check_size(p, im.width, im.height)     # refused before decoding: no gigabytes for one image
                n = getattr(im, "n_frames", 1)
                k = _pick_frame(p, n, frame)            # animated GIF / WebP, multi-page TIFF
                if k:
                    im.seek(k)
                im.load()
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif im.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGB")
                elif im.mode == "LA":
                    im = im.convert("L")
                arr = np.asarray(im)
            return arr, (1.0, 1.0), n
        except ImageError:
            raise
        except Exception as e:  # noqa: BLE001 - any decoder failure is "not a readable image"
            raise ImageError(f"{p.name}: not a readable image ({e})") from e
    try:
        import SimpleITK as sitk
        info = sitk.ImageFileReader()
        info.SetFileName(str(p))
        info.ReadImageInformation()                  # the header only: refuse huge images before decoding
        _check_size(p, *info.GetSize()[:2])
        img = sitk.ReadImage(str(p))
    except ImageError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ImageError(f"{p.name}: not a readable image ({itk_error_text(e)})") from e
    arr = sitk.GetArrayFromImage(img)          # (z, y, x[, c]) or (y, x[, c])
    sp = img.GetSpacing()
    n = img.GetSize()[2] if img.GetDimension() == 3 else 1
    if img.GetDimension() == 3:
        arr = arr[_pick_frame(p, n, frame)]
    return arr, (float(sp[0]), float(sp[1])), n


def check_image(arr: np.ndarray, name: str = "image") -> np.ndarray:
    """Validate and return (H, W, 3) float32 in [0, 1]. Grayscale is replicated to 3 channels, alpha dropped."""
    a = np.asarray(arr)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ImageError(f"{name}: pixel type {a.dtype} is not numeric")
    if a.ndim == 3 and a.shape[0] == 1 and a.shape[-1] not in (1, 3, 4):
        a = a[0]                                  # one-slice volume (1, H, W)
    if a.ndim == 3 and a.shape[-1] in (1, 3, 4):
        a = a[..., :3] if a.shape[-1] != 1 else a[..., 0]
    elif a.ndim == 3:
        raise ImageError(f"{name}: a 3D array of shape {a.shape}; a 2D image (one slice or frame) is needed")
    if a.ndim != 2 and not (a.ndim == 3 and a.shape[-1] == 3):
        raise ImageError(f"{name}: expected a 2D grayscale or RGB image, got shape {a.shape}")
    if a.size == 0 or min(a.shape[:2]) == 0:
        raise ImageError(f"{name}: empty image (shape {a.shape})")
    if min(a.shape[:2]) < 16:
        raise ImageError(f"{name}: image too small ({a.shape[1]} x {a.shape[0]} pixels; at least 16 x 16)")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise ImageError(f"{name}: {int((~np.isfinite(a)).sum())} pixels are NaN or infinite")
    a = a.astype(np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi - lo <= 0:
        raise ImageError(f"{name}: constant image (every pixel is {lo:g}); nothing to classify")
    signal = float((a > lo).mean()) if a.ndim == 2 else float((a > lo).any(axis=-1).mean())
    if signal < MIN_SIGNAL:                       # a black frame with a few marks is not an ultrasound image
        raise ImageError(f"{name}: nearly blank image ({100 * signal:.2g}% of pixels above the background); "
                         "nothing to classify")
    if np.asarray(arr).dtype == np.uint8:
        a = a / 255.0
    else:                                         # 16-bit, float: scale the image's own range to [0, 1]
        a = (a - lo) / (hi - lo)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return a.astype(np.float32)


def list_images(folder: os.PathLike) -> list[Path]:
    """Image files under folder (recursive, sorted), skipping BUSI's `*_mask*.png` annotation files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{folder}: not a folder")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and "_mask" not in p.stem)
