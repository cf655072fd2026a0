"""DICOM for the app and its tests: a NIfTI volume (or a phantom) written as a CT series, DICOM SEG read back."""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "write_ct_series",
    "nifti_to_ct_series",
    "dicom_modality",
    "LOSSLESS_TRANSFER_SYNTAXES",
    "compress_series",
    "SegmentInfo",
    "dicom_lab_to_rgb",
    "read_dicom_seg",
]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

LOSSLESS_TRANSFER_SYNTAXES = {
    "jpeg2000": "1.2.840.10008.1.2.4.90",  # JPEG 2000 Image Compression (Lossless Only)
    "jpegls": "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless Image Compression
    "rle": "1.2.840.10008.1.2.5",  # RLE Lossless
    "jpeglossless": "1.2.840.10008.1.2.4.70",  # JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 SV1)
}
"""Short name -> transfer syntax UID of the lossless compressions :func:`compress_series` writes."""


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


def compress_series(series: str | os.PathLike, out_dir: str | os.PathLike, syntax: str) -> list[Path]:
    """Re-encode an uncompressed single-frame series, file by file, in a lossless compressed transfer syntax.

    Every tag and UID is kept, so the result is the same series as the input, as a PACS might store it.
    Meant for series whose stored values are the HU (RescaleSlope 1, RescaleIntercept 0), as
    :func:`write_ct_series` writes them. Encoders: ``"jpeg2000"`` and ``"jpeglossless"`` ITK's GDCMImageIO,
    ``"rle"`` pydicom's RLE encoder, ``"jpegls"`` the ``gdcmconv`` command (Debian package ``libgdcm-tools``;
    ITK 5.4 and pydicom 2.4 cannot write JPEG-LS).

    Args:
        series: folder of the uncompressed series (every file in it is re-encoded).
        out_dir: destination folder (created); files keep their names.
        syntax: one of :data:`LOSSLESS_TRANSFER_SYNTAXES` (``"jpeg2000"``, ``"jpegls"``, ``"rle"``, ``"jpeglossless"``).

    Returns:
        the written files, sorted by name.

    Raises:
        ValueError: unknown ``syntax``, or an empty folder.
        RuntimeError: ``gdcmconv`` is missing (``"jpegls"``), or an encoder failed or wrote another transfer syntax.
    """
    import shutil
    import subprocess

    import pydicom

    if syntax not in LOSSLESS_TRANSFER_SYNTAXES:
        raise ValueError(f"unknown transfer syntax {syntax!r}; choose one of {sorted(LOSSLESS_TRANSFER_SYNTAXES)}.")
    sources = sorted(p for p in Path(series).iterdir() if p.is_file())
    if not sources:
        raise ValueError(f"{series}: no files to compress.")
    gdcmconv = shutil.which("gdcmconv")
    if syntax == "jpegls" and gdcmconv is None:
        raise RuntimeError("JPEG-LS needs the gdcmconv command: install Debian's libgdcm-tools (apt-get install libgdcm-tools).")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sources:
        target = out_dir / source.name
        if syntax == "rle":
            from pydicom.uid import RLELossless

            ds = pydicom.dcmread(str(source))
            ds.compress(RLELossless, encoding_plugin="pydicom")
            ds.save_as(str(target), write_like_original=False)
        elif syntax in ("jpeg2000", "jpeglossless"):
            import itk

            reader_io = itk.GDCMImageIO.New()
            image = itk.imread(str(source), imageio=reader_io)
            image.SetMetaDataDictionary(reader_io.GetMetaDataDictionary())
            writer_io = itk.GDCMImageIO.New()
            writer_io.KeepOriginalUIDOn()  # same SOP instance, series, study and frame of reference UIDs
            compression = "Compression_JPEG2000" if syntax == "jpeg2000" else "Compression_JPEG"  # JPEG: lossless process 14
            writer_io.SetCompressionType(getattr(itk.GDCMImageIOEnums, compression))
            writer = itk.ImageFileWriter[type(image)].New(Input=image, FileName=str(target), ImageIO=writer_io, UseCompression=True)
            writer.Update()
        else:
            result = subprocess.run([gdcmconv, "--jpegls", str(source), str(target)], capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"gdcmconv --jpegls {source} failed: {result.stderr.strip() or result.stdout.strip()}")
        got = str(pydicom.dcmread(str(target), stop_before_pixels=True).file_meta.TransferSyntaxUID)
        if got != LOSSLESS_TRANSFER_SYNTAXES[syntax]:
            raise RuntimeError(f"{target}: written with transfer syntax {got}, not {syntax} ({LOSSLESS_TRANSFER_SYNTAXES[syntax]}).")
        written.append(target)
    return written


def _dicom_file(path: Path) -> bool:
    """Whether ``path`` is a DICOM Part 10 file (``DICM`` after the 128-byte preamble) or named ``*.dcm``."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def dicom_modality(source: str | os.PathLike, max_files: int = 50) -> str | None:
    """The DICOM Modality (0008,0060) of a DICOM file, or of a series folder's first DICOM file (by name).

    Reads headers only (pydicom, ``stop_before_pixels``).

    Args:
        source: a DICOM file or a folder holding a series.
        max_files: at most this many files of a folder are tried before giving up.

    Returns:
        the modality, e.g. ``"CT"`` or ``"MR"``; ``None`` when ``source`` is not DICOM or has no Modality.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(source)
    if path.is_dir():
        candidates = sorted(p for p in path.iterdir() if p.is_file() and p.name != "DICOMDIR")[:max_files]
    elif path.is_file() and _dicom_file(path):
        candidates = [path]
    else:
        return None
    for candidate in candidates:
        try:
            ds = pydicom.dcmread(str(candidate), stop_before_pixels=True, specific_tags=["Modality"])
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        modality = str(ds.get("Modality", "") or "").strip().upper()
        if modality:
            return modality
    return None


@dataclass
class SegmentInfo:
    """One segment of a DICOM SEG: its number, label, frame and voxel counts, and its recommended display colour as
    8-bit sRGB (from ``RecommendedDisplayCIELabValue``; None when the segment has none)."""

    number: int
    label: str
    frames: int
    voxels: int
    color: tuple[int, int, int] | None = None


def dicom_lab_to_rgb(lab: Sequence[int]) -> tuple[int, int, int]:
    """A DICOM CIELab triplet (PS3.3 C.10.7.1.1: L* scaled 0..100 -> 0..65535, a*, b* -128..127 -> 0..65535;
    D65 white) as 8-bit sRGB."""
    L = lab[0] * 100.0 / 65535.0
    a, b = (v * 255.0 / 65535.0 - 128.0 for v in lab[1:3])
    fy = (L + 16.0) / 116.0
    fx, fz = fy + a / 500.0, fy - b / 200.0

    def f_inv(t: float) -> float:
        return t**3 if t > 6.0 / 29.0 else 3.0 * (6.0 / 29.0) ** 2 * (t - 4.0 / 29.0)

    x, y, z = 0.95047 * f_inv(fx), f_inv(fy), 1.08883 * f_inv(fz)
    linear = (
        3.2404542 * x - 1.5371385 * y - 0.4985314 * z,
        -0.9692660 * x + 1.8760108 * y + 0.0415560 * z,
        0.0556434 * x - 0.2040259 * y + 1.0572252 * z,
    )

    def gamma(c: float) -> int:
        c = min(max(c, 0.0), 1.0)
        c = 12.92 * c if c <= 0.0031308 else 1.055 * c ** (1 / 2.4) - 0.055
        return int(round(255.0 * c))

    return gamma(linear[0]), gamma(linear[1]), gamma(linear[2])


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
        lab = seg.get("RecommendedDisplayCIELabValue")
        segments.append(
            SegmentInfo(
                number=n,
                label=str(seg.SegmentLabel),
                frames=len(idx),
                voxels=int(frames[idx].astype(bool).sum()),
                color=dicom_lab_to_rgb([int(v) for v in lab]) if lab else None,
            )
        )
    referenced = str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID) if "ReferencedSeriesSequence" in ds else ""
    return segments, referenced
