"""One strict checker for YAML configs: unknown keys are errors with "did you mean", values have
the type the code reads them as, and every message names the file, the line and the key.

Why strict: a config key that is misspelt or quoted wrongly (``allow_random_weights: "false"`` is
a non-empty string, so truthy) silently changes what a run computes. Dataset configs use it
(``bench.data.datasets.load_spec``); method configs can use the same three calls::

    src = load_yaml(path)                       # a mapping, or ConfigError naming file and line
    check_keys(src.data, ALLOWED, src.where())  # unknown key -> error with the closest allowed one
    lr = check_type(src.data.get("lr"), float, src.where("lr"))
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

__all__ = ["ConfigError", "Source", "load_yaml", "did_you_mean", "check_keys", "check_type",
           "check_choice"]


class ConfigError(ValueError):
    """A config file is not what the code can read; the message names file, line, key and fix."""


@dataclass
class Source:
    """A parsed YAML mapping and where each key of it sits (dotted key -> 1-based line)."""

    path: Path
    data: dict[str, Any]
    lines: dict[str, int] = field(default_factory=dict)

    def where(self, key: str | None = None) -> str:
        if key is None:
            return str(self.path)
        line = self.lines.get(key)
        return f"{self.path}{f', line {line}' if line else ''}: `{key}`"


def _key_lines(node: yaml.Node | None, prefix: str = "") -> dict[str, int]:
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = f"{prefix}{k.value}"
            out[key] = k.start_mark.line + 1
            out.update(_key_lines(v, key + "."))
    return out


def load_yaml(path: str | Path, what: str = "config") -> Source:
    """Read a YAML mapping with ``safe_load``. A syntax error (a tab in the indentation is the
    usual one), a file that is a list or a scalar, or undecodable bytes are a ConfigError naming
    the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc}). Fix: save the {what} as UTF-8.") from exc
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        hint = ""
        if "\t" in text and ("\\t" in str(exc) or "tab" in str(exc).lower()):
            hint = " YAML does not allow tabs for indentation: indent with spaces."
        elif mark is not None and "\t" in text.splitlines()[min(mark.line, len(text.splitlines()) - 1)]:
            hint = " That line holds a tab: YAML indents with spaces only."
        raise ConfigError(f"{path}{line}: not valid YAML ({problem}).{hint} Fix: correct that line "
                          f"of the {what}.") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__} ({data!r:.40})"
        raise ConfigError(f"{path}, line 1: the {what} is {kind}, not a mapping of keys. Fix: write "
                          f"`key: value` lines (e.g. `slides: slides`), not `- item` lines.")
    return Source(path, data, _key_lines(node))


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice (case-insensitive first), or ``''``."""
    choices = [str(c) for c in choices]
    low = {c.lower(): c for c in choices}
    if str(name).lower() in low:
        return f" (did you mean {low[str(name).lower()]!r}?)"
    close = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.6)
    if not close:
        close = [low[c] for c in difflib.get_close_matches(str(name).lower().replace("_", "-"),
                                                             list(low), n=1, cutoff=0.6)]
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(mapping: Any, allowed: Iterable[str], where: str) -> dict[str, Any]:
    """``mapping`` is a dict whose keys are all in ``allowed``; returns it."""
    allowed = list(allowed)
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where} must be a mapping (`key: value` lines), got {_kind(mapping)}")
    for key in mapping:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r}{did_you_mean(key, allowed)}; allowed: "
                              f"{', '.join(allowed)}")
    return mapping


def _kind(v: Any) -> str:
    if isinstance(v, str):
        return f"the string {v!r}"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "a mapping"
    return f"{type(v).__name__} {v!r}"


def check_type(value: Any, kind: type | tuple[type, ...], where: str, *, none_ok: bool = False) -> Any:
    """``value`` as ``kind`` (bool, int, float, str, list, dict); ints are accepted as floats,
    nothing else is converted: a quoted ``"false"`` is not a bool and ``"1e-4"`` is not a float."""
    if value is None:
        if none_ok:
            return None
        raise ConfigError(f"{where} is empty; give a value")
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if bool in kinds and isinstance(value, bool):
        return value
    if isinstance(value, bool):  # True is an int to Python, never to a config
        raise ConfigError(f"{where} must be {_names(kinds)}, got the boolean {value}")
    if int in kinds and isinstance(value, int):
        return value
    if float in kinds and isinstance(value, (int, float)):
        return float(value)
    for k in kinds:
        if k not in (bool, int, float) and isinstance(value, k):
            return value
    hint = ""
    if bool in kinds and isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no"):
        word = "true" if value.strip().lower() in ("true", "yes") else "false"
        hint = f" (write {word} without quotes)"
    elif float in kinds and isinstance(value, str):
        hint = " (a number without quotes; YAML reads 1e-4 as a string, write 1.0e-4)"
    raise ConfigError(f"{where} must be {_names(kinds)}, got {_kind(value)}{hint}")


def _names(kinds: tuple[type, ...]) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a mapping"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def check_choice(value: Any, choices: Iterable[str], where: str) -> str:
    """``value`` is exactly one of ``choices`` (case matters: ``TCGA`` is not ``tcga``)."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"{where} must be one of {', '.join(map(repr, choices))}, got "
                          f"{_kind(value)}{did_you_mean(str(value), choices)}")
    return value
