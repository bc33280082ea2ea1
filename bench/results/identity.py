"""A unit's identity as a document: the one digest, why two identities differ, and the one row
signature.

A unit's identity (its ``config.json``, built by ``bench.engine.plan``) holds everything that changes
its numbers. :func:`digest` hashes it into the ``config_hash`` a finished record carries; a rerun
whose hash differs redoes the unit and :func:`explain` says why. :func:`row_signature` is the part
the folds of one table row must share.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Written into config.json beside the identity, and not part of it.
BOOKKEEPING = ("config_hash", "code_version", "environment", "started")


def digest(obj: Any) -> str:
    """The one hash of a JSON-able document (a unit's identity, a study key): 16 hex of the sha256
    of its canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def row_signature(config: dict[str, Any]) -> dict[str, Any]:
    """What the folds of one table row must share: a unit's identity (its ``config.json``) less
    the fold and repeat, the per-unit training seed, the values tuned per outer fold (they differ by design)
    and the bookkeeping written beside it (config hash, code version, environment, start time).
    The check before a run and the one when a summary is read both compare this."""
    sig = {k: v for k, v in config.items() if k not in BOOKKEEPING and k not in ("fold", "repeat")}
    tuned = (config.get("tuned") or {}).get("params", {})
    sig["train"] = {k: v for k, v in (config.get("train") or {}).items() if k != "seed" and k not in tuned}
    if "model" in config:
        sig["model"] = {k: v for k, v in config["model"].items() if f"model.{k}" not in tuned}
    if "tuned" in config:
        sig["tuned"] = bool(config["tuned"])
    return sig


def explain(old: dict[str, Any], new: dict[str, Any], limit: int = 3) -> list[str]:
    """Why the identity of a finished unit (``old``, its config.json) differs from ``new``: one
    phrase per changed part, naming the cases, slides or options. Bookkeeping (hash, code version,
    environment, start time) is never a reason."""
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
             "numerics_version", "variant", "tuned", "mpp_override", "repeat", *BOOKKEEPING}
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
