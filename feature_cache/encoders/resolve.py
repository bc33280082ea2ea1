"""Resolving, reading and matching an encoder's weights, and naming the numbers it produces.

Weights resolve in one documented order (no silent random weights):

1. ``weights=`` passed explicitly (a ``.safetensors``/``.pth``/``.bin`` file);
2. the environment variable named by the spec (``BENCH_WEIGHTS_RESNET50``, ``BENCH_WEIGHTS_CONCH``,
   ``BENCH_WEIGHTS_GIGAPATH``, ``BENCH_WEIGHTS_HIPT_VIT256``);
3. the local Hugging Face hub cache (``MahmoodLab/conch``, ``prov-gigapath/prov-gigapath``,
   ``timm/resnet50.tv_in1k``) or the torch hub cache -- read offline;
4. a download from the hub, only when ``HF_HUB_OFFLINE`` is not set (CONCH and GigaPath are gated:
   the account behind ``HF_TOKEN`` must have accepted their terms);
5. if ``allow_random``: a *seeded* random initialisation (identical in every process, so several
   workers can share one cache), a logged warning and ``encoder.random_weights = True``;
6. otherwise :class:`EncoderWeightsError` naming the fixes.

A file is read by ``feature_cache.weights.read_checkpoint`` and matched strictly with the spec's
release key maps (``feature_cache.weights.match_state_dict``): every key used or deliberately
dropped, every shape equal. ``encoder.weights_provenance`` records what was loaded.

``encoder.fingerprint`` identifies the numbers an encoder produces. Small networks hash their
parameter *values* (exact, ~0.1 s for ResNet-50). Large ones (GigaPath: 1.1B parameters, 4.5 GB)
hash the weight *file's* SHA-256 instead -- taken from the hub blob's name when the file lives in
the HF cache, otherwise computed once and remembered by (path, size, mtime) -- so building an
encoder never re-reads gigabytes just to name a directory.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from feature_cache.encoders.base import (RANDOM_INIT_SEED, Encoder, EncoderSpec, EncoderWeightsError,
                                         fingerprint_store, encoder_spec, cuda_precision)
from feature_cache.weights import (WeightsError, WeightsProvenance, file_sha256, find_weights, kind_of,
                                   match_state_dict, read_checkpoint)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def match_weights(spec: EncoderSpec, model: "torch.nn.Module", path: Path) -> tuple[dict[str, Any], Any]:
    """The checkpoint's tensors under the model's own names, matched strictly with the spec's
    release key maps (checked before anything is loaded): the mapped state and the match."""
    try:
        obj = read_checkpoint(path)
        matched = match_state_dict(model.state_dict(), obj, spec.keymaps, what=f"encoder {spec.name!r}",
                                   where=str(path), fix=f"use the weights of {spec.description or spec.name}.")
    except WeightsError as err:
        raise EncoderWeightsError(str(err)) from err
    return matched.state, matched


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


@functools.lru_cache(maxsize=None)
def hub_unreachable() -> str:
    """Why the hub cannot be reached ("" if it can): one quick TCP probe per process, because
    huggingface_hub retries for 23–47 s on a machine without network before giving up."""
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as err:
        return f"{host} unreachable ({err}); set HF_HUB_OFFLINE=1 to skip this check"
    return ""


def download_weights(spec: EncoderSpec) -> tuple[Path | None, str]:
    """(path, "") after a hub download, or (None, why not). Never raises: a failed download falls
    through to random weights (when allowed) or to the error listing every fix."""
    if spec.download is None:
        return None, "no download source"
    if hub_offline():
        return None, "HF_HUB_OFFLINE is set"
    unreachable = hub_unreachable()
    if unreachable:
        return None, unreachable
    repo_id, filename = spec.download
    try:
        from huggingface_hub import hf_hub_download

        log.info("encoder %s: downloading %s/%s", spec.name, repo_id, filename)
        return Path(hf_hub_download(repo_id=repo_id, filename=filename)), ""
    except Exception as err:  # gated (401/403), no network, ... -- reported, not raised
        return None, f"download of {repo_id} failed ({type(err).__name__}: {err})"


def resolve_weights(spec: EncoderSpec, weights: str | os.PathLike | None
                     ) -> tuple[Path | None, str, str]:
    """(weights file or None, how it was found, why downloading did not help): explicit path, env
    var and local caches by the one finder every pretrained component uses
    (``feature_cache.weights.find_weights``), then a hub download."""
    try:
        source, _kind, how = find_weights(weights, spec.weights_source())
    except WeightsError as err:
        raise EncoderWeightsError(str(err)) from err
    if source is not None:
        return source, how, ""
    path, why = download_weights(spec)
    if path is not None:
        return path, "hub download", ""
    return None, "", why


def build_loaded(spec: EncoderSpec, path: Path, kind: str = "explicit") -> "torch.nn.Module":
    """Architecture + weights without a random init: built on the meta device and filled with the
    checkpoint's tensors (``assign=True``). For GigaPath this skips ~25 s of initialising 1.1B
    parameters that would be overwritten anyway. The model carries ``weights_provenance``."""
    import torch

    with torch.device("meta"):
        model = spec.build()
    found, matched = match_weights(spec, model, path)
    model.load_state_dict(found, strict=True, assign=True)
    leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
                 if t.is_meta]
    if leftovers:  # non-persistent buffers are not in any checkpoint: build for real instead
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = spec.build()
        model.load_state_dict(found, strict=True)
    model.weights_provenance = [WeightsProvenance(
        part=f"encoder {spec.name}", source=kind, path=str(path), sha256=file_sha256(path),
        mapping=matched.keymap.name, dropped=tuple(matched.dropped), n_keys=len(found))]
    return model


def _callable_id(fn: Any) -> str:
    """A process-independent name for a builder (``repr`` would include a memory address)."""
    if isinstance(fn, functools.partial):
        kw = ",".join(f"{k}={v!r}" for k, v in sorted(fn.keywords.items()))
        return f"partial({_callable_id(fn.func)},{fn.args!r},{kw})"
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


@functools.lru_cache(maxsize=1)
def environment_id() -> str:
    """This package's source and the versions of the libraries that build and initialise the
    networks: any change means a remembered fingerprint is recomputed, never trusted."""
    from importlib import metadata

    versions = []
    for dist in ("torch", "timm", "open_clip_torch"):
        try:
            versions.append(f"{dist}={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{dist}=none")
    h = hashlib.sha256()  # the encoders package and the weights matcher: what builds and loads
    for src in sorted(Path(__file__).parent.glob("*.py")) + [Path(__file__).parents[1] / "weights.py"]:
        h.update(src.read_bytes())
    code = h.hexdigest()[:16]
    return f"{code}|{'|'.join(versions)}"


def fingerprint_ident(spec: EncoderSpec, mode: str, source: Path | None, device: str) -> str:
    """What determines an encoder's fingerprint without building it: the spec, how the weights
    were chosen (file identity by real path, size and mtime; or the seeded random init), the
    device type (precision) and :func:`environment_id`."""
    parts = [spec.name, mode, str(device).split(":")[0], environment_id(),
             _callable_id(spec.standin_build if mode == "standin" else spec.build),
             f"{spec.dim}|{spec.input_size}|{spec.resize_size}|{spec.interpolation}|{spec.mean}|"
             f"{spec.std}|{spec.precision_cuda}|{spec.fingerprint_by}|{spec.keymaps!r}|"
             f"{cuda_precision(spec) if str(device).startswith('cuda') else 'fp32'}|"
             f"{spec.standin_arch}"]
    if source is not None:
        real = Path(os.path.realpath(source))
        st = real.stat()
        parts.append(f"{real}|{st.st_size}|{st.st_mtime_ns}")
    else:
        parts.append(f"seed{RANDOM_INIT_SEED}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _build_and_remember(spec: EncoderSpec, path: Path, kind: str, ident: str) -> "torch.nn.Module":
    """:func:`build_loaded`, remembering the load's provenance beside the fingerprint, so an
    encoder named later without building knows which keys the file gave and dropped."""
    model = build_loaded(spec, path, kind)
    _remember_fingerprint(f"{ident}|provenance", model.weights_provenance[0].to_dict())
    return model


def _remembered_provenance(ident: str) -> WeightsProvenance | None:
    try:
        value = json.loads(fingerprint_store().read_text(encoding="utf-8")).get(f"{ident}|provenance")
        return WeightsProvenance.from_dict(value)
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        return None


def _remembered_fingerprint(ident: str) -> str | None:
    try:
        value = json.loads(fingerprint_store().read_text(encoding="utf-8")).get(ident)
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if isinstance(value, str) else None


def _remember_fingerprint(ident: str, fingerprint: Any) -> None:
    """Add one entry to the store, read-modify-replace under a lock (several workers may start
    at once). A read-only home only costs a rebuild next time."""
    from filelock import FileLock

    store = fingerprint_store()
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(store) + ".lock", timeout=30):
            try:
                known = json.loads(store.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                known = {}
            known[ident] = fingerprint
            tmp = store.with_name(f"{store.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(known, indent=0), encoding="utf-8")
            os.replace(tmp, store)
    except Exception as err:  # noqa: BLE001 -- remembering is an optimisation only
        log.debug("cannot remember the fingerprint in %s: %s", store, err)


def _seeded(build: Callable[[], "torch.nn.Module"]) -> Callable[[], "torch.nn.Module"]:
    def make() -> "torch.nn.Module":
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)  # random init is reproducible across processes
            return build()

    return make


def get_encoder(name: str, weights: str | os.PathLike | None = None, allow_random: bool = False,
                device: str = "cpu", standin: bool = False) -> Encoder:
    """Build encoder ``name`` with weights resolved in the order of the module docstring.

    ``standin=True`` (only together with ``allow_random``, and only when no weights were found):
    for a spec that has one, a small network of the same family replaces the random-weight
    full-size network -- same patch size, input transform and output dim, a distinct fingerprint,
    and ``encoder.standin`` naming the architecture. Random weights carry no pretrained meaning,
    so on a CPU the stand-in keeps the pipeline runnable (GigaPath's 1.1B parameters take ~40 s
    per patch here); results say ``random (stand-in <arch>)``.

    The network itself is built on first use: the fingerprint is remembered per (spec, weights
    file identity or random init, library versions, this module's source) in
    ``$BENCH_STATE_DIR/encoder-fingerprints.json``, so naming an already-filled cache directory
    does not build the network.
    """
    spec = encoder_spec(name)
    source, how, why_no_download = resolve_weights(spec, weights)
    if source is not None:
        mode = "weights"
        ident = fingerprint_ident(spec, mode, source, device)
        build: Callable[[], torch.nn.Module] = functools.partial(_build_and_remember, spec, source,
                                                                 kind_of(how), ident)
        log.info("encoder %s: pretrained weights from %s (%s)", name, source, how)
        # until the file is matched (first build), the record knows where, not which keys
        prov = _remembered_provenance(ident) or WeightsProvenance(
            part=f"encoder {name}", source=kind_of(how), path=str(source), sha256=file_sha256(source))
        kwargs: dict[str, Any] = dict(random_weights=False, weights_source=f"{how}: {source}",
                                      weights_file=source, provenance=prov)
    elif allow_random:
        use_standin = standin and spec.standin_build is not None
        mode = "standin" if use_standin else "random"
        if standin and not use_standin:
            log.info("encoder %s has no stand-in architecture; using the full network", name)
        what = (f"a small STAND-IN architecture ({spec.standin_arch}) instead of "
                f"{spec.description or name}" if use_standin else "the full architecture")
        log.warning("encoder %s: no weights found (%s, local hub cache; %s); using RANDOM weights "
                    "(seed %d) with %s -- results will say so", name, spec.weights_env,
                    why_no_download, RANDOM_INIT_SEED, what)
        build = _seeded(spec.standin_build if use_standin else spec.build)  # type: ignore[arg-type]
        kwargs = dict(random_weights=True, weights_source="random",
                      standin=spec.standin_arch if use_standin else "",
                      provenance=WeightsProvenance(part=f"encoder {name}", source="random",
                                                   mapping=f"stand-in {spec.standin_arch}" if use_standin else None))
    else:
        repos = " ".join(dict.fromkeys(r for r, _ in spec.hub_files)) or "its hub repository"
        gated = (" (gated: accept its terms on the hub and set HF_TOKEN first)"
                 if spec.extra.get("gated") else "")
        raise EncoderWeightsError(
            f"no weights for encoder {name!r} ({why_no_download}). Fix one of: pass "
            f"weights=/path/to/weights (.safetensors/.pth/.bin); set {spec.weights_env}=/path/to/"
            f"weights; download them while online (`huggingface-cli download {repos}`{gated}) so "
            f"the local hub cache has them; or allow random weights (the demo dataset does; "
            f"results are then marked 'random weights')."
        )
    ident = fingerprint_ident(spec, mode, source, device)
    enc = Encoder(spec, build, device=device, fingerprint=_remembered_fingerprint(ident),
                  on_fingerprint=functools.partial(_remember_fingerprint, ident), **kwargs)
    log.info("encoder %s: %s, fingerprint %s", name, enc.weights_label, enc.fingerprint)
    return enc

