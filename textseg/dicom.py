"""DICOM for the app and its tests: a NIfTI volume (or a phantom) written as a CT series, DICOM SEG read back."""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["write_ct_series", "nifti_to_ct_series", "SegmentInfo", "read_dicom_seg"]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def write_ct_series(
    image: np.ndarray,
    affine: np.ndarray,
    out_dir: str | os.PathLike,
    patient_id: str = "TEXTSEG0001",
    patient_name: str = "Phantom^Textseg",
    study_description: str = "textseg phantom",
    series_description: str = "CT phantom",
    study_uid: str | None = None,
) -> list[Path]:
    """Write a 3D HU volume as a single-frame CT series (one file per slice along the third array axis).

    Geometry is taken from the voxel-to-world ``affine`` (RAS+, mm, as in NIfTI/MONAI) and written in
    DICOM's LPS patient coordinates, so a DICOM reader gets the same world positions back.

    Args:
        image: HU values, shape (X, Y, Z); stored as int16.
        affine: 4x4 voxel -> world (RAS+).
        out_dir: destination folder (created).
        patient_id, patient_name, study_description, series_description: identifying text.
        study_uid: StudyInstanceUID (generated when omitted).

    Returns:
        the written files, in slice order.
    """
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {image.shape}.")
    if not np.all(np.isfinite(image)):
        raise ValueError("the volume contains NaN or infinite values.")
    affine = np.asarray(affine, dtype=np.float64)
    lps = _RAS_TO_LPS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"affine has a zero-length axis: spacing {spacing}.")
    row_cosine, col_cosine = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid, frame_uid = generate_uid(), generate_uid()
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    pixels = np.clip(np.round(image), -32768, 32767).astype(np.int16)
    files = []
    for k in range(pixels.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = out_dir / f"slice_{k:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient_id, patient_name, "", "O"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
        ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "", "1", ""
        ds.StudyDescription, ds.SeriesDescription = study_description, series_description
        ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "CT", "textseg", 1, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [float(v) for v in (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]]
        ds.ImageOrientationPatient = [float(v) for v in (*row_cosine, *col_cosine)]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = int(pixels.shape[1]), int(pixels.shape[0])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).tobytes()
        ds.is_little_endian, ds.is_implicit_VR = True, False
        pydicom.dcmwrite(str(path), ds, write_like_original=False)
        files.append(path)
    return files


def nifti_to_ct_series(nifti: str | os.PathLike, out_dir: str | os.PathLike, **kwargs) -> list[Path]:
    """Write a 3D NIfTI CT as a DICOM series (see :func:`write_ct_series`)."""
    import nibabel as nib

    img = nib.load(str(nifti))
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    return write_ct_series(data, img.affine, out_dir, **kwargs)


@dataclass
class SegmentInfo:
    """One segment of a DICOM SEG: its number, label, colour (CIELab as stored, if any) and voxel count."""

    number: int
    label: str
    frames: int
    voxels: int


def read_dicom_seg(path: str | os.PathLike) -> tuple[list[SegmentInfo], str]:
    """Segments of a DICOM SEG file and the SeriesInstanceUID it references.

    Raises:
        ValueError: the file is not a DICOM SEG.
    """
    import pydicom

    ds = pydicom.dcmread(str(path))
    if ds.SOPClassUID != SEG_STORAGE:
        raise ValueError(f"{path}: not a DICOM SEG (SOP class {ds.SOPClassUID}).")
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    per_frame = ds.PerFrameFunctionalGroupsSequence
    numbers = [int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber) for f in per_frame]
    segments = []
    for seg in ds.SegmentSequence:
        n = int(seg.SegmentNumber)
        idx = [i for i, m in enumerate(numbers) if m == n]
        segments.append(SegmentInfo(number=n, label=str(seg.SegmentLabel), frames=len(idx), voxels=int(frames[idx].astype(bool).sum())))
    referenced = str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID) if "ReferencedSeriesSequence" in ds else ""
    return segments, referenced
