"""Datasets: where a cohort's slides and clinical table are, and how to read them into the
normalized cohort table every other part uses (one row per slide):

    case_id, slide_id, slide_path, stage (0..3 or NA), time (months or NA), event (1 = death, 0, NA)

A dataset is a YAML file (``configs/datasets/<name>.yaml``), validated strictly
(:mod:`bench.data.schema`): unknown keys, wrong types and misspelt families or method globs are
errors naming the file and line. Clinical sources are read by :mod:`bench.data.clinical`, slide
folders by :mod:`bench.data.slides`; :func:`load_cohort` joins them (case id = the first 12
characters of the slide barcode for TCGA) and records everything it left out and why.
``features:`` points two-stage methods at public pre-extracted feature folders
(:mod:`bench.data.features`); without a slide folder the cohort then comes from those files.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .clinical import (COLUMN_KEYS, DAYS_PER_MONTH, ENDPOINTS, FORMATS, NA_MARKERS, DatasetError,  # noqa: F401
                       load_clinical, parse_event, parse_label, parse_stage)
from .schema import ConfigError, Source, check_choice, check_keys, check_type, did_you_mean, load_yaml
from .slides import (DEFAULT_SAMPLE_TYPES, DEFAULT_SLIDE_TYPES, OTHER_IMAGE_SUFFIXES,  # noqa: F401
                     SLIDE_SUFFIXES, SlideFilter, slide_table, walk)
from ..resources import config_path, list_configs

log = logging.getLogger(__name__)

FAMILIES = ("two-stage", "end-to-end")


@dataclass
class DatasetSpec:
    name: str
    description: str = ""
    slides: str = "slides"
    slide_glob: list[str] = field(default_factory=lambda: ["**/*"])
    # which TCGA slides count: {sample_types: [1, ..., 9] | all, slide_types: [DX] | all}
    slide_filter: dict[str, Any] = field(default_factory=dict)
    clinical: str = "clinical.csv"
    clinical_format: str = "normalized"
    columns: dict[str, str] = field(default_factory=dict)
    # raw stage value -> AJCC stage, for tables that write digits: {1: I, 2: II, 3: III, 4: IV}
    stage_map: dict[Any, Any] = field(default_factory=dict)
    endpoint: str = "OS"  # survival endpoint of tcga-cdr (OS, DSS, DFI, PFI) / cbioportal (OS, DSS, DFS, PFS)
    case_id: str = "tcga"  # "tcga" = first 12 characters; "stem" = the whole file stem
    tasks: list[str] = field(default_factory=lambda: ["staging", "survival"])
    allow_random_weights: bool = False
    # with random weights, conch/gigapath become small stand-ins of their family (marked ‡ in tables)
    random_encoder_standin: bool = False
    generator: str | None = None  # "demo": generated on first use
    generator_args: dict[str, Any] = field(default_factory=dict)  # e.g. {n_cases: 12, seed: 0}
    root: str = ""  # relative to $BENCH_DATA
    download: str = ""
    # the YAML this spec was read from (set by load_spec, not a YAML key): messages name it
    config_file: str = field(default="", compare=False, repr=False)
    mpp_override: float | None = None
    # DataLoader worker processes decoding tiles during feature extraction (None: cores - 1, 1 to
    # 4; 0: threads in the main process); `bench extract --workers` wins
    extract_workers: int | None = None
    # training options per method family ("two-stage", "end-to-end") that this dataset needs,
    # e.g. fewer epochs on the demo; precedence: CLI --set > these > configs/methods/*.yaml
    train: dict[str, dict[str, Any]] = field(default_factory=dict)
    # network options per family or method glob, e.g. {pixelmamba-*: {scan_window: 64}}; CLI --model wins
    model: dict[str, dict[str, Any]] = field(default_factory=dict)
    # input options per family or method glob: what a method reads, e.g. {end-to-end: {magnification:
    # 0.625}} or {end-to-end: {regions: {n: 100, size: 2048, ...}}}; CLI --input wins
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # binary labels of the classification task: strings of the `label` column -> 0/1, e.g. {normal: 0, tumor: 1}
    labels: dict[str, int] = field(default_factory=dict)
    # per ablation, the grid this dataset runs: {<ablation>: {values: [...]}} replaces the grid,
    # {<ablation>: {values: {paper value: value here}}} maps it (the demo scales inputs to a CPU)
    ablations: dict[str, dict[str, Any]] = field(default_factory=dict)
    # pre-extracted features per encoder name: {resnet50: {path: ..., encoder: resnet50,
    # patch_size: 256, magnification: 20}} (TRIDENT/CLAM .h5 per slide; bench.data.features)
    features: dict[str, dict[str, Any]] = field(default_factory=dict)
    protocol: str | None = None  # the protocol preset of its units (bench.engine.protocol); --protocol wins

    @property
    def data_root(self) -> Path:
        base = Path(os.environ.get("BENCH_DATA", "data")).expanduser()
        return (base / self.root) if self.root else base

    def path(self, rel: str) -> Path:
        p = Path(rel).expanduser()
        return p if p.is_absolute() else self.data_root / p

    @property
    def filter(self) -> SlideFilter | None:
        """The TCGA sample filter (None: not a TCGA-named cohort, nothing is filtered)."""
        if self.case_id != "tcga":
            return None
        sf = self.slide_filter or {}
        st = sf.get("sample_types", list(DEFAULT_SAMPLE_TYPES))
        kt = sf.get("slide_types", list(DEFAULT_SLIDE_TYPES))
        return SlideFilter(None if st == "all" else tuple(int(v) for v in st),
                           None if kt == "all" else tuple(str(v).upper() for v in kt))


def list_datasets() -> list[str]:
    return list_configs("datasets")


def _spec_path(name: str) -> tuple[str, Path]:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path.stem, path
    path = config_path("datasets", name)
    if not path.is_file():
        raise DatasetError(f"unknown dataset {name!r}{did_you_mean(name, list_datasets())}; known: "
                           f"{', '.join(list_datasets())} (add configs/datasets/{name}.yaml to define it, "
                           "or pass the path of a YAML file)")
    return name, path


def load_spec(name: str) -> DatasetSpec:
    """A dataset by name (configs/datasets/<name>.yaml) or by the path of its YAML file, validated."""
    name, path = _spec_path(name)
    try:
        src = load_yaml(path, "dataset config")
        data = validate_spec(src)
    except ConfigError as exc:
        raise DatasetError(str(exc)) from None
    data.setdefault("name", name)
    return DatasetSpec(**data, config_file=str(path))


def validate_spec(src: Source) -> dict[str, Any]:
    """Every key of a dataset YAML checked: name, type, allowed values; returns the mapping with
    a string ``slide_glob`` made a list. Raises :class:`ConfigError` naming file, line and key."""
    from ..registry import list_methods

    data = dict(src.data)
    w = src.where
    check_keys(data, [k for k in DatasetSpec.__dataclass_fields__ if k != "config_file"], w())
    for key in ("name", "description", "slides", "clinical", "root", "download"):
        if key in data:
            check_type(data[key], str, w(key))
    if "slide_glob" in data:
        g = check_type(data["slide_glob"], (str, list), w("slide_glob"))
        data["slide_glob"] = [g] if isinstance(g, str) else [check_type(v, str, w("slide_glob")) for v in g]
    fmt = check_choice(data.get("clinical_format", "normalized"), FORMATS, w("clinical_format"))
    check_choice(data.get("endpoint", "OS"), ENDPOINTS[fmt], w("endpoint"))
    check_choice(data.get("case_id", "tcga"), ("tcga", "stem"), w("case_id"))
    for key in ("allow_random_weights", "random_encoder_standin"):
        if key in data:
            check_type(data[key], bool, w(key))
    if data.get("generator") is not None:
        check_choice(data["generator"], ("demo",), w("generator"))
    check_keys(data.get("generator_args"), ("n_cases", "seed", "binary_label"), w("generator_args"))
    if data.get("mpp_override") is not None:
        mpp = check_type(data["mpp_override"], float, w("mpp_override"))
        if not 0.05 <= mpp <= 20:
            raise ConfigError(f"{w('mpp_override')} = {mpp:g} um/px is outside 0.05..20 (0.25 = 40x, 0.5 = 20x)")
    if data.get("extract_workers") is not None:
        if check_type(data["extract_workers"], int, w("extract_workers")) < 0:
            raise ConfigError(f"{w('extract_workers')} must be >= 0")
    for k, v in check_keys(data.get("columns"), COLUMN_KEYS, w("columns")).items():
        check_type(v, str, w(f"columns.{k}"))
    for k, v in (check_type(data.get("stage_map") or {}, dict, w("stage_map"))).items():
        if v is not None and not isinstance(v, str):
            raise ConfigError(f"{w(f'stage_map.{k}')} must map to an AJCC stage string (I, II, IIIA, ...) "
                              f"or null, got {v!r}")
    if "tasks" in data:
        tasks = check_type(data["tasks"], list, w("tasks"))
        for t in tasks:
            check_type(t, str, w("tasks"))
    sf = check_keys(data.get("slide_filter"), ("sample_types", "slide_types"), w("slide_filter"))
    for key, kind in (("sample_types", int), ("slide_types", str)):
        v = sf.get(key)
        if v is None or v == "all":
            continue
        for item in check_type(v, list, w(f"slide_filter.{key}")):
            check_type(item, kind, w(f"slide_filter.{key}"))
            if kind is int and not 1 <= item <= 99:
                raise ConfigError(f"{w(f'slide_filter.{key}')}: sample type {item} is not in 1..99")
    for fam, opts in check_keys(data.get("train"), FAMILIES, w("train")).items():
        check_type(opts, dict, w(f"train.{fam}"))
    names = [m.name for m in list_methods()]
    for key, opts in (check_type(data.get("model") or {}, dict, w("model"))).items():
        check_type(opts, dict, w(f"model.{key}"))
        if key not in FAMILIES and not fnmatch.filter(names, key):
            raise ConfigError(f"{w(f'model.{key}')}: {key!r} is neither a method family ({', '.join(FAMILIES)}) "
                              f"nor a glob matching a method{did_you_mean(key, [*FAMILIES, *names])}")
    for k, v in (check_type(data.get("labels") or {}, dict, w("labels"))).items():
        if check_type(v, int, w(f"labels.{k}")) not in (0, 1):
            raise ConfigError(f"{w(f'labels.{k}')} must be 0 or 1")
    known_ablations = list_configs("ablations")
    for k, v in (check_type(data.get("ablations") or {}, dict, w("ablations"))).items():
        if k not in known_ablations:  # an ablation given as its own YAML file is named by its stem
            log.warning("%s: no shipped ablation is named %r%s; the entry applies only to an ablation file "
                        "%s.yaml given by path", w("ablations"), k, did_you_mean(k, known_ablations), k)
        check_keys(v, ("values", "model"), w(f"ablations.{k}"))
    from .features import validate_features

    validate_features(check_type(data.get("features") or {}, dict, w("features")), src)
    return data


def find_slides(spec: DatasetSpec) -> pd.DataFrame:
    """Slide files of a dataset -> ``slide_id, slide_path``; duplicate ids across folders are an error.

    ``df.attrs["ignored"]``: [(path, why)] for files the glob matched that are not slides (hidden
    files, other formats, dangling links, directories named like slides, symlink loops);
    ``df.attrs["filtered"]``: {why: [slide ids]} left out by the TCGA sample filter;
    ``df.attrs["found"]``: how many slides were found before the filter.
    """
    root = spec.path(spec.slides)
    if not root.is_dir():
        raise DatasetError(_missing_message(spec, f"slide directory {root} does not exist"))
    found = walk(root, spec.slide_glob)
    if found.duplicates:
        sid, a, b = found.duplicates[0]
        raise DatasetError(f"slide id {sid!r} appears twice: {a} and {b}. Slide ids are file "
                           "stems and must be unique: remove or rename one copy, or narrow "
                           f"`slide_glob` (now {spec.slide_glob}) in the dataset config.")
    ignored = found.ignored
    if ignored:
        log.warning("%s: %d file(s) under %s are not used: %s", spec.name, len(ignored), root,
                    "; ".join(f"{p}: {why}" for p, why in ignored[:10]) + (" …" if len(ignored) > 10 else ""))
    if not found.slides:
        raise DatasetError(_missing_message(spec, f"no slide files matching {spec.slide_glob} under {root}"))
    return slide_table(found.slides, spec.filter, ignored)


def _log_filtered(spec: DatasetSpec, filtered: dict[str, list[str]], found: int) -> None:
    if not filtered:
        return
    n_out = sum(map(len, filtered.values()))
    log.warning("%s: %d of %d slides are left out by the slide filter (%s): %s. Fix: if they should "
                "count, widen `slide_filter: {sample_types: [...], slide_types: [...]}` in the dataset "
                "config (`all` keeps every value).", spec.name, n_out, found, _filter_desc(spec.filter),
                "; ".join(f"{len(v)} {why} ({_some(v, 3)})" for why, v in filtered.items()))


def _filter_desc(flt: SlideFilter | None) -> str:
    if flt is None:
        return "none"
    st = "all sample types" if flt.sample_types is None else \
        ("tumour samples 01-09" if flt.sample_types == DEFAULT_SAMPLE_TYPES
         else "sample types " + ", ".join(f"{v:02d}" for v in flt.sample_types))
    kt = "all slide types" if flt.slide_types is None else "slide types " + "/".join(flt.slide_types)
    return f"keeps {st}, {kt}"


def _missing_message(spec: DatasetSpec, what: str) -> str:
    msg = f"dataset {spec.name!r}: {what} (BENCH_DATA={os.environ.get('BENCH_DATA', '<unset>, using ./data')})."
    if spec.download:
        msg += "\n" + spec.download.strip().replace("in this file", f"in {spec.config_file or 'its YAML file'}")
    return msg


@dataclass
class Cohort:
    """The normalized cohort table plus what was left out and why (never silently)."""

    spec: DatasetSpec
    table: pd.DataFrame  # one row per slide
    dropped: dict[str, list[str]]
    ignored_files: list[tuple[str, str]] = field(default_factory=list)  # (path, why) not slides
    filtered: dict[str, list[str]] = field(default_factory=dict)  # slide filter: why -> slide ids
    n_clinical: int = 0  # cases in the clinical table
    n_slides_found: int = 0  # slide files found, before the slide filter
    n_slides_kept: int = 0  # after the filter
    source: str = "slides"  # "slides", or "features" when the cohort comes from pre-extracted files

    def cases(self, task: str) -> pd.DataFrame:
        """One row per case with the task's labels (cases lacking them are left out)."""
        from ..tasks import labelled

        per_case = self.table.drop_duplicates("case_id").drop(columns=["slide_id", "slide_path"])
        return labelled(per_case, task).reset_index(drop=True)

    def slides_of(self) -> dict[str, list[str]]:
        return self.table.groupby("case_id")["slide_id"].apply(list).to_dict()

    @property
    def n_cases(self) -> int:
        return int(self.table["case_id"].nunique())

    def report(self, task: str | None = None) -> list[str]:
        lines = [f"{self.spec.name}: {self.n_cases} of {self.n_clinical} cases in the clinical table joined "
                 f"to {len(self.table)} of {self.n_slides_kept} {'feature files' if self.source == 'features' else 'slides'}"]
        for why, ids in self.dropped.items():
            if ids:
                lines.append(f"  left out: {len(ids)} {why} ({_some(ids)})")
        for t in ([task] if task else self.spec.tasks):
            missing = self.unlabelled(t)
            if missing:
                n_all = self.n_cases
                lines.append(f"  {t}: {n_all - len(missing)} of {n_all} cases have its labels; {len(missing)} "
                             f"left out of {t} ({_some(missing)})")
        return lines

    def unlabelled(self, task: str) -> list[str]:
        """Cases with slides but without the task's labels (NA, unknown or invalid values)."""
        return sorted(set(self.table["case_id"]) - set(self.cases(task)["case_id"]))

    def fold_problems(self, tasks: list[str] | None = None, n_folds: int = 5) -> list[str]:
        """Why ``run`` cannot make ``n_folds`` patient-level folds for a task (empty: it can)."""
        out = []
        for t in tasks or self.spec.tasks:
            n = len(self.cases(t))
            if n < n_folds:
                out.append(f"{t}: {n} of {self.n_cases} joined cases have its labels, fewer than the {n_folds} "
                           f"folds ({self.n_clinical} cases in {self.spec.path(self.spec.clinical)}, "
                           f"{self.n_slides_kept} {'feature files' if self.source == 'features' else 'slides'} "
                           "found). Fix: see what was left out above (`bench doctor --dataset "
                           f"{self.spec.name}`), or lower --folds")
        return out

    def require_folds(self, tasks: list[str] | None = None, n_folds: int = 5) -> None:
        """A DatasetError with every reason :meth:`fold_problems` finds (what doctor reports)."""
        problems = self.fold_problems(tasks, n_folds)
        if problems:
            raise DatasetError(f"dataset {self.spec.name!r} cannot be run: " + "; ".join(problems))


def _some(ids: list[str], n: int = 10) -> str:
    return ", ".join(ids[:n]) + (f", … ({len(ids) - n} more)" if len(ids) > n else "")


def _case_of(slide_id: str, rule: str) -> str:
    return slide_id[:12] if rule == "tcga" else slide_id


def load_cohort(name_or_spec: str | DatasetSpec) -> Cohort:
    """The joined cohort ``run``, ``doctor``, ``extract`` and ``splits`` all use."""
    spec = load_spec(name_or_spec) if isinstance(name_or_spec, str) else name_or_spec
    if spec.generator == "demo":
        from .demo import generate_demo

        generate_demo(spec.data_root, **spec.generator_args)
    clinical_path = spec.path(spec.clinical)
    if not clinical_path.is_file():
        raise DatasetError(_missing_message(spec, f"clinical table {clinical_path} does not exist"))
    source = "slides"
    if spec.features and not spec.path(spec.slides).is_dir():
        from .features import cohort_slides

        slides, source = cohort_slides(spec), "features"
    else:
        slides = find_slides(spec)
    ignored = list(slides.attrs.get("ignored", []))
    filtered = dict(slides.attrs.get("filtered", {}))
    found = int(slides.attrs.get("found", len(slides)))
    _log_filtered(spec, filtered, found)
    slides["case_id"] = slides["slide_id"].map(lambda s: _case_of(s, spec.case_id))
    clin = load_clinical(clinical_path, spec.clinical_format, spec.columns, spec.labels or None,
                         stage_map=spec.stage_map or None, endpoint=spec.endpoint)
    merged = slides.merge(clin, on="case_id", how="inner")
    dropped = {
        "slides without a clinical row": sorted(set(slides["slide_id"]) - set(merged["slide_id"])),
        "cases in the clinical table without a slide": sorted(set(clin["case_id"]) - set(slides["case_id"])),
    }
    where = spec.path(spec.slides) if source == "slides" else "the feature folders"
    fixes = {
        "slides without a clinical row": f"Fix: add their cases to {clinical_path} (case id = "
        + ("the first 12 characters of the file name" if spec.case_id == "tcga" else "the file stem")
        + "), or move the slides out of the slide folder",
        "cases in the clinical table without a slide": f"Fix: put their slides under {where} "
        f"(matching {spec.slide_glob}), or ignore this if they were never scanned",
    }
    if filtered:
        fixes["cases in the clinical table without a slide"] += (
            "; some slides were left out by the slide filter (see above)")
    if len(merged) == 0 and len(clin) and len(slides):
        fixes["cases in the clinical table without a slide"] += (
            f". No case joined at all: the table's case ids look like {clin['case_id'].iloc[0]!r}, the "
            f"slides' like {slides['case_id'].iloc[0]!r}; if the table's ids are another column, set "
            f"`columns: {{case_id: <column>}}` in the dataset config")
    for why, ids in dropped.items():
        if ids:
            log.warning("%s: %d %s are left out: %s%s. %s.", spec.name, len(ids), why, ", ".join(ids[:10]),
                        " …" if len(ids) > 10 else "", fixes[why])
    cols = ["case_id", "slide_id", "slide_path", "stage", "time", "event"] + (["label"] if "label" in merged else [])
    table = merged[cols].sort_values(["case_id", "slide_id"]).reset_index(drop=True)
    return Cohort(spec, table, dropped, ignored, filtered, n_clinical=len(clin), n_slides_found=found,
                  n_slides_kept=len(slides), source=source)
