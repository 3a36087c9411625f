"""Reading, checking and writing volumes with their geometry (SimpleITK), and the canonical orientation.

Arrays are numpy in (k, j, i) order, as SimpleITK and Slicer's arrayFromVolume give them. Geometry is
ITK's LPS: spacing (i, j, k), origin, direction (3x3, column n = direction of axis n).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slicer_ai_common.geometry import Geometry  # noqa: F401 - the shared record; imported here for callers
from slicer_ai_common.messages import itk_error_text

# orientation of the training data (CHAOS T2 as distributed), LPS direction cosines
TRAIN_DIRECTION = np.diag([1.0, -1.0, 1.0])


class VolumeError(ValueError):
    """The input is not a volume the model can segment; the message says why."""


def distinct_values(a: np.ndarray) -> np.ndarray:
    """np.unique of an integer or bool array, by counting when the value range is small (one pass instead
    of a sort: 9.5 -> ~2 ms for the sampled slices of a 256 x 256 x 36 int16 MRI)."""
    lo, hi = int(a.min()), int(a.max())
    if hi - lo > 1 << 22:
        return np.unique(a)
    counts = np.bincount((a.astype(np.int64, copy=False) - lo).ravel(), minlength=hi - lo + 1)
    return (np.flatnonzero(counts) + lo).astype(a.dtype)


def check_array(arr: np.ndarray, what: str = "volume") -> np.ndarray:
    """Reject what the model cannot segment, with a specific message."""
    if arr.size == 0:
        raise VolumeError(f"the {what} is empty (shape {arr.shape})")
    if arr.ndim == 4 and arr.shape[-1] > 1:
        raise VolumeError(f"the {what} has {arr.shape[-1]} components per voxel (vector/RGB or 4D); "
                          "select a single-component (scalar) MRI volume")
    if arr.ndim == 4:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise VolumeError(f"the {what} must be 3D, got {arr.ndim}D with shape {arr.shape}")
    if min(arr.shape) < 2:
        raise VolumeError(f"the {what} is a 2D image (shape {arr.shape}); liver segmentation needs a 3D volume")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise VolumeError(f"the {what} has non-numeric or complex voxels ({arr.dtype}); a real-valued MRI is needed")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        n = int((~np.isfinite(arr)).sum())
        raise VolumeError(f"the {what} has {n} NaN or infinite voxels; fix or mask them first")
    if arr.max() == arr.min():
        raise VolumeError(f"the {what} is constant (every voxel {arr.flat[0]}); nothing to segment")
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
        values = distinct_values(arr[:: max(1, arr.shape[0] // 8)])  # a few slices suffice to tell
        if len(values) <= 16:
            raise VolumeError(f"the {what} holds only {len(values)} distinct values ({', '.join(map(str, values[:6]))}"
                              f"{', ...' if len(values) > 6 else ''}): it looks like a labelmap or mask, not an MRI; "
                              "select the image volume")
    return arr


def check_geometry(geom: "Geometry", what: str = "volume") -> "Geometry":
    """Spacing finite and positive, origin finite, direction a finite, invertible 3 x 3 matrix: volumes in
    mL and the result's placement depend on them."""
    sp = np.asarray(geom.spacing, dtype=float)
    if sp.shape != (3,) or not np.isfinite(sp).all() or (sp <= 0).any():
        raise VolumeError(f"the {what} has voxel spacing {tuple(geom.spacing)}; three positive numbers are needed")
    if not np.isfinite(np.asarray(geom.origin, dtype=float)).all():
        raise VolumeError(f"the {what} has a non-finite origin {tuple(geom.origin)}")
    d = np.asarray(geom.direction, dtype=float)
    if d.shape != (3, 3) or not np.isfinite(d).all() or abs(np.linalg.det(d)) < 1e-6:
        raise VolumeError(f"the {what} has an invalid direction matrix (non-finite or singular)")
    return geom


def _read_nifti_nibabel(p: Path):
    """NIfTI without SimpleITK (e.g. on a bare GPU machine): RAS affine -> LPS geometry, kji array."""
    import nibabel as nib

    img = nib.load(str(p))
    aff = np.asarray(img.affine, dtype=float)
    lps = np.diag([-1.0, -1.0, 1.0]) @ aff[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    arr = np.asanyarray(img.dataobj)
    if arr.ndim != 3:
        raise VolumeError(f"{p.name} is {arr.ndim}D; a 3D volume is needed")
    origin = np.diag([-1.0, -1.0, 1.0]) @ aff[:3, 3]
    return np.ascontiguousarray(arr.transpose(2, 1, 0)), Geometry(tuple(spacing), tuple(origin), lps / spacing)


_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8",
                 1280: "u8", 128: "u1", 2304: "u1", 32: "c8", 1792: "c16"}   # rgb24 / rgba32 as bytes


def _nifti_layout(raw: bytes):
    """(voxel offset, number of voxel bytes, numpy dtype of the stored voxels) from a NIfTI-1/2 header, or
    None when it is not one. Read from the header itself: ITK reports the pixel type after scl_slope /
    scl_inter scaling (float for a scaled int16 file), not what is stored on disk."""
    import struct
    for end in ("<", ">"):
        if len(raw) >= 348 and struct.unpack(end + "i", raw[:4])[0] == 348:
            dims = struct.unpack(end + "8h", raw[40:56])
            code, bitpix = struct.unpack(end + "hh", raw[70:74])
            off = struct.unpack(end + "f", raw[108:112])[0]
        elif len(raw) >= 540 and struct.unpack(end + "i", raw[:4])[0] == 540:
            code, bitpix = struct.unpack(end + "hh", raw[12:16])
            dims = struct.unpack(end + "8q", raw[16:80])
            off = struct.unpack(end + "q", raw[168:176])[0]
        else:
            continue
        try:
            n = int(np.prod([max(1, int(d)) for d in dims[1:1 + max(0, min(7, dims[0]))]], dtype=object))
            dt = np.dtype(end + _NIFTI_DTYPES[code]) if code in _NIFTI_DTYPES and code not in (128, 2304) else None
            return max(0, int(off)), max(0, n * bitpix // 8), dt
        except (ValueError, OverflowError):      # a corrupt header (NaN offset, ...): ITK's check decides
            return None
    return None


def _check_complete(p: Path, img):
    """ITK can return a truncated NIfTI/NRRD silently (zeros past the cut): check the bytes are all there.
    ITK also reads NaN / Inf voxels of a float NIfTI as 0: count them in the stored voxels and refuse."""
    import gzip

    name = p.name.lower()
    if not name.endswith((".nii.gz", ".nii")):
        return
    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(p, "rb") as f:
            head = f.read(540)
            lay = _nifti_layout(head)
            floats = lay is not None and lay[2] is not None and lay[2].kind == "f"
            if floats:                       # the voxels are needed to look for NaN / Inf
                data = head + f.read()
                total = len(data)
            else:                            # only the length: stream, do not hold the volume twice
                data, total = head, len(head)
                while True:
                    b = f.read(1 << 20)
                    if not b:
                        break
                    total += len(b)
    except (EOFError, OSError) as e:
        raise VolumeError(f"could not read {p.name}: the file is truncated or corrupt ({e})") from e
    if lay is None:
        need = img.GetNumberOfPixels() * img.GetNumberOfComponentsPerPixel() * img.GetSizeOfPixelComponent()
        if total < need:
            raise VolumeError(f"could not read {p.name}: the file is truncated ({total} bytes of data, {need} needed)")
        return
    off, nbytes, dt = lay
    if total < off + nbytes:
        raise VolumeError(f"could not read {p.name}: the file is truncated ({max(0, total - off)} bytes of voxel "
                          f"data, {nbytes} needed)")
    if dt is not None and dt.kind == "f":
        vox = np.frombuffer(data, dtype=dt, count=nbytes // dt.itemsize, offset=off)
        bad = int(vox.size - np.isfinite(vox).sum())
        if bad:
            raise VolumeError(f"{p.name} has {bad} NaN or infinite voxels (ITK would read them as 0); "
                              "fix or mask them first")


def _check_slice_positions(files, folder: Path, tol: float = 0.1):
    """A DICOM series must have evenly spaced slices: ITK reads a series with a missing or duplicated slice
    at one average spacing (a warning on the console nobody sees), misplacing every slice after the gap.
    Positions along the slice normal come from each file's header (ImagePositionPatient, orientation)."""
    import SimpleITK as sitk
    if len(files) < 3:
        return
    pos, iops = [], []
    for f in files:
        rd = sitk.ImageFileReader()
        rd.SetFileName(f)
        rd.ReadImageInformation()
        try:
            ipp = [float(v) for v in rd.GetMetaData("0020|0032").split("\\")]
            iop = [float(v) for v in rd.GetMetaData("0020|0037").split("\\")]
        except (RuntimeError, ValueError):
            return                                   # no positions to check (not a classic slice series)
        iops.append(iop)
        pos.append(float(np.dot(np.cross(iop[:3], iop[3:6]), ipp)))
    iops = np.asarray(iops)
    odd = np.flatnonzero(np.abs(iops - iops[0]).max(1) > 1e-3)
    if odd.size:                                     # ITK would stack them as if parallel
        raise VolumeError(f"{folder.name}: the DICOM series mixes slice orientations ({odd.size} of {len(files)} "
                          f"slices differ from the first, e.g. {Path(files[odd[0]]).name}): a localizer or "
                          "reformat mixed in; select a series of parallel slices")
    gaps = np.diff(np.sort(pos))
    step = float(np.median(gaps))
    if step <= 0 or np.any(gaps < (1 - tol) * step) or np.any(gaps > (1 + tol) * step):
        i = int(np.argmax(np.abs(gaps - step)))
        raise VolumeError(f"{folder.name}: the DICOM slices are not evenly spaced ({gaps[i]:.2f} mm between slices "
                          f"{i + 1} and {i + 2} of {len(files)}, {step:.2f} mm elsewhere): a slice is missing or "
                          "duplicated; load the complete series")


def _series_ids(folder) -> list:
    """GDCM's series IDs in a folder, without the ITK warning ("No Series were found", with its C++ source
    location) that GDCM prints on stderr for a folder that holds none."""
    import SimpleITK as sitk
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
_LOCALIZER = re.compile(r"locali[sz]er|\bloc\b|scout|survey|3.?plane|tri.?pilot|\bplan", re.I)


@dataclass
class DicomSeries:
    """One DICOM series found in a folder tree: what a user needs to tell it from the others, and its files
    in slice order (GDCM's sort by position: slice k of the volume is file k)."""
    uid: str
    study_uid: str
    number: str
    description: str
    modality: str
    image_type: str
    sop_class: str
    frames: int
    rows: int
    columns: int
    files: list = field(repr=False)

    @property
    def is_localizer(self) -> bool:
        return "LOCALIZER" in self.image_type.upper() or bool(_LOCALIZER.search(self.description))

    def label(self) -> str:
        n = f"{self.frames} frames" if self.frames > 1 else f"{len(self.files)} images"
        return (f"#{self.number or '?'} '{self.description}' {self.modality} {n} of {self.rows} x {self.columns}"
                f"{' (localizer)' if self.is_localizer else ''} [{self.uid}]")


def _tag(reader, key: str) -> str:
    try:
        return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""
    except RuntimeError:
        return ""


def find_dicom_series(root: os.PathLike) -> list:
    """Every DICOM series under `root` (recursively; a series is looked for in each folder), ordered by
    study, series number and description. Headers only: no pixel data is read."""
    import SimpleITK as sitk
    out = []
    for d, _, names in sorted(os.walk(root)):
        if not names:
            continue
        try:
            ids = _series_ids(d)
        except RuntimeError:
            continue
        for uid in ids:
            files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(d, uid))
            if not files:
                continue
            rd = sitk.ImageFileReader()
            rd.SetFileName(files[0])
            try:
                rd.ReadImageInformation()
            except RuntimeError:
                continue
            frames = _tag(rd, "0028|0008")
            out.append(DicomSeries(
                uid=_tag(rd, "0020|000e") or uid, study_uid=_tag(rd, "0020|000d"), number=_tag(rd, "0020|0011"),
                description=_tag(rd, "0008|103e"), modality=_tag(rd, "0008|0060"), image_type=_tag(rd, "0008|0008"),
                sop_class=_tag(rd, "0008|0016"), frames=int(frames) if frames.isdigit() else 1,
                rows=int(_tag(rd, "0028|0010") or 0), columns=int(_tag(rd, "0028|0011") or 0), files=files))
    key = (lambda s: (s.study_uid, int(s.number) if s.number.isdigit() else 1 << 30, s.description, s.uid))
    return sorted(out, key=key)


def choose_series(series: list, choice: str | None = None, prefer: str | None = "t2", where: str = "") -> DicomSeries:
    """The series to segment. `choice`: a SeriesInstanceUID, a series number, or a pattern (case-insensitive
    regular expression) of the description, which must pick exactly one. Without it: the only series; else
    the only one that is not a localizer and has at least 5 slices; else, among those, the only one whose
    description matches `prefer` (the model's sequence, T2). Anything else is refused with the list, so that
    the user picks."""
    where = f" in {where}" if where else ""
    if not series:
        raise VolumeError(f"no DICOM series{where}")
    listing = "; ".join(s.label() for s in series)
    if choice:
        hit = [s for s in series if s.uid == choice] or [s for s in series if s.number == choice]
        if not hit:
            try:
                rx = re.compile(choice, re.I)
            except re.error as e:
                raise VolumeError(f"--series {choice!r} is neither a series UID, a number nor a valid pattern ({e})")
            hit = [s for s in series if rx.search(s.description)]
        if len(hit) != 1:
            raise VolumeError(f"--series {choice!r} matches {len(hit)} of the {len(series)} series{where}: {listing}")
        return hit[0]
    if len(series) == 1:
        return series[0]
    volumes = [s for s in series if not s.is_localizer and (len(s.files) >= 5 or s.frames >= 5)]
    if len(volumes) == 1:
        return volumes[0]
    if prefer and len(volumes) > 1:
        rx = re.compile(prefer, re.I)
        pref = [s for s in volumes if rx.search(s.description)]
        if len(pref) == 1:
            return pref[0]
    raise VolumeError(f"{len(series)} DICOM series{where} and no single {prefer.upper() if prefer else ''} volume "
                      f"among them: {listing}; choose one with --series (UID, number or description pattern)")


def dicom_series_files(folder: os.PathLike, series: str | None = None) -> list:
    """The files of the DICOM series that `read_volume(folder, series)` reads, in slice order: slice k of the
    array is file k (used to reference the source images in a DICOM SEG)."""
    return choose_series(find_dicom_series(folder), series, where=Path(folder).name).files


def _check_series_readable(s: DicomSeries, where: str):
    """Refuse what the classic series reader would get wrong, with the reason."""
    if s.sop_class == ENHANCED_MR or s.frames > 1:
        raise VolumeError(f"{where}: series {s.label()} is multi-frame (enhanced) MR, whose per-frame geometry "
                          "the series reader would not apply; export it as classic MR images (one file per slice)")


def read_volume(path: os.PathLike, series: str | None = None):
    """NIfTI, NRRD, MHA, or a folder of DICOM (one series, or a study: `choose_series` picks, `series`
    overrides) -> (array kji, Geometry)."""
    p = Path(path)
    if not p.exists():
        raise VolumeError(f"input not found: {p}")
    if not p.is_dir() and not p.is_file():          # a FIFO, socket or device would block or never end
        raise VolumeError(f"{p} is not a regular file")
    try:
        import SimpleITK as sitk
    except ImportError:
        if p.name.endswith((".nii", ".nii.gz")):
            return _read_nifti_nibabel(p)
        raise
    if p.is_dir():
        return read_dicom_series(choose_series(find_dicom_series(p), series, where=p.name), p)
    try:
        img = sitk.ReadImage(str(p))
        _check_complete(p, img)
    except VolumeError:
        raise
    except Exception as e:  # truncated / not an image
        raise VolumeError(f"could not read {p.name}: {itk_error_text(e)}") from e
    return _from_sitk(img, p)


def read_dicom_series(chosen: DicomSeries, folder: os.PathLike):
    """One series found by `find_dicom_series` -> (array kji, Geometry); slice k is chosen.files[k]. Refuses
    multi-frame (enhanced) MR, mixed slice orientations and uneven slice positions, with the reason."""
    import SimpleITK as sitk
    p = Path(folder)
    _check_series_readable(chosen, p.name)
    _check_slice_positions(chosen.files, p)
    try:
        r = sitk.ImageSeriesReader()
        r.SetFileNames(chosen.files)
        img = r.Execute()
    except Exception as e:  # noqa: BLE001 - unreadable pixel data: ITK's reason
        raise VolumeError(f"could not read {p.name}: {itk_error_text(e)}") from e
    return _from_sitk(img, p)


def _from_sitk(img, p: Path):
    import SimpleITK as sitk
    if img.GetDimension() != 3:
        raise VolumeError(f"{p.name} is {img.GetDimension()}D; a 3D volume is needed")
    arr = sitk.GetArrayFromImage(img)
    geom = Geometry(img.GetSpacing(), img.GetOrigin(), np.array(img.GetDirection()).reshape(3, 3))
    return arr, geom


def write_volume(arr: np.ndarray, geom: Geometry, path: os.PathLike):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(float(s) for s in geom.spacing))
    img.SetOrigin(tuple(float(o) for o in geom.origin))
    img.SetDirection(tuple(float(d) for d in np.asarray(geom.direction).ravel()))
    sitk.WriteImage(img, str(path), useCompression=True)


def orientation_transform(direction: np.ndarray, target: np.ndarray = TRAIN_DIRECTION):
    """Axis permutation and flips that bring an array with `direction` closest to `target`.

    Returns (perm, flips) over array axes in (k, j, i) order: apply with `to_canonical`.
    """
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    t = np.asarray(target, dtype=float).reshape(3, 3)
    # for each target axis (i, j, k), the source axis whose direction is closest (dot product)
    dots = t.T @ d  # [target axis, source axis]
    src_for = [-1, -1, -1]
    used = set()
    for ta in np.argsort(-np.abs(dots).max(axis=1)):
        order = np.argsort(-np.abs(dots[ta]))
        sa = next(s for s in order if s not in used)
        used.add(sa)
        src_for[ta] = sa
    flips_ijk = [dots[ta, src_for[ta]] < 0 for ta in range(3)]
    # array axes are (k, j, i) = reversed ijk
    perm = tuple(2 - src_for[2 - ax] for ax in range(3))
    flips = tuple(bool(flips_ijk[2 - ax]) for ax in range(3))
    return perm, flips


def to_canonical(arr, perm, flips):
    out = np.transpose(arr, perm)
    for ax, f in enumerate(flips):
        if f:
            out = np.flip(out, axis=ax)
    return np.ascontiguousarray(out)


def from_canonical(arr, perm, flips):
    out = arr
    for ax, f in enumerate(flips):
        if f:
            out = np.flip(out, axis=ax)
    return np.ascontiguousarray(np.transpose(out, np.argsort(perm)))
