"""The envelope both modules' DICOM reports share (highdicom): a TID 1500 measurement report observed by
a device (the algorithm), wrapped in a Comprehensive SR, or a Comprehensive 3D SR where the report
references 3D content such as SEG segments. Each module builds its own measurement groups."""
from __future__ import annotations

MANUFACTURER = "Slicer Liver & Ultrasound AI"


def measurement_report_sr(groups, *, evidence, procedure: tuple, device_name: str, model_name: str,
                          series_number: int, series_description: str, three_d: bool = False):
    """-> the SR dataset. groups: highdicom measurement groups; evidence: the datasets it references;
    procedure: (code, scheme, meaning) of the procedure reported."""
    from .dependencies import require_highdicom
    require_highdicom("A DICOM report")
    import highdicom as hd
    from pydicom.sr.codedict import codes

    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=device_name, model_name=model_name, manufacturer_name=MANUFACTURER))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=hd.sr.CodedConcept(*procedure), imaging_measurements=list(groups))
    cls = hd.sr.Comprehensive3DSR if three_d else hd.sr.ComprehensiveSR
    return cls(evidence=list(evidence), content=report[0], series_instance_uid=hd.UID(), series_number=series_number,
               sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
               is_final=False, is_verified=False, series_description=series_description)
