"""Whether a weights file can load, told without loading it and without torch: the check
``bench weights`` runs on every file it finds, so a truncated download, a pickle payload or a file
that is no checkpoint is named there rather than when a run starts.

* ``.safetensors``: the header is parsed by the ``safetensors`` package (numpy framework), which
  also checks that the tensors' byte ranges cover the file exactly (a truncated file fails).
* PyTorch files (``.pth``, ``.pt``, ``.bin``, ``.ckpt``): the zip archive ``torch.save`` writes
  (its central directory sits at the end, so a truncated file does not open), whose
  ``data.pkl`` must hold every storage it names; or a legacy pickle. The pickle's opcodes are read
  with :mod:`pickletools` -- nothing is executed -- and every class or function it would import
  must be one ``torch.load(weights_only=True)`` allows (torch's tensor rebuilders and storages,
  ``OrderedDict``, DINO's ``argparse.Namespace``); anything else (``posix.system``) is named.

Shapes are not checked here: that needs the model (``bench weights --check`` loads each file).
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from pathlib import Path

# what a plain state dict's pickle imports (module prefix, name or "*"), as weights_only allows
_ALLOWED = (("torch", "*"), ("collections", "OrderedDict"), ("argparse", "Namespace"),
            ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"), ("_codecs", "encode"))


def _allowed(module: str, name: str) -> bool:
    return any((module == m or module.startswith(m + ".")) and n in ("*", name) for m, n in _ALLOWED)


def _imports(data: bytes, pickles: int = 1) -> tuple[list[str], set[str]]:
    """(``module.name`` of every GLOBAL / STACK_GLOBAL, the storage keys of the persistent ids) of
    the first ``pickles`` pickles in ``data`` (torch's legacy format writes five one after the
    other -- magic number, protocol, system info, the object, its storage keys -- then raw bytes),
    read opcode by opcode. torch's zip format names each storage
    with a persistent id ``('storage', <class>, '<key>', '<location>', numel)``: a tuple built
    after a MARK and handed to BINPERSID; its key may be a memo reference (a shared storage)."""
    found: list[str] = []
    keys: set[str] = set()
    strings: list[str] = []
    memo: dict[int, object] = {}
    last: object = None  # the value the previous opcode pushed (for BINPUT / MEMOIZE)
    group: list[object] = []  # values pushed since the last MARK
    tuple_items: list[object] = []
    stream = io.BytesIO(data)
    ops = (op for _ in range(pickles) if stream.tell() < len(data) for op in pickletools.genops(stream))
    for op, arg, _ in ops:
        name, value = op.name, None
        if name in ("BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"):
            memo[len(memo) if name == "MEMOIZE" else int(arg)] = last
            continue
        if name == "GLOBAL":
            value = str(arg).replace(" ", ".")
            found.append(value)
        elif name == "STACK_GLOBAL" and len(strings) >= 2:
            value = f"{strings[-2]}.{strings[-1]}"
            found.append(value)
        elif isinstance(arg, str):
            value = arg
            strings.append(arg)
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            value = memo.get(int(arg))
        if name == "MARK":
            group = []
        elif name == "TUPLE":
            tuple_items = group
        elif name == "BINPERSID" and len(tuple_items) >= 3 and tuple_items[0] == "storage":
            keys.add(str(tuple_items[2]))
        else:
            group.append(value)
        last = value
    return found, keys


def _refused(names: list[str]) -> str | None:
    bad = sorted({n for n in names if not _allowed(*n.rsplit(".", 1))})
    if not bad:
        return None
    return (f"a pickle payload: it would import {', '.join(bad[:3])}, which torch.load(weights_only=True) "
            "refuses (loading it fully could run arbitrary code). Fix: use weights from a trusted source as "
            ".safetensors, or re-save a trusted copy as a plain state dict (torch.save(model.state_dict(), path))")


def scan_checkpoint(path: str | Path) -> str | None:
    """Why ``path`` cannot load as a weights file, or None when nothing is wrong that can be told
    without loading it."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if size == 0:
        return "the file is empty (an interrupted download?). Fix: download it again"
    if path.suffix == ".safetensors":
        return _scan_safetensors(path)
    if zipfile.is_zipfile(path):
        return _scan_zip(path)
    if head[:2] == b"PK":
        return ("a zip archive whose end is missing: the file is truncated (an interrupted download?). "
                "Fix: download it again")
    if head[:1] == b"\x80":  # a pickle protocol header: torch's legacy (non-zip) format
        try:
            names, _ = _imports(path.read_bytes(), pickles=5)
        except Exception as err:  # noqa: BLE001 -- any broken pickle is one message
            return f"a pickle that ends early or is damaged ({type(err).__name__}: {err}). Fix: download it again"
        return _refused(names)
    return "not a PyTorch checkpoint (neither the zip archive torch.save writes nor a pickle) or safetensors file"


def _scan_safetensors(path: Path) -> str | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            list(f.keys())
    except Exception as err:  # noqa: BLE001 -- SafetensorError and friends
        return f"not a readable safetensors file ({err}); it may be truncated. Fix: download it again"
    return None


def _scan_zip(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if pkl is None:
                return "a zip archive without data.pkl: not a file torch.save wrote"
            data = zf.read(pkl)
            prefix = pkl[: -len("data.pkl")]
            present = {n[len(prefix) + len("data/"):] for n in names if n.startswith(prefix + "data/")}
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return f"a damaged zip archive ({err}): the file is truncated or corrupt. Fix: download it again"
    try:
        found, keys = _imports(data)
    except Exception as err:  # noqa: BLE001
        return f"its data.pkl is damaged ({type(err).__name__}: {err}). Fix: download it again"
    if (why := _refused(found)) is not None:
        return why
    lost = sorted(keys - present)
    if lost:
        return (f"{len(lost)} tensor storage(s) named in data.pkl are missing from the archive (e.g. data/{lost[0]}): "
                "the file is incomplete. Fix: download it again")
    return None
