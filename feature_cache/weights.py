"""Published weights: one checkpoint reader, one strict key matcher, one provenance record.

Every pretrained part of the benchmark (patch encoders here, the second stages and end-to-end
backbones in ``baselines``) loads through the same three steps:

1. :func:`find_weights` -- where the file is, in one documented order: an explicit path, the
   component's environment variable, the local Hugging Face hub cache (read offline; never a
   download here), torch hub's checkpoint directory;
2. :func:`read_checkpoint` -- ``torch.load(weights_only=True)`` (memory-mapped when it can be) or
   safetensors; DINO training files also hold their ``argparse.Namespace`` of options, which is
   the one non-tensor class allowed;
3. :func:`match_state_dict` with the release's :class:`KeyMap` -- the *data* that says how the
   release's layout maps onto our module: which top-level container holds the weights
   (``{"teacher": ...}``, ``{"model": ...}`` or the bare dict), regex renames, the keys dropped on
   purpose (DINO projection heads, ImageNet classifiers, CONCH's text tower), our keys a release
   does not have (a task head), and named tensor transforms. The check is strict: every release
   key is used or deliberately dropped, every key of ours is filled, every shape equal; otherwise
   :class:`WeightsError` names the first missing, unexpected and reshaped keys with their shapes.

Each load yields a :class:`WeightsProvenance` (component, how the file was found, path, SHA-256,
mapping, dropped keys, number of tensors), which models carry as ``weights_provenance`` (a list).

Knows no models: the key maps live beside the modules they map onto. Importing this module does
not import torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    import torch

__all__ = ["WeightsError", "KeyMap", "WeightsSource", "WeightsProvenance", "Matched", "find_weights",
           "hub_cache_file", "read_checkpoint", "match_state_dict", "load_release", "file_sha256",
           "random_provenance"]

log = logging.getLogger(__name__)

class WeightsError(RuntimeError, ValueError):
    """Weights that were asked for cannot be used; the message names the file, the keys and the fix.
    A ``ValueError`` too, so the command line reports it as a user error (one line, no traceback)."""


# ------------------------------------------------------------------------ the data


@dataclass(frozen=True)
class KeyMap:
    """How one release's checkpoint maps onto our module, as data.

    ``container``: where the state dict sits, tried in order -- a top-level key (``"teacher"``,
    ``"model"``, ``"state_dict"``) or ``""`` for a bare state dict. ``renames``: ``(regex,
    replacement)`` applied in order to every release key (``re.sub``), giving our name.
    ``drop``: regexes on *release* keys that are deliberately not used. ``init_only``: regexes on
    *our* keys the release does not have (left at their initialisation, e.g. a task head).
    ``defaults``: ``(regex on our key, value)`` for scalar buffers a release may omit (BatchNorm's
    ``num_batches_tracked``). ``transforms``: ``(regex on our key, name in TRANSFORMS)`` for
    tensors stored in another layout (LongViT's (1, N, C) position table vs our (1, C, h, w)).
    """

    name: str
    container: tuple[str, ...] = ("",)
    renames: tuple[tuple[str, str], ...] = ()
    drop: tuple[str, ...] = ()
    init_only: tuple[str, ...] = ()
    defaults: tuple[tuple[str, int], ...] = ()
    transforms: tuple[tuple[str, str], ...] = ()

    def our_name(self, key: str) -> str:
        for pattern, repl in self.renames:
            key = re.sub(pattern, repl, key)
        return key


@dataclass(frozen=True)
class WeightsSource:
    """Where a pretrained component's published file comes from and where this project looks.

    ``hub``: ``(repo_id, filename)`` entries of the Hugging Face cache; ``torch_hub``: file names
    in torch hub's ``checkpoints`` directory; ``sha256``: published digests by file name (only
    those the publisher states, e.g. a git-LFS pointer; never computed here and written as fact).
    """

    component: str
    env: str
    files: tuple[str, ...]
    official: str
    keymaps: tuple[KeyMap, ...]
    hub: tuple[tuple[str, str], ...] = ()
    torch_hub: tuple[str, ...] = ()
    sha256: Mapping[str, str] = field(default_factory=dict)
    gated: bool = False
    note: str = ""


@dataclass(frozen=True)
class WeightsProvenance:
    """Where the weights of one pretrained part came from: what a module carries in
    ``weights_provenance`` after a load, and what a unit record lists for every pretrained part of
    its model (table footnotes and random-weights marks read it).

    ``source``: how the file was found (``explicit``, ``env``, ``hub``), or ``pretrained``, ``init``
    (``--init``), ``init-partial`` (``--init --init-partial``: part of the backbone loaded), ``random``, ``scratch`` (``--from-scratch``), ``standin`` (a random stand-in
    architecture), ``release`` (features read from a public release: no weights ran). ``path``/``sha256``/``mapping`` are None for random weights; ``n_keys`` counts the
    tensors taken from the file and ``dropped`` the release keys deliberately left out (both None
    when the file has not been matched, e.g. an encoder named from a remembered fingerprint)."""

    part: str  # "encoder resnet50", "vit4k", "model", "--init", a release's component name
    source: str
    label: str = ""  # for humans and table footnotes: "pretrained (hub; fingerprint ...)"
    path: str | None = None
    sha256: str | None = None
    mapping: str | None = None  # the release layout's key map used to load it
    dropped: tuple[str, ...] | None = None
    n_keys: int | None = None

    @property
    def random(self) -> bool:
        return self.source in ("random", "scratch", "standin")

    def to_dict(self) -> dict[str, Any]:
        """JSON form. ``dropped`` and ``n_keys`` appear only when known, so a unit identity that
        lists provenances without them keeps its hash."""
        d = asdict(self)
        for key in ("dropped", "n_keys"):
            if d[key] is None:
                del d[key]
        if self.dropped is not None:
            d["dropped"] = list(self.dropped)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "WeightsProvenance":
        """Inverse of :meth:`to_dict`; also reads the ``component`` spelling of ``part`` that
        remembered encoder loads were written with."""
        kw = dict(d)
        if "component" in kw and "part" not in kw:
            kw["part"] = kw.pop("component")
        if kw.get("dropped") is not None:
            kw["dropped"] = tuple(kw["dropped"])
        return cls(**kw)


def random_provenance(part: str) -> WeightsProvenance:
    return WeightsProvenance(part=part, source="random")


# ------------------------------------------------------------------------ transforms


def _tokens_to_grid(t: "torch.Tensor", shape: tuple[int, ...]) -> "torch.Tensor":
    """(1, h·w, C) row-major tokens -> (1, C, h, w)."""
    if t.dim() != 3 or len(shape) != 4 or t.shape[1] != shape[2] * shape[3] or t.shape[2] != shape[1]:
        return t  # the shape check names the mismatch
    return t.reshape(1, shape[2], shape[3], shape[1]).permute(0, 3, 1, 2).contiguous()


TRANSFORMS: dict[str, Callable[["torch.Tensor", tuple[int, ...]], "torch.Tensor"]] = {
    "tokens_to_grid": _tokens_to_grid,
}


# ------------------------------------------------------------------------ finding files


def _hub_cache_root() -> str | None:
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    return constants.HF_HUB_CACHE


def hub_cache_file(repo_id: str, filename: str) -> Path | None:
    """The file in the local Hugging Face cache (``models--org--name/snapshots/<rev>/<file>``), or
    None. Reads the cache only; never downloads."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    hit = try_to_load_from_cache(repo_id=repo_id, filename=filename)
    return Path(hit) if isinstance(hit, str) and os.path.isfile(hit) else None


def hub_cache_path(repo_id: str, filename: str) -> str:
    """Where a download of ``repo_id/filename`` would live (for messages: where to put it)."""
    root = _hub_cache_root() or "~/.cache/huggingface/hub"
    return f"{root}/models--{repo_id.replace('/', '--')}/snapshots/<revision>/{filename}"


def torch_hub_dir() -> Path:
    """torch hub's checkpoint directory, computed as torch does, without importing torch."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch")
    return Path(home) / "hub" / "checkpoints"


def find_weights(explicit: str | os.PathLike | None, source: WeightsSource
                 ) -> tuple[Path | None, str, str]:
    """``(path, kind, how)``: ``kind`` one of ``explicit``/``env``/``hub`` (``None, "", ""`` when
    nothing is found); ``how`` is the human-readable origin (``$BENCH_WEIGHTS_X``, ``local hub cache
    org/name``). A path that is given but is no file is an error, never a silent fallback."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise WeightsError(f"weights file {path} for {source.component} does not exist")
        return path, "explicit", "explicit path"
    value = os.environ.get(source.env)
    if value:
        path = Path(value)
        if not path.is_file():
            raise WeightsError(f"${source.env}={path} for {source.component} is not a file. Fix: point "
                               f"it at {' or '.join(source.files)}, or unset it.")
        return path, "env", f"${source.env}"
    for repo_id, filename in source.hub:
        hit = hub_cache_file(repo_id, filename)
        if hit is not None:
            return hit, "hub", f"local hub cache {repo_id}"
    for name in source.torch_hub:
        hit = torch_hub_dir() / name
        if hit.is_file():
            return hit, "hub", "torch hub cache"
    return None, "", ""


def kind_for_path(path: str | os.PathLike, source: WeightsSource) -> str:
    """How ``path`` was most likely found for ``source``: ``env`` when it is the environment
    variable's file, ``hub`` when it lives in the hub or torch hub cache, else ``explicit``."""
    real = os.path.realpath(path)
    value = os.environ.get(source.env)
    if value and os.path.realpath(value) == real:
        return "env"
    cached = [hub_cache_file(r, f) for r, f in source.hub] + [torch_hub_dir() / f for f in source.torch_hub]
    if any(c is not None and os.path.realpath(c) == real for c in cached):
        return "hub"
    return "explicit"


def kind_of(how: str) -> str:
    """The provenance kind of a resolution label (``explicit path``, ``$ENV``, ``local hub cache``…)."""
    if how.startswith("$"):
        return "env"
    if how.startswith("explicit"):
        return "explicit"
    return "hub" if how else "random"


# ------------------------------------------------------------------------ fingerprints


def sha_store() -> Path:
    root = os.environ.get("BENCH_STATE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "wsi-bench")
    return Path(root) / "weights-sha256.json"


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a weights file's content, without re-reading gigabytes on every call.

    A file in the Hugging Face cache is a symlink to ``blobs/<sha256>`` (LFS files are named by
    their content hash), so the name is the answer. Any other file is hashed once and the digest
    remembered under its real path, size and mtime; a replaced file changes size or mtime and is
    hashed again.
    """
    real = Path(os.path.realpath(path))
    if real.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", real.name):
        return real.name
    st = real.stat()
    ident = f"{real}|{st.st_size}|{st.st_mtime_ns}"
    store = sha_store()
    try:
        known = json.loads(store.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if ident in known:
        return str(known[ident])
    h = hashlib.sha256()
    with open(real, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    digest = h.hexdigest()
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        known[ident] = digest
        tmp = store.with_name(f"{store.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=0), encoding="utf-8")
        os.replace(tmp, store)
    except OSError as err:  # a read-only home only costs a re-hash next time
        log.debug("cannot remember the hash of %s: %s", real, err)
    return digest


# ------------------------------------------------------------------------ reading


def read_checkpoint(path: str | os.PathLike) -> Any:
    """The object a checkpoint holds (container and all), read without running code from it:
    safetensors, or ``torch.load(weights_only=True)`` -- memory-mapped where the format allows,
    so a 4.5 GB file is not copied twice -- with ``argparse.Namespace`` (DINO's saved options)
    as the only class allowed besides tensors and plain containers."""
    import argparse
    import pickle

    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # noqa: BLE001 -- any unreadable file gets one actionable message
            raise WeightsError(f"cannot read {path}: {type(err).__name__}: {err}") from err
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            try:
                return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "mmap" not in str(err) and "zip" not in str(err):
                    raise
                # legacy (non-zip) checkpoints cannot be memory-mapped
                return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only=True refuses anything but tensors and plain containers: a checkpoint that
        # needs full unpickling can run arbitrary code when loaded, so it is never loaded
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln),
                   lines[0] if lines else type(err).__name__)
        raise WeightsError(
            f"{path}: refused: this checkpoint holds more than tensors, and unpickling it could run "
            f"arbitrary code (torch.load(weights_only=True) rejected it: {why}). Fix: use weights "
            f"from a trusted source as .safetensors, or re-save a trusted copy as a plain state dict "
            f"(torch.save(model.state_dict(), path)).") from err
    except WeightsError:
        raise
    except Exception as err:  # noqa: BLE001
        raise WeightsError(f"cannot read {path}: {type(err).__name__}: {err}") from err


def _is_state_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap(obj: Any, keymap: KeyMap, where: str = "checkpoint") -> tuple[dict[str, "torch.Tensor"], str]:
    """(state dict, container key used) following ``keymap.container``."""
    for key in keymap.container:
        if key == "" and _is_state_dict(obj):
            return obj, ""
        if key and isinstance(obj, dict) and _is_state_dict(obj.get(key)):
            return obj[key], key
    top = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
    want = " or ".join(f"{{'{k}': state_dict}}" if k else "a bare state dict" for k in keymap.container)
    raise WeightsError(f"{where}: expected {want} (layout {keymap.name!r}), found top-level "
                       f"{top if isinstance(top, str) else top[:8]}")


# ------------------------------------------------------------------------ matching


@dataclass
class Matched:
    """The outcome of a successful match: tensors under our names, and what was left out."""

    state: dict[str, Any]
    keymap: KeyMap
    container: str
    dropped: list[str]
    init_only: list[str]
    defaulted: list[str]


def _fmt(shape: Any) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def _first(items: list[str], n: int = 5) -> str:
    return "; ".join(items[:n]) + (f"; … (+{len(items) - n} more)" if len(items) > n else "")


def _problems(own: Mapping[str, Any], sd: Mapping[str, Any], keymap: KeyMap
              ) -> tuple[dict[str, Any], list[str], list[str], list[str], list[str], list[str], list[str]]:
    import torch

    mapped: dict[str, tuple[str, Any]] = {}
    dropped, unexpected = [], []
    for key, value in sd.items():
        if any(re.search(p, key) for p in keymap.drop):
            dropped.append(key)
            continue
        ours = keymap.our_name(key)
        if ours in own and ours not in mapped:
            mapped[ours] = (key, value)
        else:
            unexpected.append(f"{key} {_fmt(value.shape)}" + (f" (as {ours})" if ours != key else ""))
    state, missing, reshaped, init_only, defaulted = {}, [], [], [], []
    for ours, ref in own.items():
        if ours in mapped:
            key, value = mapped[ours]
            for pattern, name in keymap.transforms:
                if re.search(pattern, ours):
                    value = TRANSFORMS[name](value, tuple(ref.shape))
            if tuple(value.shape) != tuple(ref.shape):
                reshaped.append(f"{ours} {_fmt(ref.shape)} <- {key} {_fmt(value.shape)}")
            else:
                state[ours] = value.to(ref.dtype) if value.is_floating_point() and ref.is_floating_point() else value
        elif any(re.search(p, ours) for p in keymap.init_only):
            init_only.append(ours)
        elif (default := next((v for p, v in keymap.defaults if re.search(p, ours)), None)) is not None:
            state[ours] = torch.full(tuple(ref.shape), default, dtype=ref.dtype)
            defaulted.append(ours)
        else:
            missing.append(f"{ours} {_fmt(ref.shape)}")
    return state, dropped, unexpected, missing, reshaped, init_only, defaulted


def match_state_dict(own: Mapping[str, Any], obj: Any, keymaps: tuple[KeyMap, ...] | KeyMap, *,
                     what: str, where: str = "checkpoint", fix: str = "") -> Matched:
    """Map a checkpoint object onto ``own`` (our state dict, or any name -> tensor with the right
    shapes and dtypes: meta tensors do) with the first of ``keymaps`` that fits exactly.

    Raises :class:`WeightsError` when none does, naming (for the closest layout) the first keys
    of ours that nothing fills, the release keys neither used nor dropped, and the reshaped ones.
    """
    keymaps = (keymaps,) if isinstance(keymaps, KeyMap) else tuple(keymaps)
    best: tuple[int, str] | None = None
    for keymap in keymaps:
        try:
            sd, container = unwrap(obj, keymap, where)
        except WeightsError as err:
            if best is None:
                best = (1 << 30, str(err))
            continue
        state, dropped, unexpected, missing, reshaped, init_only, defaulted = _problems(own, sd, keymap)
        if not (unexpected or missing or reshaped):
            bad = [k for k, t in state.items() if hasattr(t, "is_floating_point") and t.is_floating_point()
                   and not t.is_meta and not bool(t.isfinite().all())]
            if bad:  # every feature made with them would be NaN
                raise WeightsError(f"{where}: {len(bad)} tensor(s) of {what} hold NaN/inf ({_first(bad)}), so every "
                                   f"output would be NaN. Fix: {fix or 'download the weights again'}")
            return Matched(state, keymap, container, dropped, init_only, defaulted)
        n = len(unexpected) + len(missing) + len(reshaped)
        parts = [f"{where} does not fit {what} (layout {keymap.name!r}"
                 + (f", container {container!r}" if container else "") + "):"]
        if missing:
            parts.append(f"{len(missing)} missing keys (ours, not in the file): {_first(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (in the file, neither used nor "
                         f"deliberately dropped): {_first(unexpected)}")
        if reshaped:
            parts.append(f"{len(reshaped)} shape mismatches (ours <- file): {_first(reshaped)}")
        msg = " ".join(parts) + f" Fix: {fix or f'use the released weights of {what}.'}"
        if best is None or n < best[0]:
            best = (n, msg)
    assert best is not None, "no key map given"
    raise WeightsError(best[1])


def load_release(module: "torch.nn.Module", path: str | os.PathLike, source: WeightsSource, *,
                 kind: str = "explicit", obj: Any = None) -> tuple[WeightsProvenance, Matched]:
    """Load a released checkpoint into ``module`` through ``source.keymaps``, strictly, and record
    it: the provenance is appended to ``module.weights_provenance`` and returned with the match."""
    path = Path(path)
    if obj is None:
        obj = read_checkpoint(path)
    own = module.state_dict()
    matched = match_state_dict(own, obj, source.keymaps, what=source.component, where=str(path),
                               fix=f"use {' or '.join(source.files)} from {source.official}.")
    missing, unexpected = module.load_state_dict(matched.state, strict=False)
    assert not unexpected and set(missing) <= set(matched.init_only), (missing, unexpected)
    prov = WeightsProvenance(part=source.component, source=kind, path=str(path),
                             sha256=file_sha256(path), mapping=matched.keymap.name,
                             dropped=tuple(matched.dropped), n_keys=len(matched.state))
    record(module, prov)
    log.info("%s: %d tensors from %s (layout %s; %d dropped, %d left at init)", source.component,
             len(matched.state), path, matched.keymap.name, len(matched.dropped), len(matched.init_only))
    return prov, matched


def record(module: Any, prov: WeightsProvenance) -> None:
    """Append ``prov`` to ``module.weights_provenance`` (created as a list on first use)."""
    existing = getattr(module, "weights_provenance", None)
    if not isinstance(existing, list):
        existing = []
        object.__setattr__(module, "weights_provenance", existing)
    existing.append(prov)
