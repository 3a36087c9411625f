"""srma-segment: liver segmentation from the command line, through the module's logic on slicer-core.

    srma-segment INPUT -o OUTPUT [--device cpu|cuda] [--weights FILE] [--reference LABELS]
                 [--organs liver,spleen,kidneys] [--tta] [--json]
    srma-segment INPUT_FOLDER -o OUTPUT_FOLDER [--format nii.gz|nrrd|seg.nrrd] [--dicom-seg]
    srma-segment DICOM_STUDY_FOLDER --list-series

INPUT: NIfTI, NRRD or MHA file, or a DICOM folder: one series, or a whole study (searched recursively;
the series to segment is the only one, else the only non-localizer volume, else the only one whose
description says T2; otherwise the run stops with the list and --series UID|NUMBER|PATTERN picks one;
the chosen series is named on stderr and in the JSON report). Multi-frame (enhanced) MR, series that
mix slice orientations and series with a missing slice are refused with the reason. OUTPUT ending in .nii.gz / .nii / .nrrd:
uint8 labelmap (1 = liver; with --organs also 2 = right kidney, 3 = left kidney, 4 = spleen, as in
CHAOS) with the input's geometry; ending in .seg.nrrd: a Slicer segmentation (one segment per organ,
SNOMED CT terminology); ending in .dcm (DICOM series input only): a DICOM Segmentation object on the
source images, referencing them (highdicom; one segment per organ, SNOMED CT codes, the algorithm and
weights id). A JSON report (organ volumes, timing, device, weights) is written beside it (OUTPUT stem +
.json). Ending in .sr.dcm (with a .dcm SEG output in the same run): a DICOM structured report (TID 1500
measurement report, highdicom) of each organ's volume in mL, referencing its segment in the SEG and the
source series. In folder mode, --dicom-seg also writes a .dcm SEG for every DICOM series input, and
--dicom-sr a SEG and its .sr.dcm report.
A folder of volumes in gives a folder of results out, one line of progress per volume.

Safety: an output may never be the input; every output folder is checked for writing before the model
loads; the outputs of one input (volumes and JSON report) are written under temporary names beside
their targets and renamed into place together only when all were written, so a failed or interrupted run
leaves earlier results untouched and no half-set; two inputs of one folder with the same stem
(case.nii.gz, case.nrrd) get distinct output names; a --reference on another grid than the input
is refused, not compared voxel by voxel.

Exit status: 0 all done, 1 some inputs failed, 2 nothing done (bad arguments or input), 3 the weights
could not be loaded, 130 interrupted (Ctrl-C; no partial output).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from slicer_ai_common.dependencies import package_version
from slicer_ai_common.outputs import StagedOutputs, check_writable, console_entry

_VOL_EXT = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
_OUT_EXT = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".dcm")


def _stem(p: Path) -> str:
    n = p.name
    for e in (".seg.nrrd",) + _VOL_EXT + (".sr.dcm", ".dcm"):
        if n.endswith(e):
            return n[: -len(e)]
    return p.stem


def _earlier_output(f: Path) -> bool:
    """A result of an earlier srma-segment run: NAME_liver.EXT with its report NAME_liver.json beside it."""
    st = _stem(f)
    rep = f.parent / (st + ".json")
    if not st.endswith("_liver") or not rep.is_file():
        return False
    try:
        return "liver_volume_ml" in json.loads(rep.read_text())
    except (OSError, ValueError, TypeError):
        return False


def _unique_outputs(inputs, folder: Path, fmt: str):
    """One output per input in folder mode; inputs sharing a stem (case.nii.gz, case.nrrd) keep their
    extension in the name so that neither result replaces the other."""
    stems = [_stem(f) for f in inputs]
    out = []
    for f, st in zip(inputs, stems):
        if stems.count(st) > 1:
            st = st + "_" + f.name[len(st):].lstrip(".").replace(".", "_") if f.name != st else st + "_dicom"
        out.append(folder / f"{st}_liver.{fmt}")
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_same_grid(ref_arr, ref_geom, arr, geom, name):
    """A reference must lie on the input's voxel grid (same shape, spacing, origin, direction)."""
    from SRMASegmenterLib.volumes import VolumeError
    if ref_arr.shape != arr.shape:
        raise VolumeError(f"reference {name} has {ref_arr.shape[::-1]} voxels, the input {arr.shape[::-1]}: "
                          "it is not on the input's grid; resample it onto the input first")
    if not ref_geom.equals(geom, tol=1e-3):
        raise VolumeError(f"reference {name} is not on the input's grid (spacing {tuple(ref_geom.spacing)} vs "
                          f"{tuple(geom.spacing)}, origin {tuple(ref_geom.origin)} vs {tuple(geom.origin)}, or the "
                          "direction differs); resample it onto the input first")


def _write_seg(path, source_files: list, res, weights_id: str):
    """The organ masks of one result as a DICOM SEG on the source series (its files in slice order);
    returns the SEG dataset (a report references it)."""
    from SRMASegmenterLib.dicom_seg import SegSegment, build_dicom_seg, parse_slicer_terminology
    from SRMASegmenterLogic import LIVER, ORGANS

    segs = []
    for name, term, color, mask in [(LIVER[0], LIVER[1], LIVER[2], res.mask)] + [
            (ORGANS[o][0], ORGANS[o][1], ORGANS[o][2], m) for o, m in res.info["organs"].items()]:
        cat, typ, mod = parse_slicer_terminology(term)
        segs.append(SegSegment(name, mask, cat, typ, mod, color))
    seg = build_dicom_seg(source_files, segs, algorithm_name="SRMA-Mamba", algorithm_version=package_version(),
                          weights_id=weights_id)
    seg.save_as(str(path))
    return seg


def _write_sr(path, seg, source_files: list, res, weights_id: str):
    """The organ volumes (mL) of one result as a TID 1500 report referencing the SEG's segments, in the
    SEG's segment order (liver, then the other organs asked for)."""
    from SRMASegmenterLib.dicom_seg import build_volume_report
    volumes = [res.info["volume_ml"]] + [res.info["organ_volumes_ml"][o] for o in res.info["organs"]]
    build_volume_report(seg, source_files, volumes, algorithm_name="SRMA-Mamba", algorithm_version=package_version(),
                        weights_id=weights_id).save_as(str(path))


class Runner:
    """One slicer-core application, one logic, one loaded model, reused for every input."""

    def __init__(self, device="auto", weights=None):
        try:
            from trame_slicer.core import SlicerApp
        except ImportError as e:
            raise SystemExit("srma-segment needs slicer-core: pip install 'trame-slicer[standalone]==2.0.0' "
                             f"({e})")
        from SRMASegmenterLogic import SRMASegmenterLogic

        self.app = SlicerApp()
        self.logic = SRMASegmenterLogic(self.app.scene, self.app.segmentations_logic)
        self.segmenter = self.logic.segmenter(device, weights)

    def segment(self, inp: Path, outs: list, reference: Path | None = None, organs=None, series=None,
                found: list | None = None):
        """found: the DICOM series `find_dicom_series` listed under a folder input (read once, in main)."""
        from slicer_ai_mrml.nodes import scalar_volume_from_array
        from SRMASegmenterLogic import LIVER, ORGANS

        from SRMASegmenterLib.volumes import read_volume, write_volume

        chosen = None
        if inp.is_dir():                              # DICOM: the series chosen once, read, and referenced by a SEG
            from SRMASegmenterLib.volumes import choose_series, read_dicom_series
            chosen = choose_series(found or [], series, where=inp.name)
            arr, geom = read_dicom_series(chosen, inp)
        else:
            arr, geom = read_volume(inp)
        scene = self.app.scene
        vol = scalar_volume_from_array(scene, arr, geom=geom, name=_stem(inp))
        ref_node = res = None
        try:
            if reference is not None:
                from slicer_ai_mrml.nodes import import_mask_as_segment
                ref_arr, ref_geom = read_volume(reference)
                _check_same_grid(ref_arr, ref_geom, arr, geom, Path(reference).name)
                ref_node, _, _ = import_mask_as_segment(scene, self.logic.segmentations_logic, ref_arr == 1, vol,
                                                        name="Reference", color=LIVER[2], terminology=LIVER[1],
                                                        show_3d=False)
            res = self.logic.run(vol, reference_segmentation=ref_node, segmenter=self.segmenter, organs=organs)
            labelmap = res.mask.astype("uint8")
            for o, m in res.info["organs"].items():
                labelmap[(m > 0) & (labelmap == 0)] = ORGANS[o][3]
            with StagedOutputs(_OUT_EXT) as staged:   # all outputs of this input appear together or not at all
                seg = None                                # the DICOM SEG of this run, which a report references
                for out in sorted(outs, key=lambda o: o.name.endswith(".sr.dcm")):   # a report after its SEG
                    out.parent.mkdir(parents=True, exist_ok=True)
                    tmp = staged.temp(out)
                    if out.name.endswith(".seg.nrrd"):
                        st = res.segmentation_node.CreateDefaultStorageNode()
                        st.SetFileName(str(tmp))
                        if not st.WriteData(res.segmentation_node):
                            raise RuntimeError(f"could not write {out}")
                    elif out.name.endswith(".sr.dcm"):
                        _write_sr(tmp, seg, chosen.files, res, self.segmenter.weights_id)
                    elif out.name.endswith(".dcm"):
                        seg = _write_seg(tmp, chosen.files, res, self.segmenter.weights_id)
                    else:
                        write_volume(labelmap, geom, tmp)
                out = outs[0]
                report = dict(input=str(inp), output=[str(o) for o in outs], liver_volume_ml=res.info["volume_ml"],
                              organ_volumes_ml=res.info["organ_volumes_ml"],
                              seconds=res.info["seconds"], device=res.info["device"], weights=res.info["weights_id"],
                              resampled=res.info["resampled"], notes=res.info["notes"],
                              geometry=dict(spacing=list(geom.spacing), origin=list(geom.origin),
                                            direction=[list(r) for r in geom.direction]))
                if chosen is not None:
                    report["series"] = dict(uid=chosen.uid, number=chosen.number, description=chosen.description,
                                            study_uid=chosen.study_uid, images=len(chosen.files))
                if res.metrics:
                    report["metrics"] = res.metrics
                json_path = out.parent / (_stem(out) + ".json")
                staged.temp(json_path).write_text(json.dumps(report, indent=1))
            report["report"] = str(json_path)
            return report
        finally:  # the scene is reused for the next input: leave nothing behind
            for n in (vol, ref_node):
                if n is not None and scene.IsNodePresent(n):
                    scene.RemoveNode(n)
            if res is not None:
                for n in (res.segmentation_node, res.table_node):
                    if scene.IsNodePresent(n):
                        scene.RemoveNode(n)


def main(argv=None):
    p = argparse.ArgumentParser(prog="srma-segment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="volume file, DICOM series folder, or a folder of volumes")
    p.add_argument("-o", "--output", action="append",
                   help="output file (repeat for several formats), or folder for a folder input")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "gpu"])
    p.add_argument("--weights", help="model folder (with model.json), .safetensors or .pth")
    p.add_argument("--reference", help="labelmap of the liver (label 1) to compute Dice, HD95, ... against")
    p.add_argument("--roi", type=int, nargs=3, metavar=("I", "J", "K"),
                   help="window size on the model's grid (each divisible by 16; default: the model's own)")
    p.add_argument("--organs", default="liver",
                   help="organs to segment, comma-separated: liver (always), spleen, kidneys (or right_kidney, "
                        "left_kidney); default liver")
    p.add_argument("--tta", action="store_true", help="mirror test-time augmentation (slower)")
    p.add_argument("--format", default="nii.gz", choices=["nii.gz", "nrrd", "seg.nrrd"],
                   help="output format in folder mode")
    p.add_argument("--dicom-seg", action="store_true",
                   help="folder mode: also write a DICOM SEG (.dcm) for every DICOM series input")
    p.add_argument("--dicom-sr", action="store_true",
                   help="folder mode: also write a DICOM SEG and its volume report (.sr.dcm) for every DICOM input")
    p.add_argument("--series", help="DICOM: the series to segment (SeriesInstanceUID, series number, or a "
                                     "case-insensitive pattern of the series description)")
    p.add_argument("--list-series", action="store_true", help="DICOM: list the series under INPUT and exit")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list of the reports on stdout instead of progress lines (as ultrascan-classify)")
    a = p.parse_args(argv)

    from slicer_ai_common.devices import DeviceError, resolve_device
    from slicer_ai_common.weights import WeightsError

    from SRMASegmenterLib.inference import NoWeightsError
    from SRMASegmenterLib.volumes import VolumeError, choose_series, find_dicom_series

    from SRMASegmenterLogic import parse_organs
    try:
        organs = parse_organs(a.organs)
    except ValueError as e:
        print(f"srma-segment: {e}", file=sys.stderr)
        return 2
    inp = Path(a.input)
    if not inp.exists():
        print(f"srma-segment: input not found: {inp}", file=sys.stderr)
        return 2
    series = find_dicom_series(inp) if inp.is_dir() else []
    if a.list_series:
        if not series:
            print(f"srma-segment: no DICOM series under {inp}", file=sys.stderr)
            return 2
        rows = [dict(uid=s.uid, number=s.number, description=s.description, modality=s.modality,
                     images=len(s.files), frames=s.frames, rows=s.rows, columns=s.columns,
                     localizer=s.is_localizer, study_uid=s.study_uid, folder=str(Path(s.files[0]).parent))
                for s in series]
        print(json.dumps(rows, indent=1) if a.json else "\n".join(s.label() for s in series))
        return 0
    if not a.output:
        p.error("the following arguments are required: -o/--output")
    outs = [Path(o) for o in a.output]
    out = outs[0]
    # one study (all its DICOM series share a StudyInstanceUID, no volume files beside them) is one input
    study = bool(series) and len({s.study_uid for s in series}) == 1 and not any(
        f.is_file() and f.name.endswith(_VOL_EXT) for f in inp.iterdir())
    folder_mode = inp.is_dir() and not study
    found = {inp: series} if study else {}          # DICOM input folder -> its series, listed once
    if study:
        try:
            chosen = choose_series(series, a.series, where=inp.name)
        except VolumeError as e:
            print(f"srma-segment: {e}", file=sys.stderr)
            return 2
        if len(series) > 1:
            print(f"srma-segment: {len(series)} series in {inp.name}; segmenting {chosen.label()}", file=sys.stderr)
    if folder_mode:
        found = {d: s for d in sorted(inp.iterdir()) if d.is_dir() and (s := find_dicom_series(d))}
        inputs = sorted([f for f in inp.iterdir() if f.is_file() and f.name.endswith(_VOL_EXT)] + list(found))
        for f in [f for f in inputs if _earlier_output(f)]:   # a re-run into the input folder: not MRIs
            print(f"srma-segment: skipping {f.name}: a result of an earlier run (its report {_stem(f)}.json is "
                  "beside it)", file=sys.stderr)
            inputs.remove(f)
        if not inputs:
            print(f"srma-segment: no volumes in {inp}", file=sys.stderr)
            return 2
        # every folder among the inputs is a DICOM series: --dicom-seg adds a .dcm SEG beside its result
        def dicom_outs(src, dst):
            if not src.is_dir():
                return []
            return ([dst.parent / (_stem(dst) + ".dcm")] if a.dicom_seg or a.dicom_sr else []) + (
                [dst.parent / (_stem(dst) + ".sr.dcm")] if a.dicom_sr else [])
        jobs = [(src, [dst] + dicom_outs(src, dst))
                for src, dst in zip(inputs, _unique_outputs(inputs, out, a.format))]
    else:
        bad = [o for o in outs if not o.name.endswith(_OUT_EXT)]
        if bad:
            print(f"srma-segment: output must end in one of {', '.join(_OUT_EXT)}: {bad[0]}", file=sys.stderr)
            return 2
        srs = [o for o in outs if o.name.endswith(".sr.dcm")]
        if srs and not any(o.name.endswith(".dcm") and not o.name.endswith(".sr.dcm") for o in outs):
            print(f"srma-segment: a DICOM report ({srs[0].name}) references the DICOM SEG of the same run: add a "
                  "-o NAME.dcm output", file=sys.stderr)
            return 2
        if any(o.name.endswith(".dcm") for o in outs) and not inp.is_dir():   # (a folder here is a DICOM series)
            print(f"srma-segment: a DICOM SEG output (.dcm) needs a DICOM series folder as input; {inp} is not one",
                  file=sys.stderr)
            return 2
        jobs = [(inp, outs)]
    if any(o.name.endswith(".dcm") for _, d in jobs for o in d):
        try:                                  # before the model loads
            from slicer_ai_common.dependencies import require_highdicom
            require_highdicom("DICOM SEG / SR output")
        except RuntimeError as e:
            print(f"srma-segment: {e}", file=sys.stderr)
            return 2
    for src, dst in jobs:                     # before any model work: never the input, always writable
        for o in dst:
            if _same_file(o, src) or (src.is_dir() and o.resolve().is_relative_to(src.resolve())
                                      and not folder_mode):
                print(f"srma-segment: output {o} would overwrite or write into the input {src}; choose another name",
                      file=sys.stderr)
                return 2
            json_report = o.parent / (_stem(o) + ".json")
            if _same_file(json_report, src):
                print(f"srma-segment: the report {json_report} would overwrite the input", file=sys.stderr)
                return 2
    try:
        resolve_device(a.device)                 # a missing GPU is a usage error (2), found before any work
    except DeviceError as e:
        print(f"srma-segment: {e}", file=sys.stderr)
        return 2
    try:
        for folder in sorted({o.parent for _, d in jobs for o in d}):
            check_writable(folder)
    except ValueError as e:
        print(f"srma-segment: {e}", file=sys.stderr)
        return 2
    try:
        runner = Runner(a.device, a.weights)
    except (NoWeightsError, WeightsError, RuntimeError) as e:
        print(f"srma-segment: {e}", file=sys.stderr)
        return 3
    if a.roi:
        if any(r % 16 for r in a.roi):
            print("srma-segment: --roi sizes must be divisible by 16", file=sys.stderr)
            return 2
        runner.segmenter.config.roi_size = tuple(a.roi)
    runner.segmenter.config.tta = a.tta
    missing = [o for o in organs if o not in runner.segmenter.organs]
    if missing:
        print(f"srma-segment: the model {runner.segmenter.weights_id} does not segment {', '.join(missing)}",
              file=sys.stderr)
        return 2
    failures = 0
    reports = []
    t0 = time.perf_counter()
    for i, (src, dst) in enumerate(jobs, 1):
        try:
            if folder_mode and dst[0].exists():
                print(f"[{i}/{len(jobs)}] {src.name}: replacing the earlier result {dst[0]}", file=sys.stderr,
                      flush=True)
            r = runner.segment(src, dst, Path(a.reference) if a.reference and not folder_mode else None, organs,
                               series=a.series, found=found.get(src))
            reports.append(r)
            if a.json:
                continue
            extra = f", Dice {r['metrics']['dice']:.3f}" if "metrics" in r else ""
            more = "".join(f", {o.replace('_', ' ')} {v:.0f} mL" for o, v in r["organ_volumes_ml"].items())
            print(f"[{i}/{len(jobs)}] {src.name}: liver {r['liver_volume_ml']:.0f} mL{more} in {r['seconds']:.1f} s on "
                  f"{r['device']}{extra} -> {', '.join(r['output'])}", flush=True)
        except (VolumeError, ValueError, RuntimeError, OSError) as e:
            failures += 1
            print(f"[{i}/{len(jobs)}] {src.name}: FAILED: {e}", file=sys.stderr, flush=True)
    if a.json:
        print(json.dumps(reports, indent=1))
    elif len(jobs) > 1:
        print(f"{len(jobs) - failures} of {len(jobs)} segmented in {time.perf_counter() - t0:.0f} s")
    return 1 if failures else 0


def entry():
    """Console script: Ctrl-C ends with status 130 and no partial output (the staged files are removed)."""
    return console_entry(main, "srma-segment", "; no partial output was left")


if __name__ == "__main__":
    sys.exit(entry())
