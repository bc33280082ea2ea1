"""A unit's identity: everything that changes its numbers, hashed into its ``config_hash``.

It covers the labels of the unit's cases for its task, each slide's identity
(:func:`feature_cache.slide.slide_fingerprint`, so a rescan under the same file name is seen), mpp overrides, the split set
(seed, n_folds), the resolved input, model and training options, the fingerprint of every
pretrained part (encoder, second stage, ``--init``), the protocol and the version of the numerical
code path. When a finished unit's identity differs from the one a rerun computes, the unit is redone
and :func:`bench.results.identity.explain` says why ("labels of 2 cases changed: ...").
"""

from __future__ import annotations

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
