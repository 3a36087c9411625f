"""DICOM Segmentation (SEG) objects of the organ masks, written with highdicom (the field's library; no
DICOM is encoded by hand here): one binary segment per organ, on the frames of the source MR series
(slice k of the mask is source file k, as `volumes.dicom_series_files` orders them), referencing it, with
each segment's SNOMED CT category, type and modifier, its display colour, and the algorithm's
identification (name, version, weights id), so that a PACS viewer or Slicer's DICOM module shows it on
the images it came from. `build_volume_report` adds the organs' volumes as a TID 1500 measurement report
(Comprehensive 3D SR) that references the SEG's segments.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from slicer_ai_common.dependencies import require_highdicom
from slicer_ai_common.dicom_sr import measurement_report_sr

from .volumes import VolumeError

Code3 = tuple  # (value, scheme designator, meaning), e.g. ("10200004", "SCT", "Liver")


@dataclass
class SegSegment:
    label: str                      # "Liver"
    mask: np.ndarray                # (k, j, i) in the source series' slice order, nonzero = inside
    category: Code3                 # ("123037004", "SCT", "Anatomical Structure")
    type: Code3                     # ("10200004", "SCT", "Liver")
    modifier: Optional[Code3] = None  # ("24028007", "SCT", "Right") for the right kidney
    color: Optional[tuple] = None   # RGB in 0..1


def parse_slicer_terminology(term: str) -> tuple:
    """Slicer's terminology string ("list~SCT^123037004^Anatomical Structure~SCT^10200004^Liver~^^~...")
    -> (category, type, modifier or None) as (value, scheme, meaning) triples."""
    parts = term.split("~")

    def code(p):
        f = p.split("^")
        return (f[1], f[0], f[2]) if len(f) == 3 and f[0] and f[1] else None

    if len(parts) < 4 or code(parts[1]) is None or code(parts[2]) is None:
        raise ValueError(f"not a Slicer terminology entry: {term!r}")
    return code(parts[1]), code(parts[2]), code(parts[3])


def build_dicom_seg(source_files: Sequence[os.PathLike], segments: Sequence[SegSegment], *,
                    algorithm_name: str, algorithm_version: str, weights_id: str,
                    series_description: str = "AI segmentation (review before use)"):
    """-> a highdicom Segmentation dataset (not yet written)."""
    require_highdicom("DICOM SEG output")
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(str(f)) for f in source_files]
    if not sources:
        raise VolumeError("DICOM SEG: no source images")
    shape = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    for s in segments:
        if tuple(s.mask.shape) != shape:
            raise VolumeError(f"DICOM SEG: the {s.label} mask is {tuple(s.mask.shape)} (k, j, i), the source series "
                              f"{shape}: the mask must be on the source images' grid")
    algo = hd.AlgorithmIdentificationSequence(name=algorithm_name, version=f"{algorithm_version} weights {weights_id}",
                                              family=codes.cid7162.ArtificialIntelligence)
    descs = []
    for n, s in enumerate(segments, start=1):
        d = hd.seg.SegmentDescription(
            segment_number=n, segment_label=s.label,
            segmented_property_category=hd.sr.CodedConcept(*s.category),
            segmented_property_type=hd.sr.CodedConcept(*s.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algo,
            tracking_uid=hd.UID(), tracking_id=f"{s.label} ({weights_id})",
            display_color=hd.color.CIELabColor.from_rgb(*[int(round(255 * c)) for c in s.color]) if s.color else None)
        if s.modifier is not None:
            d.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept(*s.modifier)]
        descs.append(d)
    pixels = np.stack([np.asarray(s.mask) != 0 for s in segments], axis=-1)     # (frames, rows, columns, segments)
    ref = sources[0]
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descs, series_instance_uid=hd.UID(),
        series_number=int(getattr(ref, "SeriesNumber", 0) or 0) + 1000, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="Slicer Liver & Ultrasound AI", manufacturer_model_name=algorithm_name,
        software_versions=algorithm_version, device_serial_number=weights_id, series_description=series_description,
        content_label="AI_SEG", omit_empty_frames=False)


def write_dicom_seg(path: os.PathLike, source_files, segments, **kw):
    """build_dicom_seg(...) written to path (callers stage the path; see srma-segment)."""
    build_dicom_seg(source_files, segments, **kw).save_as(str(path))


def build_volume_report(seg, source_files: Sequence[os.PathLike], volumes_ml: Sequence[float], *,
                        algorithm_name: str, algorithm_version: str, weights_id: str,
                        series_description: str = "AI organ volumes (review before use)"):
    """A TID 1500 Measurement Report (Comprehensive 3D SR, highdicom) of the organ volumes of a SEG built
    by `build_dicom_seg`: one volumetric ROI group per segment, which references that segment of the SEG
    and its source series, names the organ (SNOMED CT finding site, as the segment's property type) and holds
    one measurement, Volume in mL (UCUM), with the algorithm's identification. `volumes_ml[n - 1]` is segment
    n's volume. -> the SR dataset (not yet written)."""
    require_highdicom("A DICOM volume report")
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    n_seg = len(seg.SegmentSequence)
    if len(volumes_ml) != n_seg:
        raise ValueError(f"{len(volumes_ml)} volumes for a SEG of {n_seg} segments")
    sources = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in source_files]
    algo = hd.sr.AlgorithmIdentification(name=algorithm_name, version=f"{algorithm_version} weights {weights_id}")
    groups = []
    for n, (item, ml) in enumerate(zip(seg.SegmentSequence, volumes_ml), start=1):
        organ = item.SegmentedPropertyTypeCodeSequence[0]
        site = hd.sr.CodedConcept(organ.CodeValue, organ.CodingSchemeDesignator, organ.CodeMeaning)
        modifier = getattr(organ, "SegmentedPropertyTypeModifierCodeSequence", None)
        laterality = (hd.sr.CodedConcept(modifier[0].CodeValue, modifier[0].CodingSchemeDesignator,
                                         modifier[0].CodeMeaning) if modifier else None)
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{item.SegmentLabel} volume"),
            # the segment by number, without frame numbers: the standard allows one or the other (dciodvfy:
            # "shall not be present when ReferencedFrameNumber is present"); highdicom's from_segmentation
            # gives both, and fails on a one-segment SEG
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=n,
                source_series=hd.sr.SourceSeriesForSegmentation(sources[0].SeriesInstanceUID)),
            finding_type=site, algorithm_id=algo,
            finding_sites=[hd.sr.FindingSite(site, laterality=laterality)],
            measurements=[hd.sr.Measurement(name=codes.SCT.Volume, value=float(ml),
                                            unit=hd.sr.CodedConcept("mL", "UCUM", "milliliter"),
                                            algorithm_id=algo)]))
    return measurement_report_sr(
        groups, evidence=sources + [seg], procedure=("113091000", "SCT", "Magnetic resonance imaging"),
        device_name=algorithm_name, model_name=weights_id, three_d=True,
        series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1001, series_description=series_description)
