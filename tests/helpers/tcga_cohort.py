"""A 12-case TCGA-shaped cohort written the way the sources write it, for the ingest tests.

Slides: tiny Aperio-layout ``.svs`` files with GDC file names (``TCGA-05-42NN-01Z-00-DX1.<UUID>.svs``),
4 in ``slides/`` and 8 in a folder elsewhere linked in as ``slides/batch1`` (a second disk), plus
a solid-tissue-normal frozen slide (``-11A-01-TS1``) of case 0. Clinical files: GDC classic
``clinical.tsv`` (``case_id`` UUID first, one row per treatment, ``'--``), the GDC 2024 layout,
cBioPortal ``data_clinical_patient.txt`` (four ``#`` lines, ``1:DECEASED``), the TCGA-CDR sheet
saved as TSV (leading unnamed index column, days) and the normalized CSV.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np

from bench.data.clinical import DAYS_PER_MONTH

# case index -> (stage 0..3, months, event); 3 cases per stage, 7 deaths
LABELS = [(0, 61.0, 0), (0, 25.8, 1), (0, 40.2, 0), (1, 33.1, 1), (1, 12.0, 0), (1, 20.5, 1),
          (2, 9.4, 1), (2, 30.0, 0), (2, 14.8, 1), (3, 3.3, 1), (3, 18.9, 0), (3, 6.1, 1)]
AJCC = ["Stage IA", "Stage IIB", "Stage IIIA", "Stage IV"]
SOURCES = {"gdc": "clinical.tsv", "gdc-2024": "clinical_2024.tsv", "cbioportal": "data_clinical_patient.txt",
           "tcga-cdr": "TCGA-CDR-SupplementalTableS1.tsv", "normalized": "clinical.csv"}


def case_id(i: int) -> str:
    return f"TCGA-05-42{i:02d}"


def fake_uuid(tag: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, tag))


def slide_name(i: int, sample: str = "01Z-00-DX1") -> str:
    return f"{case_id(i)}-{sample}.{fake_uuid(case_id(i) + sample).upper()}"


def days(months: float) -> int:
    return int(round(months * DAYS_PER_MONTH))


def write_svs(path: Path, seed: int, mpp: float = 0.5) -> Path:
    from slide_writers import write_aperio_svs

    rng = np.random.default_rng(seed)
    img = np.full((512, 512, 3), 240, np.uint8)
    img[96:416, 96:416] = (np.array([220, 140, 180]) + rng.normal(0, 10, (320, 320, 3))).clip(0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_aperio_svs(path, img, app_mag=10 / mpp, mpp=mpp)


def gdc_classic(rows: list[tuple[int, tuple[int, float, int]]]) -> str:
    head = ["case_id", "case_submitter_id", "project_id", "age_at_index", "vital_status", "days_to_death",
            "days_to_last_follow_up", "ajcc_pathologic_stage", "treatment_or_therapy", "treatment_type"]
    lines = ["\t".join(head)]
    for i, (s, m, e) in rows:
        for treatment in ("Pharmaceutical Therapy, NOS", "Radiation Therapy, NOS"):  # one row per treatment
            lines.append("\t".join([fake_uuid(case_id(i)), case_id(i), "TCGA-LUAD", "65",
                                    "Dead" if e else "Alive", str(days(m)) if e else "'--",
                                    "'--" if e else str(days(m)), AJCC[s], "yes", treatment]))
    return "\n".join(lines) + "\n"


def gdc_2024(rows: list[tuple[int, tuple[int, float, int]]]) -> str:
    head = ["project.project_id", "cases.case_id", "cases.consent_type", "cases.submitter_id",
            "demographic.vital_status", "demographic.days_to_death", "diagnoses.ajcc_pathologic_stage",
            "diagnoses.days_to_last_follow_up", "treatments.treatment_type"]
    lines = ["\t".join(head)]
    for i, (s, m, e) in rows:
        for treatment in ("Chemotherapy", "Radiation Therapy, NOS", "Surgery, NOS"):
            lines.append("\t".join(["TCGA-LUAD", fake_uuid(case_id(i)), "Informed Consent", case_id(i),
                                    "Dead" if e else "Alive", str(days(m)) if e else "'--", AJCC[s],
                                    str(days(m + 1.5)), treatment]))
    return "\n".join(lines) + "\n"


def cbioportal(rows: list[tuple[int, tuple[int, float, int]]]) -> str:
    cols = ["PATIENT_ID", "OTHER_PATIENT_ID", "AJCC_PATHOLOGIC_TUMOR_STAGE", "OS_STATUS", "OS_MONTHS",
            "DFS_STATUS", "DFS_MONTHS"]
    lines = ["#Patient Identifier\tOther Patient ID\tNeoplasm Disease Stage\tOverall Survival Status\t"
             "Overall Survival (Months)\tDisease Free Status\tDisease Free (Months)",
             "#Identifier\tOther ID\tStage\tStatus\tMonths\tStatus\tMonths",
             "#STRING\tSTRING\tSTRING\tSTRING\tNUMBER\tSTRING\tNUMBER",
             "#1\t1\t1\t1\t1\t1\t1", "\t".join(cols)]
    for i, (s, m, e) in rows:
        lines.append("\t".join([case_id(i), fake_uuid(case_id(i)), AJCC[s].upper(),
                                "1:DECEASED" if e else "0:LIVING", f"{m:.2f}", "[Not Available]", ""]))
    return "\n".join(lines) + "\n"


def tcga_cdr(rows: list[tuple[int, tuple[int, float, int]]]) -> str:
    cols = ["", "bcr_patient_barcode", "type", "ajcc_pathologic_tumor_stage", "vital_status", "OS", "OS.time",
            "DSS", "DSS.time", "DFI", "DFI.time", "PFI", "PFI.time", "Redaction"]
    lines = ["\t".join(cols)]
    for k, (i, (s, m, e)) in enumerate(rows):
        lines.append("\t".join([str(k + 1), case_id(i), "LUAD", AJCC[s], "Dead" if e else "Alive", str(e),
                                str(days(m)), str(e), str(days(m)), "#N/A", "#N/A", "1", str(days(m / 2)), ""]))
    return "\n".join(lines) + "\n"


def normalized(rows: list[tuple[int, tuple[int, float, int]]]) -> str:
    return "case_id,stage,time,event\n" + "".join(f"{case_id(i)},{s},{m},{e}\n" for i, (s, m, e) in rows)


WRITERS = {"gdc": gdc_classic, "gdc-2024": gdc_2024, "cbioportal": cbioportal, "tcga-cdr": tcga_cdr,
           "normalized": normalized}
FORMAT_OF = {"gdc": "gdc", "gdc-2024": "gdc", "cbioportal": "cbioportal", "tcga-cdr": "tcga-cdr",
             "normalized": "normalized"}


def build(root: Path) -> Path:
    """The cohort under ``root/data`` (slides, every clinical file) and ``root/disk2`` (the linked
    folder); returns the data root."""
    data, disk2 = root / "data", root / "disk2" / "batch1"
    for i in range(12):
        folder = data / "slides" if i < 4 else disk2
        write_svs(folder / f"{slide_name(i)}.svs", seed=i)
    write_svs(data / "slides" / f"{slide_name(0, '11A-01-TS1')}.svs", seed=99)  # solid tissue normal
    (data / "slides" / "batch1").symlink_to(disk2, target_is_directory=True)
    rows = list(enumerate(LABELS))
    for src, fn in SOURCES.items():
        (data / fn).write_text(WRITERS[src](rows))
    return data


def write_yaml(path: Path, data: Path, source: str = "gdc", **extra: str) -> Path:
    lines = [f"root: {data}", "slides: slides", 'slide_glob: "**/*.svs"', f"clinical: {SOURCES[source]}",
             f"clinical_format: {FORMAT_OF[source]}", "case_id: tcga", "tasks: [staging, survival]"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return path
