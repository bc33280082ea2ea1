"""Published numbers beside ours: ``bench table --published SOURCE``.

A source is a CSV of published results, one row per (source, table, dataset, task, metric, method,
encoder, mean, std, split_set, notes): shipped in ``bench/configs/published/<source>.csv`` (the
Pixel-Mamba paper's Tables 2–6 and 9 and its supplement's CAMELYON16 table), or the user's own in
``<overlay>/published/<source>.csv``. Each of our default rows is matched to the source's main
table by (dataset, task, metric, method) and shown with the difference and every protocol difference
the records can tell (split set, random weights, protocol preset, folds finished, magnification).
"""

from __future__ import annotations

import io
import math
from importlib import resources

import pandas as pd

from ..resources import overlay_dir

COLUMNS = ["source", "table", "dataset", "task", "metric", "method", "encoder", "mean", "std", "split_set", "notes"]
MAIN_TABLE = {"pixel-mamba": ("Table 2", "Supplement Table 4")}  # the tables our default rows line up with
DEMO = ("demo", "demo-long")


def list_sources() -> list[str]:
    shipped = resources.files("bench").joinpath("configs", "published")
    names = {p.name[:-4] for p in shipped.iterdir() if p.name.endswith(".csv")}
    overlay = overlay_dir()
    if overlay is not None and (overlay / "published").is_dir():
        names |= {p.stem for p in (overlay / "published").glob("*.csv")}
    return sorted(names)


def load_published(source: str) -> pd.DataFrame:
    """The source's rows; a missing or malformed file is a ValueError naming it."""
    overlay = overlay_dir()
    user = overlay / "published" / f"{source}.csv" if overlay is not None else None
    if user is not None and user.is_file():
        where, text = str(user), user.read_text()
    else:
        f = resources.files("bench").joinpath("configs", "published", f"{source}.csv")
        if not f.is_file():
            raise ValueError(f"unknown published source {source!r}; known: {', '.join(list_sources())} (add "
                             f"configs/published/{source}.csv with columns {', '.join(COLUMNS)})")
        where, text = str(f), f.read_text()
    df = pd.read_csv(io.StringIO(text), comment="#", dtype={"split_set": str, "encoder": str, "notes": str})
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {', '.join(missing)} (needs {', '.join(COLUMNS)})")
    return df.fillna({"split_set": "", "encoder": "", "notes": ""})


def _mag(notes: str) -> float | None:
    for part in notes.split(";"):
        part = part.strip()
        if part.startswith("magnification "):
            return float(part.split()[1].rstrip("x"))
    return None


def differences(row: pd.Series, pub: pd.Series) -> list[str]:
    """What differs between our row's protocol and the published one, as far as the records say."""
    out = []
    variant = row.get("variant")
    ours_split = variant if isinstance(variant, str) else ""
    theirs = pub["split_set"] or "not published"
    if not ours_split.startswith("splits-") or ours_split[len("splits-"):] != pub["split_set"]:
        out.append(f"split set: ours {ours_split or 'seeded folds'}, theirs {theirs}")
    if bool(row.get("random_weights")):
        out.append(f"random weights: {row.get('random_parts') or 'a pretrained part'}")
    if row.get("protocol") and row.get("protocol") != "paper":
        out.append(f"protocol preset {row['protocol']} (not paper)")
    if int(row.get("n_folds", 0)) != int(row.get("expected_folds", 5)) or int(row.get("n_folds", 0)) != 5:
        out.append(f"folds finished: {int(row.get('n_folds', 0))} of 5")
    theirs_mag, ours_mag = _mag(pub["notes"]), row.get("magnification")
    if theirs_mag is not None and ours_mag is not None and not math.isnan(float(ours_mag)) \
            and abs(float(ours_mag) - theirs_mag) > 0.1:
        out.append(f"magnification: ours {float(ours_mag):g}x, theirs {theirs_mag:g}x")
    return out


def _match(pub: pd.DataFrame, row: pd.Series) -> pd.Series | None:
    cand = pub[(pub["dataset"] == row["dataset"]) & (pub["task"] == row["task"]) & (pub["metric"] == row["metric"])
               & (pub["method"] == row["method"])]
    if len(cand) > 1 and row.get("magnification") is not None:  # e.g. LongViT at 0.6x, 2.5x, 5.0x
        by_mag = cand[[abs((_mag(n) or -1) - float(row["magnification"])) <= 0.1 for n in cand["notes"]]]
        cand = by_mag if len(by_mag) else cand
    return cand.iloc[0] if len(cand) else None


def comparison_lines(summary: pd.DataFrame, source: str, dataset: str) -> list[str]:
    """Markdown: our default rows of ``dataset`` beside the source's numbers (primary metrics)."""
    pub = load_published(source)
    pub = pub[pub["table"].isin(MAIN_TABLE.get(source, pub["table"].unique()))]
    lines = [f"\nPublished: {source} ({', '.join(sorted(pub['table'].unique()))})"]
    ours = summary[summary["primary"] & summary["variant"].fillna("").astype(str).str.match(r"^(splits-.*)?$")]
    if dataset in DEMO or dataset.startswith("demo"):
        lines.append(f"not comparable: demo cohort ({dataset} is generated, not a TCGA cohort); the published numbers "
                     "are listed for reference only, without a difference")
        ds = pub[pub["method"].isin(ours["method"])]
        lines += ["| Method | Published dataset | Task | Published |", "|---|---|---|---|"]
        lines += [f"| {r.method} | {r.dataset} | {r.task} | {_pm(r['mean'], r['std'])} |" for _, r in ds.iterrows()]
        return lines
    lines += ["| Method | Task | Ours | Published | Difference | Protocol differences |", "|---|---|---|---|---|---|"]
    n = 0
    for _, row in ours.iterrows():
        p = _match(pub, {**row.to_dict(), "dataset": dataset})
        if p is None:
            continue
        n += 1
        diff = row["mean"] - float(p["mean"])
        name = row["method"] + (f" ({row['variant']})" if isinstance(row.get("variant"), str) and row["variant"] else "")
        lines.append(f"| {name} | {row['task']} {row['metric']} | {_pm(row['mean'], row['std'])} | "
                     f"{_pm(p['mean'], p['std'])} | {diff:+.4f} | {'; '.join(differences(row, p)) or 'none known'} |")
    if not n:
        lines.append(f"(no row of {dataset} has a published counterpart in {source})")
    return lines


def _pm(mean: float, std: float) -> str:
    return f"{float(mean):.4f}" + ("" if std is None or (isinstance(std, float) and math.isnan(std)) else f" ± {float(std):.4f}")
