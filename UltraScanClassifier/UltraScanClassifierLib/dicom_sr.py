"""The classification of a DICOM ultrasound image as a DICOM structured report (highdicom; no DICOM is
encoded by hand): a TID 1500 measurement report (Comprehensive SR) whose image-level group references the
source image and holds

- the finding: a qualitative evaluation "Finding" = benign neoplasm / malignant neoplasm / normal
  (SNOMED CT), the class the model chose;
- one measurement per class: the calibrated probability of that class, unit "1" (UCUM, a fraction), named
  by a code of this project's private scheme 99SLICERAI (no standard code names "model probability of class
  X"), with the algorithm's identification (name, version, weights id) on each item.

A PACS or reporting tool shows it with the image it came from. Decision support, not a diagnosis: the
series description and the algorithm item say it was made by a model.
"""
from __future__ import annotations

import os

from slicer_ai_common.dependencies import require_highdicom
from slicer_ai_common.dicom_sr import measurement_report_sr

# class -> SNOMED CT concept of the finding
FINDINGS = {"benign": ("3898006", "SCT", "Neoplasm, benign"),
            "malignant": ("363346000", "SCT", "Malignant neoplastic disease"),
            "normal": ("17621005", "SCT", "Normal")}
PRIVATE_SCHEME = "99SLICERAI"


def build_classification_report(source: os.PathLike, label: str, probabilities: dict, *, algorithm_name: str,
                                 algorithm_version: str, weights_id: str, frame: int | None = None,
                                 series_description: str = "AI ultrasound classification (decision support)"):
    """-> a Comprehensive SR dataset (not yet written) for one DICOM ultrasound image `source` (for a
    multi-frame file, the classified `frame`, 1-based, which the report references)."""
    require_highdicom("A DICOM report of the classification")
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    if label not in probabilities:
        raise ValueError(f"label {label!r} is not one of the classes {sorted(probabilities)}")
    src = pydicom.dcmread(str(source), stop_before_pixels=True)
    if "SOPInstanceUID" not in src or "StudyInstanceUID" not in src:
        raise ValueError(f"{os.path.basename(str(source))} is not a DICOM image with instance and study UIDs")
    algo = hd.sr.AlgorithmIdentification(name=algorithm_name, version=f"{algorithm_version} weights {weights_id}")
    frames = [int(frame)] if frame and int(getattr(src, "NumberOfFrames", 1) or 1) > 1 else None
    image = hd.sr.SourceImageForMeasurement.from_source_image(src, referenced_frame_numbers=frames)
    finding = hd.sr.CodedConcept(*FINDINGS.get(label, (f"class-{label}", PRIVATE_SCHEME, label)))
    measurements = [
        hd.sr.Measurement(name=hd.sr.CodedConcept(f"p-{name}", PRIVATE_SCHEME, f"Model probability of {name}"),
                          value=float(p), unit=hd.sr.CodedConcept("1", "UCUM", "no units"), algorithm_id=algo,
                          referenced_images=[image])
        for name, p in probabilities.items()]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Ultrasound image classification"),
        measurements=measurements, algorithm_id=algo,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(src, referenced_frame_numbers=frames)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.DCM.Finding, value=finding)])
    return measurement_report_sr(
        [group], evidence=[src], procedure=("47079000", "SCT", "Ultrasonography of breast"),
        device_name=algorithm_name, model_name=weights_id,
        series_number=int(getattr(src, "SeriesNumber", 0) or 0) + 1001, series_description=series_description)
