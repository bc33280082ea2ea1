"""Clinical tables as researchers download them, read into one row per case:
``case_id, stage (0..3 or NA), time (months or NA), event (1 = death, 0 = censored, NA)``.

Sources (``clinical_format`` in a dataset YAML; docs/cohorts.md says which file to download):

* ``gdc`` -- the GDC portal's ``clinical.tsv``, both layouts: the classic one (``case_id`` (a
  UUID), ``case_submitter_id`` (the barcode), ``ajcc_pathologic_stage``, ``vital_status``,
  ``days_to_death``, ``days_to_last_follow_up``) and the 2024 one (``cases.submitter_id``,
  ``diagnoses.ajcc_pathologic_stage``, ``demographic.vital_status``, ...). One row per
  treatment, ``'--`` for "no value". Times in days.
* ``cbioportal`` -- ``data_clinical_patient.txt``: four ``#`` header lines, then ``PATIENT_ID``,
  ``AJCC_PATHOLOGIC_TUMOR_STAGE``, ``<E>_STATUS`` (``1:DECEASED`` / ``0:LIVING``) and
  ``<E>_MONTHS`` for the endpoint E (OS, DSS, DFS, PFS).
* ``tcga-cdr`` -- the TCGA Pan-Cancer Clinical Data Resource (Liu et al., Cell 2018; the
  ``TCGA-CDR`` sheet saved as TSV/CSV): ``bcr_patient_barcode``, ``ajcc_pathologic_tumor_stage``,
  endpoint E (OS, DSS, DFI, PFI) as ``E`` (0/1) and ``E.time`` (days).
* ``normalized`` -- a CSV already in the columns above (time in months, stage 0..3 or AJCC).

Rules (DESIGN §2): the case id is the TCGA barcode, never the GDC UUID; AJCC sub-stages collapse
(IIIB -> III -> 2); NA markers become NA; GDC's time is days_to_death if dead, else
days_to_last_follow_up. Every value that is left out is named with its file row ("row" = the
line of the file, 1-based, header and ``#`` lines counted) and the fix. What is an *error*
(the table cannot be read as meant, so nothing is guessed): stages written as digits outside the
normalized 0..3 (declare a ``stage_map``), a case whose rows disagree on stage, event or time
of death, a case id column holding UUIDs.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

DAYS_PER_MONTH = 365.25 / 12
FORMATS = ("gdc", "cbioportal", "tcga-cdr", "normalized")
ENDPOINTS = {"gdc": ("OS",), "cbioportal": ("OS", "DSS", "DFS", "PFS"),
             "tcga-cdr": ("OS", "DSS", "DFI", "PFI"), "normalized": ("OS",)}

NA_MARKERS = {"", "--", "'--", "na", "n/a", "nan", "none", "null", "not reported", "unknown",
              "[not available]", "[not applicable]", "[unknown]", "[not evaluated]", "[discrepancy]",
              "[completed]", "not available", "not applicable", "stage x", "x", "stage tx", "#n/a"}

# Known spellings per source, first match wins; barcodes only (UUID columns are never candidates).
COLUMNS: dict[str, dict[str, list[str]]] = {
    "gdc": {"case_id": ["case_submitter_id", "cases.submitter_id", "submitter_id"],
            "stage": ["ajcc_pathologic_stage", "diagnoses.ajcc_pathologic_stage", "tumor_stage",
                      "diagnoses.tumor_stage"],
            "vital_status": ["vital_status", "demographic.vital_status"],
            "days_to_death": ["days_to_death", "demographic.days_to_death"],
            "days_to_follow_up": ["days_to_last_follow_up", "diagnoses.days_to_last_follow_up"]},
    "cbioportal": {"case_id": ["PATIENT_ID"],
                   "stage": ["AJCC_PATHOLOGIC_TUMOR_STAGE", "PATH_STAGE", "STAGE"],
                   "event": ["{E}_STATUS"], "time": ["{E}_MONTHS"]},
    "tcga-cdr": {"case_id": ["bcr_patient_barcode"],
                 "stage": ["ajcc_pathologic_tumor_stage"],
                 "event": ["{E}"], "time": ["{E}.time"]},
    "normalized": {"case_id": ["case_id", "patient_id", "patient", "case_submitter_id",
                               "bcr_patient_barcode", "PATIENT_ID", "slide_id"],
                   "stage": ["stage"], "time": ["time", "time_months", "survival_months"],
                   "event": ["event", "status"], "label": ["label", "class"]},
}
COLUMN_KEYS = sorted({k for cols in COLUMNS.values() for k in cols})
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_STAGE_RE = re.compile(r"^(?:STAGE\s*)?(IV|III|II|I)(?:[ABC]\d?)?$")
_STAGE_INDEX = {"I": 0, "II": 1, "III": 2, "IV": 3}
_STAGE_NAMES = ("I", "II", "III", "IV")


class DatasetError(ValueError):
    """A dataset cannot be used as configured; the message says what to fix."""


def is_na(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip().lower() in NA_MARKERS


def parse_stage(value: Any) -> float:
    """AJCC stage string -> 0..3, NA for NA markers. Integers 0..3 are the normalized table's
    0-based stage index and pass through; anything else is a DatasetError."""
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


def parse_event(v: Any) -> float:
    """1 = the endpoint's event observed, 0 = censored. cBioPortal writes ``1:DECEASED``,
    ``0:LIVING``, ``1:PROGRESSION``, ``0:CENSORED`` ...: the digit before the colon decides."""
    if is_na(v):
        return np.nan
    s = str(v).strip().lower()
    m = re.match(r"^([01])\s*:", s)
    if m:
        return float(m.group(1))
    if s in ("dead", "deceased", "1", "1.0", "true"):
        return 1.0
    if s in ("alive", "living", "0", "0.0", "false"):
        return 0.0
    return np.nan


def _number(v: Any) -> tuple[float, str | None]:
    """(value, problem): NA markers are NA without a problem; '1,234', 'abc', inf are problems."""
    if is_na(v):
        return np.nan, None
    s = str(v).strip().strip("'")
    try:
        f = float(s)
    except ValueError:
        why = "thousands separator" if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s) else "not a number"
        return np.nan, why
    if not math.isfinite(f):
        return np.nan, "not a finite number"
    return f, None


def read_table(path: Path) -> tuple[pd.DataFrame, int]:
    """(table of strings, file line of its first data row). Leading ``#`` lines (cBioPortal) are
    skipped; tab or comma is taken from the header line."""
    if not path.is_file():
        raise DatasetError(f"clinical table {path} does not exist")
    if path.suffix.lower() in (".xlsx", ".xls"):
        raise DatasetError(f"{path}: a spreadsheet. Fix: open it and save the sheet with the table "
                           f"(for TCGA-CDR: the 'TCGA-CDR' sheet) as tab-separated text (.tsv), "
                           f"and point `clinical:` at that file.")
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc}). Fix: save it as UTF-8.") from exc
    skip = 0
    while skip < len(lines) and lines[skip].startswith("#"):
        skip += 1
    if skip >= len(lines):
        raise DatasetError(f"{path}: no header line (the file is empty{' but for # lines' if skip else ''})")
    header = lines[skip]
    # a European spreadsheet export separates with ';' and writes decimal commas (12,5)
    sep = "\t" if "\t" in header else ";" if ";" in header and "," not in header else ","
    try:
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, skiprows=skip,
                         encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot parse clinical table {path}: {exc}") from exc
    if sep == ";":
        log.info("%s: read as ';'-separated with decimal commas (a spreadsheet export)", path)
        df = df.apply(lambda col: col.str.replace(r"^\s*(-?\d+),(\d+)\s*$", r"\1.\2", regex=True))
    return df, skip + 2


def _find(df: pd.DataFrame, key: str, fmt: str, overrides: Mapping[str, str], endpoint: str,
          path: Path) -> str | None:
    if key in overrides:
        if overrides[key] not in df.columns:
            raise DatasetError(f"{path}: column {overrides[key]!r} (configured as `columns: {{{key}: ...}}`) "
                               f"is not in the table; its columns are: {', '.join(map(str, df.columns[:40]))}")
        return overrides[key]
    lower = {str(c).lower(): c for c in df.columns}
    for cand in COLUMNS[fmt].get(key, []):
        cand = cand.replace("{E}", endpoint)
        if cand.lower() in lower:
            return lower[cand.lower()]
    return None


def _some(items: list[str], n: int = 10) -> str:
    return "; ".join(items[:n]) + (f"; … ({len(items) - n} more)" if len(items) > n else "")


def load_clinical(path: str | Path, fmt: str, columns: Mapping[str, str] | None = None,
                  label_map: Mapping[str, int] | None = None, *,
                  stage_map: Mapping[Any, Any] | None = None, endpoint: str = "OS") -> pd.DataFrame:
    """Read a clinical table into one row per case: ``case_id, stage, time, event`` (+ ``label``).

    ``columns`` overrides the column lookup (keys: :data:`COLUMN_KEYS`), ``stage_map`` maps raw
    stage values to AJCC stages before parsing (``{1: I, 2: II, 3: III, 4: IV}`` for tables
    that write digits), ``endpoint`` picks TCGA-CDR's / cBioPortal's survival endpoint.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise DatasetError(f"unknown clinical format {fmt!r} for {path}; use one of {', '.join(FORMATS)}")
    if endpoint not in ENDPOINTS[fmt]:
        raise DatasetError(f"{path}: endpoint {endpoint!r} is not one of {fmt}'s ({', '.join(ENDPOINTS[fmt])})")
    raw, first = read_table(path)
    ov = dict(columns or {})
    rows = pd.Series(range(first, first + len(raw)), index=raw.index)
    cid = _find(raw, "case_id", fmt, ov, endpoint, path)
    if cid is None:
        uuid_cols = [c for c in raw.columns if c.lower() in ("case_id", "cases.case_id")]
        note = (f" ({', '.join(uuid_cols)} holds GDC UUIDs, which never match slide barcodes)"
                if fmt == "gdc" and uuid_cols else "")
        raise DatasetError(f"{path}: no case id column for format {fmt!r} (looked for "
                           f"{', '.join(COLUMNS[fmt]['case_id'])}){note}. Fix: set `columns: "
                           f"{{case_id: <column with the TCGA-XX-XXXX barcodes>}}` in the dataset config"
                           + ("" if fmt != "normalized" else " or name the column case_id"))
    ids = raw[cid].astype(str).str.strip()
    uuids = ids[ids.map(lambda v: bool(_UUID.match(v)))]
    if len(uuids) and len(uuids) >= 0.5 * len(ids):
        raise DatasetError(f"{path}: column {cid!r} holds UUIDs (row {rows[uuids.index[0]]}: "
                           f"{uuids.iloc[0]!r}), not the TCGA barcodes slides are named by. Fix: point "
                           f"`columns: {{case_id: ...}}` at the barcode column (case_submitter_id / "
                           f"cases.submitter_id / bcr_patient_barcode / PATIENT_ID).")
    no_id = ids.map(is_na)
    if no_id.any():
        log.warning("%s: %d row(s) without a case id are skipped (rows %s). Fix: fill in %s or delete "
                    "those rows.", path, int(no_id.sum()), ", ".join(map(str, rows[no_id].head(10))), cid)
    out = pd.DataFrame({"case_id": ids, "row": rows})[~no_id]
    idx = out.index

    out["stage"] = _stages(raw.loc[idx], out, fmt, ov, endpoint, path, stage_map)
    time_unit = _survival(raw, out, rows, ids, fmt, ov, endpoint, path)
    if fmt == "normalized":
        col = _find(raw, "label", fmt, ov, endpoint, path)
        if col is not None:  # binary classification (e.g. CAMELYON16: normal / tumor)
            out["label"] = [parse_label(v, label_map, f"{path}, row {rows[i]} ({col})")
                            for i, v in raw.loc[idx, col].items()]
    out = _merge_case_rows(out, path, time_unit)
    _drop_bad_times(out, path, time_unit)
    out.loc[out["time"].isna(), "event"] = np.nan
    out.loc[out["event"].isna(), "time"] = np.nan
    cols = ["case_id", "stage", "time", "event"] + (["label"] if "label" in out else [])
    return out[cols].reset_index(drop=True)


def _survival(raw: pd.DataFrame, out: pd.DataFrame, rows: pd.Series, ids: pd.Series, fmt: str,
              ov: Mapping[str, str], endpoint: str, path: Path) -> str:
    """Fill ``out``'s ``event`` and ``time`` (months) from ``raw``; return the unit the table writes."""
    idx = out.index
    time_unit = "months"
    bad_numbers: list[str] = []

    def numbers(col: str | None) -> pd.Series:
        if col is None:
            return pd.Series(np.nan, index=idx)
        vals = []
        for i, v in raw.loc[idx, col].items():
            f, why = _number(v)
            if why:
                bad_numbers.append(f"row {rows[i]} ({ids[i]}): {col} = {v!r} ({why})")
            vals.append(f)
        return pd.Series(vals, index=idx, dtype=float)

    if fmt == "gdc":
        vs, dd, dfu = (_find(raw, k, fmt, ov, endpoint, path)
                       for k in ("vital_status", "days_to_death", "days_to_follow_up"))
        dead = raw.loc[idx, vs].map(parse_event) if vs else pd.Series(np.nan, index=idx)
        d_death, d_fu = numbers(dd), numbers(dfu)
        out["event"] = dead.astype(float)
        out["time"] = np.where(dead == 1, d_death, np.where(dead == 0, d_fu, np.nan)) / DAYS_PER_MONTH
        time_unit = "days"
    else:
        ev, tm = (_find(raw, k, fmt, ov, endpoint, path) for k in ("event", "time"))
        missing = [(k, COLUMNS[fmt].get(k, [])) for k, c in (("event", ev), ("time", tm)) if c is None]
        if missing and (ev or tm or fmt != "normalized"):
            log.warning("%s: no %s for format %r, so no case has survival labels. Fix: add the column, or name "
                        "it with `columns: {%s: <column>}` in the dataset config", path,
                        " and no ".join(f"{k} column (looked for {', '.join(c.replace('{E}', endpoint) for c in cands)})"
                                        for k, cands in missing), fmt, missing[0][0])
        out["event"] = raw.loc[idx, ev].map(parse_event).astype(float) if ev else np.nan
        t = numbers(tm)
        if fmt == "tcga-cdr":
            t, time_unit = t / DAYS_PER_MONTH, "days"
        out["time"] = t
    if bad_numbers:
        log.warning("%s: %d survival value(s) are not plain numbers; those cases are left out of survival "
                    "(%s). Fix: write plain numbers (%s, no thousands separators, no inf).", path,
                    len(bad_numbers), _some(bad_numbers), time_unit)
    return time_unit


def _drop_bad_times(out: pd.DataFrame, path: Path, time_unit: str) -> None:
    """Leave cases with a survival time <= 0 out of survival (in place), with a warning."""
    bad_time = out["time"].notna() & ~(out["time"] > 0)
    if bad_time.any():
        sel = out[bad_time]
        scale = DAYS_PER_MONTH if time_unit == "days" else 1.0
        shown = ", ".join(f"{c} ({t * scale:.6g})" for c, t in zip(sel["case_id"].head(10), sel["time"].head(10)))
        log.warning("%s: %d case(s) with a survival time <= 0 are left out of survival: %s%s (rows %s; "
                    "times in %s). Fix: correct their times (%s from diagnosis to death or last follow-up, "
                    "> 0).", path, int(bad_time.sum()), shown, " …" if bad_time.sum() > 10 else "",
                    ", ".join(sel["rows"].head(10)), time_unit, time_unit)
        out.loc[bad_time, ["time", "event"]] = np.nan


def _stages(raw: pd.DataFrame, out: pd.DataFrame, fmt: str, ov: Mapping[str, str], endpoint: str,
            path: Path, stage_map: Mapping[Any, Any] | None) -> pd.Series:
    col = _find(raw, "stage", fmt, ov, endpoint, path)
    if col is None:
        return pd.Series(np.nan, index=out.index)
    smap = {str(k).strip().lower(): v for k, v in (stage_map or {}).items()}
    col_digits = sorted({str(v).strip() for v in raw[col] if str(v).strip().isdigit()}, key=int)
    mapped = {k for k in smap if k.isdigit()}
    if mapped and set(col_digits) - mapped:
        raise DatasetError(f"{path}: `stage_map` maps the digit(s) {', '.join(sorted(mapped, key=int))} but column "
                           f"{col!r} also holds {', '.join(d for d in col_digits if d not in mapped)}, which would be "
                           f"read as 0-based stages. Fix: map every digit, e.g. `stage_map: {_digit_map(col_digits)}` "
                           "(for 1-based AJCC stages I..IV)")
    vals, bad, digits = [], [], []
    for i, v in raw[col].items():
        s = str(v).strip()
        if s.lower() in smap:
            s = smap[s.lower()]
            s = "" if s is None else str(s)
            if s.isdigit():
                raise DatasetError(f"`stage_map` maps {v!r} to {s!r}: map to AJCC stages (I, II, III, IV, "
                                   f"IIIA, ...) or to NA, not to digits")
        elif s.isdigit() and (fmt != "normalized" or not 0 <= int(s) <= 3):
            digits.append((int(out.loc[i, "row"]), s))
        try:
            vals.append(parse_stage(s) if not s.isdigit() or fmt == "normalized" else np.nan)
        except DatasetError:
            vals.append(np.nan)
            bad.append(f"row {out.loc[i, 'row']} ({out.loc[i, 'case_id']}): {str(v)!r}")
    if digits:
        seen = sorted({d for _, d in digits}, key=int)
        example = _digit_map(col_digits)  # every digit of the column: a partial map would shift the others
        raise DatasetError(f"{path}: column {col!r} writes stages as digits ({', '.join(seen)}; e.g. row "
                           f"{digits[0][0]}: {digits[0][1]!r}), which could be 0-based or 1-based. Fix: say "
                           f"what they mean with `stage_map: {example}` in the dataset config (for 1-based "
                           f"AJCC stages I..IV), or write the stages as AJCC strings (Stage I..IV).")
    if bad:
        log.warning("%s: %d unknown stage value(s) (%s); those cases are left out of staging. Fix: write "
                    "AJCC stages (Stage I..IV, IA, IIIB, ...) or an NA marker ('--, Not Reported) in that "
                    "column, or map them with `stage_map` in the dataset config.", path, len(bad), _some(bad))
    return pd.Series(vals, index=out.index, dtype=float)


def _digit_map(digits: list[str]) -> str:
    """The ``stage_map`` that reads ``digits`` as 1-based AJCC stages: ``{1: I, 2: II, 3: III, 4: IV}``."""
    return "{" + ", ".join(f"{d}: {_STAGE_NAMES[int(d) - 1]}" if 1 <= int(d) <= 4 else f"{d}: ..."
                           for d in digits) + "}"


def parse_label(value: Any, label_map: Mapping[str, int] | None, where: str) -> float:
    """A binary label: 0/1, or a string of ``label_map`` (case-insensitive, e.g. ``{normal: 0, tumor: 1}``);
    NA markers -> NA; anything else is a :class:`DatasetError` naming ``where`` (file and row)."""
    if is_na(value):
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


def _fmt_surv(time: float, event: float, unit: str) -> str:
    if np.isnan(time) and np.isnan(event):
        return "NA"
    t = time * (DAYS_PER_MONTH if unit == "days" else 1.0)
    ev = {1.0: "event", 0.0: "censored"}.get(float(event), "NA")
    return f"{t:.6g} {unit}, {ev}"


def _merge_case_rows(df: pd.DataFrame, path: Path, unit: str) -> pd.DataFrame:
    """One row per case. GDC repeats a case once per treatment: rows that agree merge silently
    (an NA in one row takes the other rows' value). Censored rows that differ only in follow-up
    merge to the longest follow-up, named in a warning. Rows that disagree on stage, on the event,
    or on the time of an observed event are an error naming the case, both values and rows."""
    conflicts: list[str] = []
    merged_fu: list[str] = []
    records = []
    for case, g in df.groupby("case_id", sort=False):
        rec: dict[str, Any] = {"case_id": case, "rows": ", ".join(map(str, g["row"]))}
        if len(g) == 1:
            r = g.iloc[0]
            rec.update(stage=r["stage"], time=r["time"], event=r["event"])
            if "label" in g:
                rec["label"] = r["label"]
            records.append(rec)
            continue
        for col in ("stage", "label"):
            if col not in g:
                continue
            vals = g[col].dropna()
            if vals.nunique() > 1:
                a, b = vals.index[0], vals.index[vals != vals.iloc[0]][0]
                name = {"stage": lambda v: f"stage {_STAGE_NAMES[int(v)]}", "label": lambda v: f"label {v:g}"}[col]
                conflicts.append(f"{case}: {name(vals[a])} (row {g.loc[a, 'row']}) vs {name(vals[b])} "
                                 f"(row {g.loc[b, 'row']})")
            rec[col] = vals.iloc[0] if len(vals) else np.nan
        surv = g.dropna(subset=["time", "event"])
        pairs = {(round(float(t), 6), float(e)) for t, e in zip(surv["time"], surv["event"])}
        if len(pairs) > 1:
            if set(surv["event"]) == {0.0}:  # follow-up recorded at several visits: the latest counts
                i = surv["time"].idxmax()
                rec.update(time=surv.loc[i, "time"], event=0.0)
                merged_fu.append(f"{case} (rows {rec['rows']}: {_fmt_surv(surv.loc[i, 'time'], 0.0, unit)} "
                                 f"from row {surv.loc[i, 'row']})")
            else:
                a = surv.index[0]
                b = next(j for j in surv.index if (round(float(surv.loc[j, 'time']), 6),
                                                   float(surv.loc[j, 'event'])) != (round(float(surv.loc[a, 'time']), 6),
                                                                                      float(surv.loc[a, 'event'])))
                conflicts.append(f"{case}: {_fmt_surv(surv.loc[a, 'time'], surv.loc[a, 'event'], unit)} "
                                 f"(row {surv.loc[a, 'row']}) vs {_fmt_surv(surv.loc[b, 'time'], surv.loc[b, 'event'], unit)} "
                                 f"(row {surv.loc[b, 'row']})")
                rec.update(time=np.nan, event=np.nan)
        elif pairs:
            t, e = next(iter(pairs))
            rec.update(time=surv["time"].iloc[0], event=e)
        else:
            rec.update(time=np.nan, event=np.nan)
        records.append(rec)
    if conflicts:
        raise DatasetError(f"{path}: {len(conflicts)} case(s) have rows that disagree: {_some(conflicts)}. "
                           f"Fix: keep the right row of each case (or correct the other) -- rows of one case "
                           f"must agree on stage, vital status and time (GDC repeats a case once per "
                           f"treatment with the same values).")
    if merged_fu:
        log.warning("%s: %d censored case(s) have several follow-up times; the longest is used: %s",
                    path, len(merged_fu), _some(merged_fu))
    cols = ["case_id", "rows", "stage", "time", "event"] + (["label"] if "label" in df else [])
    return pd.DataFrame(records, columns=cols)
