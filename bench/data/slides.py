"""Slide discovery: the files under a dataset's slide folder, as downloads lay them out.

* Symlinked sub-folders are followed (slides spread over disks are linked into one tree); a
  symlink loop is followed once and named; a dangling link (an unmounted share) and a directory
  whose name looks like a slide (``x.svs/``) are named, never silently skipped.
* A DICOM WSI is a folder of ``.dcm`` files, one per pyramid level: it is one slide, named by its
  folder, opened through its largest instance (OpenSlide finds the other levels beside it).
* The TCGA sample filter (:class:`SlideFilter`): a TCGA slide file is named by its barcode,
  ``TCGA-05-4244-01Z-00-DX1.<UUID>.svs``: characters 14-15 are the sample type (01-09 tumour,
  10-19 normal, 20-29 controls), the letters after the last dash the slide type (DX = diagnostic
  FFPE section, TS/BS/MS = top/bottom/middle frozen section). The default keeps tumour samples
  01-09 and diagnostic slides -- the FFPE cohort the paper and most of the literature use -- so a
  solid-tissue-normal slide never carries its patient's tumour label. Names that are not full
  TCGA barcodes are not filtered.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

# images a user may drop into a slide folder that no whole-slide reader here opens
OTHER_IMAGE_SUFFIXES = (".czi", ".lif", ".png", ".jpg", ".jpeg", ".bmp", ".jp2", ".isyntax", ".zvi", ".qptiff.gz")
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".dcm", ".svslide")

TCGA_BARCODE = re.compile(r"^TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}-(\d{2})[A-Z]?-\d{2}[A-Z]?-([A-Z]{2})\d*", re.I)
DEFAULT_SAMPLE_TYPES = tuple(range(1, 10))
DEFAULT_SLIDE_TYPES = ("DX",)
SAMPLE_TYPE_NAMES = {1: "primary tumour", 2: "recurrent tumour", 3: "primary blood cancer",
                     5: "additional primary", 6: "metastatic", 7: "additional metastatic",
                     10: "blood normal", 11: "solid tissue normal", 12: "buccal cell normal",
                     14: "bone marrow normal"}
SLIDE_TYPE_NAMES = {"DX": "diagnostic FFPE", "TS": "frozen top section", "BS": "frozen bottom section",
                    "MS": "frozen middle section"}


@dataclass(frozen=True)
class SlideFilter:
    """Which TCGA slides count; ``None`` in a field keeps every value of it."""

    sample_types: tuple[int, ...] | None = DEFAULT_SAMPLE_TYPES
    slide_types: tuple[str, ...] | None = DEFAULT_SLIDE_TYPES

    def why_out(self, slide_id: str) -> str | None:
        """The reason ``slide_id`` is left out, or None when it counts."""
        m = TCGA_BARCODE.match(slide_id)
        if m is None:
            return None
        sample, kind = int(m.group(1)), m.group(2).upper()
        if self.sample_types is not None and sample not in self.sample_types:
            name = SAMPLE_TYPE_NAMES.get(sample, "not a tumour sample" if sample >= 10 else "other")
            return f"sample type {sample:02d} ({name})"
        if self.slide_types is not None and kind not in self.slide_types:
            return f"slide type {kind} ({SLIDE_TYPE_NAMES.get(kind, 'not ' + '/'.join(self.slide_types))})"
        return None


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob over a relative POSIX path: ``**/`` is any number of folders, ``*`` and ``?`` stay
    inside one name, ``[...]`` is a character class."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            j = pattern.find("]", i)
            if j < 0:
                out, i = out + re.escape("["), i + 1
            else:
                out, i = out + pattern[i:j + 1], j + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


@dataclass
class Found:
    slides: dict[str, Path]            # slide id -> the path a reader opens
    ignored: list[tuple[str, str]]     # (path, why): matched, not slides
    duplicates: list[tuple[str, Path, Path]]


def walk(root: Path, patterns: list[str]) -> Found:
    """Every slide under ``root`` matching ``patterns`` (relative globs), following symlinked
    folders once each (by device and inode, so loops end)."""
    regs = [_glob_regex(p) for p in patterns]
    slides: dict[str, Path] = {}
    ignored: list[tuple[str, str]] = []
    dups: list[tuple[str, Path, Path]] = []
    seen: set[tuple[int, int]] = set()
    dicom: dict[Path, list[Path]] = {}

    def matches(rel: str) -> bool:
        return any(r.match(rel) for r in regs)

    def add(sid: str, p: Path) -> None:
        if sid in slides and slides[sid] != p:
            dups.append((sid, slides[sid], p))
            return
        slides[sid] = p

    def visit(d: Path, rel: str) -> None:
        st = d.stat()
        if (st.st_dev, st.st_ino) in seen:
            ignored.append((str(d), f"symlink loop: this folder is already visited as {os.path.realpath(d)}; "
                                    "not followed again"))
            return
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            ignored.append((str(d), f"folder cannot be listed ({exc.strerror}); check its permissions"))
            return
        for e in entries:
            p, r = Path(e.path), f"{rel}{e.name}"
            suffix = p.suffix.lower()
            if e.is_symlink() and not p.exists():
                if matches(r) or suffix in SLIDE_SUFFIXES or not suffix:
                    ignored.append((str(p), f"dangling symlink to {os.readlink(p)} (an unmounted disk or "
                                            "share?); mount it or remove the link"))
                continue
            if e.is_dir(follow_symlinks=True):
                if suffix in SLIDE_SUFFIXES and suffix not in (".mrxs",) and matches(r):
                    if not any(c.suffix.lower() == ".dcm" for c in p.iterdir()):
                        ignored.append((str(p), f"a directory named like a slide file ({suffix}), not a "
                                                "slide; move the slide file out of it or rename it"))
                        continue
                visit(p, r + "/")
                continue
            if not matches(r):
                continue
            if e.name.startswith("."):
                ignored.append((str(p), "hidden file (e.g. macOS '._' metadata), not a slide"))
                continue
            if suffix == ".dcm":
                dicom.setdefault(p.parent, []).append(p)
                continue
            if suffix not in SLIDE_SUFFIXES:
                if suffix in OTHER_IMAGE_SUFFIXES:
                    ignored.append((str(p), f"unsupported format {suffix!r}; convert it to a pyramidal "
                                            "tiled TIFF (e.g. `vips tiffsave in out.tiff --tile --pyramid "
                                            "--compression jpeg`, or bfconvert for .czi/.lif)"))
                continue
            add(p.name[: -len(p.suffix)] if p.suffix else p.name, p)

    visit(root, "")
    for folder, files in sorted(dicom.items()):
        # one instance per level: the largest is level 0, and OpenSlide finds the series from any
        add(folder.name, max(files, key=lambda f: (f.stat().st_size, f.name)))
    return Found(slides, ignored, dups)


def slide_table(slides: dict[str, Path], flt: "SlideFilter | None", ignored: list | None = None) -> pd.DataFrame:
    """``slide_id, slide_path`` of the slides ``flt`` keeps; what it left out (reason -> ids), what
    else was found but not used, and how many were found ride along in ``df.attrs``."""
    filtered: dict[str, list[str]] = {}
    keep: dict[str, Path] = {}
    for sid, path in sorted(slides.items()):
        why = flt.why_out(sid) if flt is not None else None
        if why is None:
            keep[sid] = path
        else:
            filtered.setdefault(why, []).append(sid)
    df = pd.DataFrame({"slide_id": list(keep), "slide_path": [str(q) for q in keep.values()]})
    df.attrs.update(ignored=list(ignored or []), filtered=filtered, found=len(slides))
    return df
