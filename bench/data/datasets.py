"""Datasets: where a cohort's slides and clinical table are, and how to read them into the
normalized cohort table every other part uses (one row per slide):

    case_id, slide_id, slide_path, stage (0..3 or NA), time (months or NA), event (1 = death, 0, NA)

Clinical tables come as GDC ``clinical.tsv``, cBioPortal ``data_clinical_patient.txt`` or a
normalized CSV. TCGA rules (DESIGN §2): case id = first 12 characters of the slide barcode; AJCC
sub-stages collapse (IIIB → III → 2); unknown markers become NA; time = days_to_death if dead else
days_to_last_follow_up, in months; several rows per case (GDC repeats a case per treatment) are
merged. Column names are looked up among known spellings and can be overridden per dataset.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ..resources import config_path, list_configs

log = logging.getLogger(__name__)

DAYS_PER_MONTH = 365.25 / 12
# images a user may drop into a slide folder that no whole-slide reader here opens
OTHER_IMAGE_SUFFIXES = (".czi", ".lif", ".png", ".jpg", ".jpeg", ".bmp", ".jp2", ".isyntax", ".zvi", ".qptiff.gz")
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".dcm", ".svslide")

NA_MARKERS = {"", "--", "'--", "na", "n/a", "nan", "none", "null", "not reported", "unknown",
              "[not available]", "[not applicable]", "[unknown]", "[not evaluated]", "[discrepancy]",
              "[completed]", "not available", "not applicable", "stage x", "x", "stage tx"}

# Known spellings, first match wins. GDC renamed its columns with the 2024 portal ("cases.*").
COLUMN_CANDIDATES: dict[str, list[str]] = {
    "case_id": ["case_id", "cases.submitter_id", "case_submitter_id", "submitter_id", "PATIENT_ID",
                "bcr_patient_barcode", "patient_id", "patient", "slide_id"],
    "stage": ["stage", "diagnoses.ajcc_pathologic_stage", "ajcc_pathologic_stage", "AJCC_PATHOLOGIC_TUMOR_STAGE",
              "ajcc_pathologic_tumor_stage", "tumor_stage", "pathologic_stage"],
    "vital_status": ["vital_status", "demographic.vital_status", "OS_STATUS", "vital"],
    "days_to_death": ["days_to_death", "demographic.days_to_death", "death_days_to"],
    "days_to_follow_up": ["days_to_last_follow_up", "diagnoses.days_to_last_follow_up",
                          "last_contact_days_to", "days_to_last_followup"],
    "os_months": ["OS_MONTHS", "os_months"],
    "time": ["time", "survival_months", "time_months"],
    "event": ["event", "censorship_inverted", "status"],
    "label": ["label", "class"],
}

_STAGE_RE = re.compile(r"^(?:STAGE\s*)?(IV|III|II|I)(?:[ABC]\d?)?$")
_STAGE_INDEX = {"I": 0, "II": 1, "III": 2, "IV": 3}


class DatasetError(ValueError):
    """A dataset cannot be used as configured; the message says what to fix."""


def parse_stage(value: Any) -> float:
    """AJCC stage string → 0..3, NA for unknown markers. Integers 0..3 pass through."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return np.nan
    if isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer()):
        v = int(value)
        if 0 <= v <= 3:
            return float(v)
        raise DatasetError(f"stage {value!r} is not in 0..3")
    s = str(value).strip()
    if s.lower() in NA_MARKERS:
        return np.nan
    if s.isdigit():
        return parse_stage(int(s))
    m = _STAGE_RE.match(s.upper().replace("_", " "))
    if m is None:
        raise DatasetError(f"unknown stage string {value!r}")
    return float(_STAGE_INDEX[m.group(1)])


def _is_na(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip().lower() in NA_MARKERS


def _to_float(v: Any) -> float:
    if _is_na(v):
        return np.nan
    try:
        return float(str(v).strip().strip("'"))
    except ValueError:
        return np.nan


def _find(df: pd.DataFrame, key: str, overrides: dict[str, str]) -> str | None:
    if key in overrides:
        if overrides[key] not in df.columns:
            raise DatasetError(f"column {overrides[key]!r} (configured for {key}) is not in the table; "
                               f"columns are: {', '.join(map(str, df.columns[:30]))}")
        return overrides[key]
    lower = {str(c).lower(): c for c in df.columns}
    for cand in COLUMN_CANDIDATES[key]:
        if cand.lower() in lower:
            return lower[cand.lower()]
    return None


def _parse_event(v: Any) -> float:
    if _is_na(v):
        return np.nan
    s = str(v).strip().lower()
    if s in ("dead", "deceased", "1:deceased", "1", "1.0", "true"):
        return 1.0
    if s in ("alive", "living", "0:living", "0", "0.0", "false"):
        return 0.0
    return np.nan


def _read_table(path: Path, fmt: str) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetError(f"clinical table {path} does not exist")
    sep = "\t" if fmt in ("gdc", "cbioportal") or path.suffix in (".tsv", ".txt") else ","
    comment = "#" if fmt == "cbioportal" else None
    try:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, comment=comment)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot parse clinical table {path} as {fmt}: {exc}") from exc


def parse_label(value: Any, label_map: dict[str, int] | None, where: str) -> float:
    """A binary label: 0/1, or a string of ``label_map`` (case-insensitive, e.g. ``{normal: 0, tumor: 1}``);
    NA markers → NA; anything else is a :class:`DatasetError` naming ``where`` (file and row)."""
    if _is_na(value):
        return np.nan
    s = str(value).strip()
    if label_map:
        low = {str(k).strip().lower(): int(v) for k, v in label_map.items()}
        if s.lower() in low:
            return float(low[s.lower()])
    try:
        f = float(s)
    except ValueError:
        f = np.nan
    if f in (0.0, 1.0):
        return f
    known = ", ".join(sorted(map(str, label_map or {}))) or "none"
    raise DatasetError(f"{where}: unknown label {value!r}. Labels must be 0/1 or one of the dataset's "
                       f"`labels:` strings ({known}); add it to `labels:` in the dataset config or fix the row.")


def load_clinical(path: str | Path, fmt: str, columns: dict[str, str] | None = None,
                  label_map: dict[str, int] | None = None) -> pd.DataFrame:
    """Read a clinical table into one row per case: ``case_id, stage, time, event`` (+ ``label``).

    ``fmt``: ``gdc`` (GDC clinical.tsv, days), ``cbioportal`` (OS_MONTHS / OS_STATUS) or
    ``normalized`` (a CSV already in these columns; time in months). ``columns`` overrides the
    column lookup, e.g. ``{"stage": "my_stage_col"}``.
    """
    path = Path(path)
    if fmt not in ("gdc", "cbioportal", "normalized"):
        raise DatasetError(f"unknown clinical format {fmt!r} for {path}; use gdc, cbioportal or normalized")
    raw = _read_table(path, fmt)
    ov = dict(columns or {})
    cid = _find(raw, "case_id", ov)
    if cid is None:
        raise DatasetError(f"{path}: no case id column (looked for {COLUMN_CANDIDATES['case_id']}); "
                           "set `columns: {case_id: <name>}` in the dataset config")
    out = pd.DataFrame({"case_id": raw[cid].astype(str).str.strip()})
    out = out[out["case_id"].map(lambda v: not _is_na(v))]

    stage_col = _find(raw, "stage", ov)
    stages = []
    bad: list[tuple[int, str]] = []
    for i, v in (raw.loc[out.index, stage_col].items() if stage_col else []):
        try:
            stages.append(parse_stage(v))
        except DatasetError:
            stages.append(np.nan)
            bad.append((int(i) + 2, str(v)))  # +2: header line and 1-based rows
    out["stage"] = stages if stage_col else np.nan
    if bad:
        shown = "; ".join(f"row {r} ({out.loc[r - 2, 'case_id']}): {v!r}" for r, v in bad[:10])
        log.warning("%s: %d unknown stage value(s) (%s%s); those cases are left out of staging. Fix: "
                    "write AJCC stages (Stage I..IV, IA, IIIB, ...) or an NA marker ('--, Not Reported) "
                    "in that column.", path, len(bad), shown, " …" if len(bad) > 10 else "")

    if fmt == "gdc":
        vs, dd, df_ = (_find(raw, k, ov) for k in ("vital_status", "days_to_death", "days_to_follow_up"))
        out["_dead"] = raw.loc[out.index, vs].map(_parse_event) if vs else np.nan
        out["_dd"] = raw.loc[out.index, dd].map(_to_float) if dd else np.nan
        out["_df"] = raw.loc[out.index, df_].map(_to_float) if df_ else np.nan
    elif fmt == "cbioportal":
        st, om = _find(raw, "vital_status", ov), _find(raw, "os_months", ov)
        out["event"] = raw.loc[out.index, st].map(_parse_event) if st else np.nan
        out["time"] = raw.loc[out.index, om].map(_to_float) if om else np.nan
    else:
        for key in ("time", "event"):
            col = _find(raw, key, ov)
            if col is not None:
                conv = _parse_event if key == "event" else _to_float
                out[key] = raw.loc[out.index, col].map(conv)
        col = _find(raw, "label", ov)
        if col is not None:  # binary classification (e.g. CAMELYON16: normal / tumor)
            out["label"] = [parse_label(v, label_map, f"{path}, row {int(i) + 2} ({col})")
                            for i, v in raw.loc[out.index, col].items()]
        for key in ("time", "event"):
            if key not in out:
                out[key] = np.nan

    out = _merge_case_rows(out, path)
    if fmt == "gdc":
        dead = out.pop("_dead")
        dd, dfu = out.pop("_dd"), out.pop("_df")
        out["event"] = dead
        out["time"] = np.where(dead == 1, dd, dfu) / DAYS_PER_MONTH
    bad_time = out["time"].notna() & ~(out["time"] > 0)
    if bad_time.any():
        shown = ", ".join(f"{c} ({t:g})" for c, t in zip(out.loc[bad_time, "case_id"].head(10),
                                                          out.loc[bad_time, "time"].head(10)))
        log.warning("%s: %d case(s) with a survival time <= 0 are left out of survival: %s%s. Fix: "
                    "correct their times (months from diagnosis to death or last follow-up, > 0).",
                    path, int(bad_time.sum()), shown, " …" if bad_time.sum() > 10 else "")
        out.loc[bad_time, ["time", "event"]] = np.nan
    out.loc[out["time"].isna(), "event"] = np.nan
    out.loc[out["event"].isna(), "time"] = np.nan
    cols = ["case_id", "stage", "time", "event"] + (["label"] if "label" in out else [])
    return out[cols].reset_index(drop=True)


def _merge_case_rows(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """GDC repeats a case once per treatment/diagnosis row; merge to one row per case.

    Stage: the single non-NA value (conflicting stages → NA, with a warning). Event: dead if any
    row says dead. Days: the largest recorded value (follow-up only grows).
    """
    if not df["case_id"].duplicated().any():
        return df.set_index("case_id", drop=False)
    conflicts: list[str] = []

    def one_stage(s: pd.Series) -> float:
        vals = s.dropna().unique()
        if len(vals) > 1:
            conflicts.append(str(s.name))
            return np.nan
        return vals[0] if len(vals) else np.nan

    agg: dict[str, Any] = {}
    for c in df.columns:
        if c == "case_id":
            continue
        agg[c] = one_stage if c in ("stage", "label") else "max"
    merged = df.groupby("case_id", sort=False).agg(agg)
    merged.insert(0, "case_id", merged.index)
    if conflicts:
        log.warning("%s: %d case(s) have conflicting stages across rows and are left out of staging: %s",
                    path, len(conflicts), ", ".join(conflicts[:5]))
    return merged


# ---------------------------------------------------------------------------------------------
@dataclass
class DatasetSpec:
    name: str
    description: str = ""
    slides: str = "slides"
    slide_glob: list[str] = field(default_factory=lambda: ["**/*"])
    clinical: str = "clinical.csv"
    clinical_format: str = "normalized"
    columns: dict[str, str] = field(default_factory=dict)
    case_id: str = "tcga"  # "tcga" = first 12 characters; "stem" = the whole file stem
    tasks: list[str] = field(default_factory=lambda: ["staging", "survival"])
    allow_random_weights: bool = False
    # with random weights, conch/gigapath become small stand-ins of their family (marked ‡ in tables)
    random_encoder_standin: bool = False
    generator: str | None = None  # "demo": generated on first use
    generator_args: dict[str, Any] = field(default_factory=dict)  # e.g. {n_cases: 12, seed: 0}
    root: str = ""  # relative to $BENCH_DATA
    download: str = ""
    mpp_override: float | None = None
    # DataLoader worker processes decoding tiles during feature extraction (None: cores - 1, 1 to
    # 4; 0: threads in the main process); `bench extract --workers` wins
    extract_workers: int | None = None
    # training options per method family ("two-stage", "end-to-end") that this dataset needs,
    # e.g. fewer epochs on the demo; precedence: CLI --set > these > configs/methods/*.yaml
    train: dict[str, dict[str, Any]] = field(default_factory=dict)
    # model options per family or method glob, e.g. {end-to-end: {magnification: 1.25},
    # pixelmamba-*: {scan_window: 64}}; CLI --model wins
    model: dict[str, dict[str, Any]] = field(default_factory=dict)
    # binary labels of the classification task: strings of the `label` column -> 0/1, e.g. {normal: 0, tumor: 1}
    labels: dict[str, int] = field(default_factory=dict)
    # per ablation, the grid this dataset runs: {<ablation>: {values: [...]}} replaces the grid,
    # {<ablation>: {values: {paper value: value here}}} maps it (the demo scales inputs to a CPU)
    ablations: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def data_root(self) -> Path:
        base = Path(os.environ.get("BENCH_DATA", "data")).expanduser()
        return (base / self.root) if self.root else base

    def path(self, rel: str) -> Path:
        p = Path(rel).expanduser()
        return p if p.is_absolute() else self.data_root / p


def list_datasets() -> list[str]:
    return list_configs("datasets")


def load_spec(name: str) -> DatasetSpec:
    """A dataset by name (configs/datasets/<name>.yaml) or by the path of its YAML file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        name = path.stem
    else:
        path = config_path("datasets", name)
    if not path.is_file():
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())} "
                           f"(add configs/datasets/{name}.yaml to define it)")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    data.setdefault("name", name)
    if isinstance(data.get("slide_glob"), str):
        data["slide_glob"] = [data["slide_glob"]]
    known = set(DatasetSpec.__dataclass_fields__)
    unknown = set(data) - known
    if unknown:
        raise DatasetError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
    return DatasetSpec(**data)


def _case_of(slide_id: str, rule: str) -> str:
    return slide_id[:12] if rule == "tcga" else slide_id


def find_slides(spec: DatasetSpec) -> pd.DataFrame:
    """Slide files of a dataset → ``slide_id, slide_path``; duplicate ids across folders are an error.

    Files the glob matches but that are not slides are left out with a warning that names them
    (``df.attrs["ignored"]``: [(path, why)]): hidden files (macOS copies leave ``._<name>.svs``
    metadata files beside every slide) and formats no slide reader opens (``.czi``, ``.png``, …).
    """
    root = spec.path(spec.slides)
    if not root.is_dir():
        raise DatasetError(_missing_message(spec, f"slide directory {root} does not exist"))
    rows: dict[str, Path] = {}
    ignored: list[tuple[str, str]] = []
    for pattern in spec.slide_glob:
        for p in sorted(root.glob(pattern)):
            if not p.is_file():
                continue
            if p.name.startswith("."):
                ignored.append((str(p), "hidden file (e.g. macOS '._' metadata), not a slide"))
                continue
            if p.suffix.lower() not in SLIDE_SUFFIXES:
                if p.suffix.lower() in OTHER_IMAGE_SUFFIXES:
                    ignored.append((str(p), f"unsupported format {p.suffix!r}; convert it to a pyramidal "
                                            "tiled TIFF (e.g. `vips tiffsave in out.tiff --tile --pyramid "
                                            "--compression jpeg`, or bfconvert for .czi/.lif)"))
                continue
            sid = p.stem
            if sid in rows and rows[sid] != p:
                raise DatasetError(f"slide id {sid!r} appears twice: {rows[sid]} and {p}. Slide ids are file "
                                   "stems and must be unique: remove or rename one copy, or narrow "
                                   f"`slide_glob` (now {spec.slide_glob}) in the dataset config.")
            rows[sid] = p
    if ignored:
        log.warning("%s: %d file(s) under %s are not used: %s", spec.name, len(ignored), root,
                    "; ".join(f"{p}: {why}" for p, why in ignored[:10]) + (" …" if len(ignored) > 10 else ""))
    if not rows:
        raise DatasetError(_missing_message(spec, f"no slide files matching {spec.slide_glob} under {root}"))
    df = pd.DataFrame({"slide_id": list(rows), "slide_path": [str(p) for p in rows.values()]})
    df.attrs["ignored"] = ignored
    return df


def _missing_message(spec: DatasetSpec, what: str) -> str:
    msg = f"dataset {spec.name!r}: {what} (BENCH_DATA={os.environ.get('BENCH_DATA', '<unset>, using ./data')})."
    if spec.download:
        msg += "\n" + spec.download.strip()
    return msg


@dataclass
class Cohort:
    """The normalized cohort table plus what was left out and why (never silently)."""

    spec: DatasetSpec
    table: pd.DataFrame  # one row per slide
    dropped: dict[str, list[str]]
    ignored_files: list[tuple[str, str]] = field(default_factory=list)  # (path, why) not slides

    def cases(self, task: str) -> pd.DataFrame:
        """One row per case with the task's labels (cases lacking them are left out)."""
        from ..engine.tasks import labelled

        per_case = self.table.drop_duplicates("case_id").drop(columns=["slide_id", "slide_path"])
        return labelled(per_case, task).reset_index(drop=True)

    def slides_of(self) -> dict[str, list[str]]:
        return self.table.groupby("case_id")["slide_id"].apply(list).to_dict()

    def report(self, task: str | None = None) -> list[str]:
        lines = [f"{self.spec.name}: {self.table['case_id'].nunique()} cases, {len(self.table)} slides"]
        for why, ids in self.dropped.items():
            if ids:
                lines.append(f"  left out: {len(ids)} {why} ({_some(ids)})")
        for t in ([task] if task else self.spec.tasks):
            missing = self.unlabelled(t)
            if missing:
                n_all = self.table["case_id"].nunique()
                lines.append(f"  {t}: {n_all - len(missing)} of {n_all} cases have its labels; {len(missing)} "
                             f"left out of {t} ({_some(missing)})")
        return lines

    def unlabelled(self, task: str) -> list[str]:
        """Cases with slides but without the task's labels (NA, unknown or invalid values)."""
        return sorted(set(self.table["case_id"]) - set(self.cases(task)["case_id"]))


def _some(ids: list[str], n: int = 10) -> str:
    return ", ".join(ids[:n]) + (f", … ({len(ids) - n} more)" if len(ids) > n else "")


def load_cohort(name_or_spec: str | DatasetSpec) -> Cohort:
    spec = load_spec(name_or_spec) if isinstance(name_or_spec, str) else name_or_spec
    if spec.generator == "demo":
        from .demo import generate_demo

        generate_demo(spec.data_root, **spec.generator_args)
    clinical_path = spec.path(spec.clinical)
    if not clinical_path.is_file():
        raise DatasetError(_missing_message(spec, f"clinical table {clinical_path} does not exist"))
    slides = find_slides(spec)
    ignored = list(slides.attrs.get("ignored", []))
    slides["case_id"] = slides["slide_id"].map(lambda s: _case_of(s, spec.case_id))
    clin = load_clinical(clinical_path, spec.clinical_format, spec.columns, spec.labels or None)
    merged = slides.merge(clin, on="case_id", how="inner")
    dropped = {
        "slides without a clinical row": sorted(set(slides["slide_id"]) - set(merged["slide_id"])),
        "cases in the clinical table without a slide": sorted(set(clin["case_id"]) - set(slides["case_id"])),
    }
    fixes = {
        "slides without a clinical row": f"Fix: add their cases to {clinical_path} (case id = "
        + ("the first 12 characters of the file name" if spec.case_id == "tcga" else "the file stem")
        + "), or move the slides out of the slide folder",
        "cases in the clinical table without a slide": f"Fix: put their slides under {spec.path(spec.slides)} "
        f"(matching {spec.slide_glob}), or ignore this if they were never scanned",
    }
    for why, ids in dropped.items():
        if ids:
            log.warning("%s: %d %s are left out: %s%s. %s.", spec.name, len(ids), why, ", ".join(ids[:10]),
                        " …" if len(ids) > 10 else "", fixes[why])
    cols = ["case_id", "slide_id", "slide_path", "stage", "time", "event"] + (["label"] if "label" in merged else [])
    table = merged[cols].sort_values(["case_id", "slide_id"]).reset_index(drop=True)
    return Cohort(spec, table, dropped, ignored)
