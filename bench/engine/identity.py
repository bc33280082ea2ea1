"""A unit's identity: everything that changes its numbers, hashed into its ``config_hash``.

It covers the labels of the unit's cases for its task, each slide's identity
(:func:`feature_cache.slide.slide_fingerprint`, so a rescan under the same file name is seen), mpp overrides, the split set
(seed, n_folds), the resolved input, model and training options, the fingerprint of every
pretrained part (encoder, second stage, ``--init``), the protocol and the version of the numerical
code path. When a finished unit's identity differs from the one a rerun computes, the unit is redone
and :func:`explain` says why ("labels of 2 cases changed: ...").
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable

import pandas as pd

from feature_cache.slide import slide_fingerprint

# Bump when a change to training, prediction or scoring code changes the numbers a unit produces:
# every finished unit is then redone on the next run (the reason names this version).
NUMERICS_VERSION = 1


def slide_identities(table: pd.DataFrame, cases: Iterable[str]) -> dict[str, list[str]]:
    """case_id -> the sorted fingerprints of its slides, for ``cases``. Keyed by content, not file
    name: a slide renamed or moved to another disk keeps its identity, a rescan does not."""
    keep = set(cases)
    out: dict[str, list[str]] = {}
    for case, path in zip(table["case_id"], table["slide_path"]):
        if case not in keep:
            continue
        try:
            fp = slide_fingerprint(path) if isinstance(path, str) and path else "no-slide"
        except OSError:
            fp = "unreadable"
        out.setdefault(str(case), []).append(fp)
    return {c: sorted(v) for c, v in sorted(out.items())}


def labels_of(cases: pd.DataFrame, columns: Iterable[str]) -> dict[str, list[float]]:
    """case_id -> its label values for a task (e.g. [stage] or [time, event]), sorted by case."""
    cols = list(columns)
    out = {}
    for row in cases.sort_values("case_id").itertuples(index=False):
        d = row._asdict()
        out[str(d["case_id"])] = [round(float(d[c]), 6) for c in cols]
    return out


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def explain(old: dict[str, Any], new: dict[str, Any], limit: int = 3) -> list[str]:
    """Why the identity of a finished unit (``old``, its config.json) differs from ``new``: one
    phrase per changed part, naming the cases, slides or options."""
    reasons: list[str] = []
    ol, nl = old.get("labels") or {}, new.get("labels") or {}
    if ol != nl:
        changed = sorted(c for c in set(ol) & set(nl) if ol[c] != nl[c])
        added, removed = sorted(set(nl) - set(ol)), sorted(set(ol) - set(nl))
        bits = []
        if changed:
            bits.append(f"labels of {len(changed)} case(s) changed ({_some(changed, limit, ol, nl)})")
        if added:
            bits.append(f"{len(added)} case(s) added ({', '.join(added[:limit])})")
        if removed:
            bits.append(f"{len(removed)} case(s) removed ({', '.join(removed[:limit])})")
        reasons += bits
    os_, ns = old.get("slides") or {}, new.get("slides") or {}
    if os_ != ns:
        changed = sorted(c for c in set(os_) & set(ns) if os_[c] != ns[c])
        if changed:
            reasons.append(f"the slide files of {len(changed)} case(s) changed on disk (rescanned, replaced, "
                           f"added or removed: {', '.join(changed[:limit])})")
    for key in ("split", "inputs", "model", "train", "weights", "init", "protocol", "numerics_version",
                "variant", "tuned", "mpp_override"):
        if old.get(key) != new.get(key):
            reasons.append(_diff(key, old.get(key), new.get(key), limit))
    known = {"labels", "slides", "split", "inputs", "model", "train", "weights", "init", "protocol",
             "numerics_version", "variant", "tuned", "mpp_override"}
    for key in sorted((set(old) | set(new)) - known):
        if old.get(key) != new.get(key):
            reasons.append(f"{key} changed")
    return reasons or ["its identity changed"]


def _some(cases: list[str], limit: int, old: dict, new: dict) -> str:
    shown = ", ".join(f"{c}: {old[c]} -> {new[c]}" for c in cases[:limit])
    return shown + (f", +{len(cases) - limit} more" if len(cases) > limit else "")


def _diff(key: str, old: Any, new: Any, limit: int) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        ch = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        return f"{key}: " + "; ".join(ch[:limit]) + (f"; +{len(ch) - limit} more" if len(ch) > limit else "")
    if old is None:
        return f"{key} is new in this code"
    return f"{key} changed ({_short(old)} -> {_short(new)})"


def _short(v: Any) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) <= 60 else s[:57] + "..."
