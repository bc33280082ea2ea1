"""A small DICOM whole-slide-image writer on pydicom alone, so CI covers OpenSlide's DICOM reader
without importing wsidicomizer (16 s at load; that converter stays in the slow test).

One VL Whole Slide Microscopy Image instance per pyramid level, all in one series, as the
standard lays it out (DICOM PS3.3 A.32.8) and as OpenSlide's DICOM reader (v4.0.1, libdicom)
checks it: SOP class 1.2.840.10008.5.1.4.1.1.77.1.6, ``ImageType`` value 3 ``VOLUME``, JPEG
baseline transfer syntax (``YBR_FULL_422``, 8 bits, 3 samples), ``DimensionOrganizationType``
``TILED_FULL`` (frames row by row, no per-frame positions), ``TotalPixelMatrixColumns/Rows``,
pixel spacing in mm in ``SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]`` and
the objective in ``OpticalPathSequence[0].ObjectiveLensPower``. The code is ours.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

VL_WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"


def _jpeg(tile: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(tile)).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def write_dicom_wsi(folder: Path, levels: list[np.ndarray], *, mpp: float, tile: int = 256,
                    objective: float | None = 20.0) -> list[Path]:
    """Write ``levels`` (level 0 first, each half the previous) as one series in ``folder``;
    returns the instance files, level 0 first."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.sequence import Sequence
    from pydicom.uid import JPEGBaseline8Bit, PYDICOM_IMPLEMENTATION_UID, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame_of_ref = generate_uid(), generate_uid(), generate_uid()
    h0, w0 = levels[0].shape[:2]
    out = []
    for k, img in enumerate(levels):
        h, w = img.shape[:2]
        across, down = -(-w // tile), -(-h // tile)
        frames = []
        for r in range(down):
            for c in range(across):
                t = np.full((tile, tile, 3), 255, np.uint8)  # edge tiles padded, as scanners do
                part = img[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile]
                t[:part.shape[0], :part.shape[1]] = part
                frames.append(_jpeg(t))
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = VL_WSI
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = JPEGBaseline8Bit
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = VL_WSI, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_ref
        ds.Modality, ds.InstanceNumber, ds.SeriesNumber = "SM", k + 1, 1
        ds.PatientName, ds.PatientID = "TEST^SLIDE", "TEST"
        ds.Manufacturer = "wsi-bench tests/helpers/dicom_writer.py"
        ds.ImageType = ["ORIGINAL" if k == 0 else "DERIVED", "PRIMARY", "VOLUME",
                        "NONE" if k == 0 else "RESAMPLED"]
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.Rows = ds.Columns = tile
        ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = w, h
        ds.TotalPixelMatrixFocalPlanes = 1
        ds.NumberOfFrames = len(frames)
        ds.NumberOfOpticalPaths = 1
        ds.DimensionOrganizationType = "TILED_FULL"
        ds.ImagedVolumeWidth = w0 * mpp / 1000  # mm
        ds.ImagedVolumeHeight = h0 * mpp / 1000
        ds.ImagedVolumeDepth = 0.001
        spacing = mpp * (w0 / w) / 1000  # mm per pixel at this level
        measures = Dataset()
        measures.PixelSpacing = [f"{spacing:.10g}", f"{spacing:.10g}"]  # row, column spacing
        measures.SliceThickness = 0.001
        shared = Dataset()
        shared.PixelMeasuresSequence = Sequence([measures])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        path_ds = Dataset()
        path_ds.OpticalPathIdentifier = "1"
        if objective is not None:
            path_ds.ObjectiveLensPower = f"{objective:g}"
        ds.OpticalPathSequence = Sequence([path_ds])
        ds.PixelData = encapsulate(frames, has_bot=True)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        p = folder / f"level{k}.dcm"
        ds.save_as(p, enforce_file_format=True)
        out.append(p)
    return out
