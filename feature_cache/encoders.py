"""Patch encoders: a registry of specs, each carrying its own transform, output dim, precision and
weights resolution, so the cache key and the numbers always come from the same place.

Weights resolve in one documented order (no silent random weights):

1. ``weights=`` passed explicitly (a ``.safetensors``/``.pth``/``.bin`` state dict);
2. the environment variable named by the spec (``BENCH_WEIGHTS_RESNET50``, ``BENCH_WEIGHTS_CONCH``,
   ``BENCH_WEIGHTS_GIGAPATH``);
3. the local Hugging Face hub cache (``MahmoodLab/conch``, ``prov-gigapath/prov-gigapath``,
   ``timm/resnet50.tv_in1k``) or the torch hub cache -- read offline;
4. a download from the hub, only when ``HF_HUB_OFFLINE`` is not set (CONCH and GigaPath are gated:
   the account behind ``HF_TOKEN`` must have accepted their terms);
5. if ``allow_random``: a *seeded* random initialisation (identical in every process, so several
   workers can share one cache), a logged warning and ``encoder.random_weights = True``;
6. otherwise :class:`EncoderWeightsError` naming the fixes.

``encoder.fingerprint`` identifies the numbers an encoder produces. Small networks hash their
parameter *values* (exact, ~0.1 s for ResNet-50). Large ones (GigaPath: 1.1B parameters, 4.5 GB)
hash the weight *file's* SHA-256 instead -- taken from the hub blob's name when the file lives in
the HF cache, otherwise computed once and remembered by (path, size, mtime) -- so building an
encoder never re-reads gigabytes just to name a directory.

Importing this module does not import torch; building an encoder does.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import logging
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from feature_cache.loader import Preprocess

if TYPE_CHECKING:
    import torch

__all__ = [
    "EncoderSpec",
    "Encoder",
    "EncoderWeightsError",
    "register_encoder",
    "list_encoders",
    "get_encoder",
    "build_module",
]

log = logging.getLogger(__name__)

ENCODER_CODE_VERSION = "1"  # bump when preprocessing or pooling changes the numbers
RANDOM_INIT_SEED = 0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CONCH's eval transform (open_clip)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class EncoderWeightsError(RuntimeError):
    """No usable weights for an encoder; the message says how to supply them."""


@dataclass(frozen=True)
class EncoderSpec:
    """What defines an encoder: how to build it, what it eats and emits, where weights live.

    Preprocessing follows the authors' eval transform: resize the patch to ``resize_size``
    (``interpolation``), centre-crop ``input_size``, normalise with ``mean``/``std``.
    """

    name: str
    dim: int
    patch_size: int  # px at `magnification`, as the encoder's authors extracted patches
    magnification: float
    input_size: int  # px fed to the network (after resize + centre crop)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    build: Callable[[], "torch.nn.Module"]  # architecture -> (B, dim), random init, no weights
    weights_env: str
    hub_files: tuple[tuple[str, str], ...] = ()  # (repo_id, filename) in the local HF cache
    torch_hub_files: tuple[str, ...] = ()  # file names in torch.hub's checkpoints dir
    download: tuple[str, str] | None = None  # (repo_id, filename) fetched when online
    resize_size: int | None = None  # None: resize straight to input_size
    interpolation: str = "bilinear"
    # autocast dtype on CUDA ("bf16", "fp16", "fp32"); CPU is fp32. bf16 keeps fp32's exponent
    # range (no fp16 overflow in deep ViTs); GPUs without bf16 (before Ampere) use the fallback
    precision_cuda: str = "bf16"
    precision_cuda_fallback: str = "fp32"
    fingerprint_by: str = "values"  # "values" (hash parameters) or "file" (hash the weight file)
    key_prefixes: tuple[str, ...] = ("", "module.", "model.", "backbone.", "trunk.")
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # a small network of the same family (same patch size, input transform and output dim) that a
    # dataset may opt into *instead of* a random-weight copy of the full network (see get_encoder)
    standin_build: Callable[[], "torch.nn.Module"] | None = None
    standin_arch: str = ""


_REGISTRY: dict[str, EncoderSpec] = {}


def register_encoder(spec: EncoderSpec) -> EncoderSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"encoder {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_encoders(pattern: str = "*") -> list[str]:
    """Registered encoder names matching a glob; cheap (imports no deep-learning library)."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def _spec(name: str) -> EncoderSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown encoder {name!r}; known: {', '.join(list_encoders())}.{hint}") from None


def build_module(name: str, device: str = "meta") -> "torch.nn.Module":
    """The bare architecture of encoder ``name``, built on ``device``. On ``"meta"`` no memory is
    allocated and nothing is initialised, so even GigaPath's 1.1B parameters build in well under a
    second -- what tests use to check parameter counts and output shapes."""
    import torch

    with torch.device(device):
        return _spec(name).build()


# ------------------------------------------------------------------------ the encoder


def _pooled(model: "torch.nn.Module") -> "torch.nn.Module":
    """timm features_only model -> global average pool -> (B, C). Defined inside a function so
    this module imports without torch."""
    import torch

    class PooledFeatures(torch.nn.Module):
        def __init__(self, body: torch.nn.Module):
            super().__init__()
            self.body = body

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            fmap = self.body(x)[-1]  # (B, C, h, w)
            return fmap.mean(dim=(2, 3))  # (B, C): adaptive average pool to 1x1

    return PooledFeatures(model)


_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def cuda_precision(spec: EncoderSpec) -> str:
    """The autocast precision ``spec`` runs at on this machine's GPU: its ``precision_cuda``,
    unless that is bf16 and the GPU has no bf16 (compute capability < 8.0), then the fallback."""
    import torch

    if spec.precision_cuda == "bf16" and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        return spec.precision_cuda_fallback
    return spec.precision_cuda


class Encoder:
    """A ready patch encoder: ``enc(batch)`` maps uint8 patches (B, H, W, 3) -- numpy or torch --
    or an already-transformed float tensor (B, 3, S, S) to float32 features (B, dim) on the CPU.

    ``transform`` maps one uint8 (H, W, 3) array or PIL image to the normalized (3, S, S) tensor,
    for DataLoader workers; ``__call__`` applies the same preprocessing batched. On CUDA the
    forward pass runs under autocast at the spec's precision (:func:`cuda_precision`: bf16 where
    the GPU has it); on CPU in fp32.

    The network is built on first use (``encoder.model``). When ``fingerprint`` is known in
    advance (remembered from an earlier build, see :func:`get_encoder`), naming the cache
    directory costs nothing; the first build then checks the remembered value.
    """

    def __init__(self, spec: EncoderSpec, model: "torch.nn.Module | Callable[[], torch.nn.Module]",
                 *, random_weights: bool, weights_source: str, device: str = "cpu",
                 weights_file: Path | None = None, standin: str = "",
                 fingerprint: str | None = None, on_fingerprint: Callable[[str], None] | None = None):
        import torch

        self.spec = spec
        self.name = spec.name
        self.dim = spec.dim
        self.patch_size = spec.patch_size
        self.magnification = spec.magnification
        self.input_size = spec.input_size
        self.random_weights = random_weights
        self.weights_source = weights_source
        self.standin = standin  # "" or the stand-in architecture's description
        self.device = torch.device(device)
        self.precision = cuda_precision(spec) if self.device.type == "cuda" else "fp32"
        self._weights_file = weights_file
        self._model: torch.nn.Module | None = None
        self._builder = model if not isinstance(model, torch.nn.Module) else None
        # the eval transform on its own: picklable, so DataLoader workers run it without the network
        self.preprocess = Preprocess(spec.input_size, spec.mean, spec.std, spec.resize_size,
                                     spec.interpolation)
        self._remembered = fingerprint
        self._on_fingerprint = on_fingerprint
        if isinstance(model, torch.nn.Module):
            self._install(model)
        if fingerprint is None:
            self.fingerprint = self._fingerprint(weights_file, self.model)
            if on_fingerprint is not None:
                on_fingerprint(self.fingerprint)
        else:
            self.fingerprint = fingerprint

    @property
    def weights_label(self) -> str:
        """What every result row says about the weights: ``pretrained (<source>)``, ``random`` or
        ``random (stand-in <arch>)``."""
        if self.standin:
            return f"random (stand-in {self.standin})"
        return "random" if self.random_weights else f"pretrained ({self.weights_source})"

    def _install(self, model: "torch.nn.Module") -> None:
        import torch

        model = model.eval().to(self.device)
        # channels-last: measured 2x faster for ResNet-50 on this 2-core CPU; a no-op for ViTs
        self._model = model.to(memory_format=torch.channels_last)

    @property
    def model(self) -> "torch.nn.Module":
        if self._model is None:
            assert self._builder is not None
            self._install(self._builder())
            if self._remembered is not None:
                actual = self._fingerprint(self._weights_file, self._model)
                if actual != self._remembered:  # the remembered value went stale: never mislabel
                    if self._on_fingerprint is not None:
                        self._on_fingerprint(actual)
                    raise RuntimeError(
                        f"encoder {self.name!r}: the remembered fingerprint {self._remembered} does "
                        f"not match the built network's {actual} (stale entry in "
                        f"{_fingerprint_store()}); it has been corrected. Fix: run the command again.")
        return self._model

    def _preproc_id(self) -> str:
        base = f"{self.name}|{ENCODER_CODE_VERSION}|{self.input_size}|{self.spec.mean}|{self.spec.std}"
        # only non-default choices are appended, so existing resnet50 caches keep their key
        if self.spec.resize_size not in (None, self.input_size):
            base += f"|resize{self.spec.resize_size}"
        if self.spec.interpolation != "bilinear":
            base += f"|{self.spec.interpolation}"
        if self.precision != "fp32":
            base += f"|{self.precision}"
        if self.standin:
            base += f"|standin:{self.standin}"
        return base

    def _fingerprint(self, weights_file: Path | None, model: "torch.nn.Module") -> str:
        import torch

        h = hashlib.sha256()
        h.update(self._preproc_id().encode())
        if self.spec.fingerprint_by == "values" or self.standin:
            for key, tensor in sorted(model.state_dict().items()):
                t = tensor.detach().cpu().contiguous()
                h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype, raw bytes
        elif weights_file is not None:
            h.update(f"|file-sha256:{file_sha256(weights_file)}".encode())
        else:  # seeded random init: seed + library versions + shapes determine the values
            import timm

            h.update(f"|random:{RANDOM_INIT_SEED}|torch {torch.__version__}|timm "
                     f"{timm.__version__}".encode())
            for key, tensor in sorted(model.state_dict().items()):
                h.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        return h.hexdigest()[:16]

    def _preprocess(self, batch: Any) -> "torch.Tensor":
        return self.preprocess(batch)

    def transform(self, image: Any) -> "torch.Tensor":
        """One patch (uint8 (H, W, 3) array or PIL image) -> normalized (3, S, S) tensor."""
        return self._preprocess(np.asarray(image, dtype=np.uint8)[None])[0]

    def __call__(self, batch: Any) -> "torch.Tensor":
        import torch

        x = self._preprocess(batch).to(self.device, non_blocking=True)  # pinned by the loader on CUDA
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.precision != "fp32":
                with torch.autocast(self.device.type, dtype=getattr(torch, _DTYPES[self.precision])):
                    out = self.model(x)  # (B, dim)
            else:
                out = self.model(x)  # (B, dim)
        return out.float().cpu()

    def __repr__(self) -> str:
        return (f"Encoder({self.name!r}, dim={self.dim}, fingerprint={self.fingerprint}, "
                f"{self.weights_label})")


# ------------------------------------------------------------------------ weights


def _sha_store() -> Path:
    root = os.environ.get("BENCH_STATE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "wsi-bench")
    return Path(root) / "weights-sha256.json"


def file_sha256(path: Path) -> str:
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
    store = _sha_store()
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


def _load_state_dict(path: Path) -> dict[str, Any]:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        import pickle

        try:
            try:  # mmap: a 4.5 GB checkpoint is not copied into memory twice
                sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) checkpoints cannot be memory-mapped
                sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            # weights_only=True refuses anything but tensors and plain containers: a checkpoint
            # that needs full unpickling can run arbitrary code when loaded, so it is never loaded
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
            why = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln),
                       lines[0] if lines else type(err).__name__)
            raise EncoderWeightsError(
                f"{path}: refused: this checkpoint holds more than tensors, and unpickling it could "
                f"run arbitrary code (torch.load(weights_only=True) rejected it: "
                f"{why}). Fix: use weights from a trusted "
                f"source as .safetensors, or re-save a trusted copy as a plain state dict "
                f"(torch.save(model.state_dict(), path)).") from err
    for key in ("state_dict", "model", "module", "teacher"):  # common wrappers (teacher: DINO)
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise EncoderWeightsError(f"{path}: not a state dict (got {type(sd).__name__})")
    return sd


def _match_weights(spec: EncoderSpec, model: "torch.nn.Module", path: Path) -> dict[str, Any]:
    """The checkpoint's tensors under the model's own names: every entry of the model's state
    dict must be present with the right shape (checked before anything is loaded); extra keys
    (ResNet's layer4/fc, CONCH's text tower and caption pooler) are ignored."""
    try:
        sd = _load_state_dict(path)
    except EncoderWeightsError:
        raise
    except Exception as err:
        raise EncoderWeightsError(f"cannot read weights for {spec.name!r} from {path}: {err}. "
                                  f"Fix: point to a readable .safetensors/.pth state dict.") from err
    own = model.state_dict()
    missing, mismatched, found = [], [], {}
    for key, value in own.items():
        bare = key.split("body.", 1)[-1]
        cand = next((sd[p + bare] for p in spec.key_prefixes if p + bare in sd), None)
        if cand is None and key.endswith("num_batches_tracked"):
            import torch  # BatchNorm's step counter: absent from older torchvision checkpoints,
            found[key] = torch.zeros((), dtype=torch.long)  # and unused in eval mode
        elif cand is None:
            missing.append(key)
        elif tuple(cand.shape) != tuple(value.shape):
            mismatched.append(f"{key} {tuple(cand.shape)} vs {tuple(value.shape)}")
        else:
            found[key] = cand.to(value.dtype) if cand.is_floating_point() else cand
    if missing or mismatched:
        raise EncoderWeightsError(
            f"{path} does not fit encoder {spec.name!r}: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(mismatched)} shape mismatches ({mismatched[:3]}). "
            f"Fix: use the weights of {spec.description or spec.name}.")
    return found


def _cached_weight_files(spec: EncoderSpec) -> list[Path]:
    found: list[Path] = []
    try:
        from huggingface_hub import try_to_load_from_cache

        for repo_id, filename in spec.hub_files:
            hit = try_to_load_from_cache(repo_id=repo_id, filename=filename)
            if isinstance(hit, str) and os.path.isfile(hit):
                found.append(Path(hit))
    except ImportError:
        pass
    if spec.torch_hub_files:
        import torch

        ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"
        found += [ckpt_dir / f for f in spec.torch_hub_files if (ckpt_dir / f).is_file()]
    return found


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


@functools.lru_cache(maxsize=None)
def _hub_unreachable() -> str:
    """Why the hub cannot be reached ("" if it can): one quick TCP probe per process, because
    huggingface_hub retries for 23–47 s on a machine without network before giving up."""
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as err:
        return f"{host} unreachable ({err}); set HF_HUB_OFFLINE=1 to skip this check"
    return ""


def _download(spec: EncoderSpec) -> tuple[Path | None, str]:
    """(path, "") after a hub download, or (None, why not). Never raises: a failed download falls
    through to random weights (when allowed) or to the error listing every fix."""
    if spec.download is None:
        return None, "no download source"
    if _offline():
        return None, "HF_HUB_OFFLINE is set"
    unreachable = _hub_unreachable()
    if unreachable:
        return None, unreachable
    repo_id, filename = spec.download
    try:
        from huggingface_hub import hf_hub_download

        log.info("encoder %s: downloading %s/%s", spec.name, repo_id, filename)
        return Path(hf_hub_download(repo_id=repo_id, filename=filename)), ""
    except Exception as err:  # gated (401/403), no network, ... -- reported, not raised
        return None, f"download of {repo_id} failed ({type(err).__name__}: {err})"


def _resolve_weights(spec: EncoderSpec, weights: str | os.PathLike | None
                     ) -> tuple[Path | None, str, str]:
    """(weights file or None, how it was found, why downloading did not help)."""
    if weights is not None:
        source = Path(weights)
        if not source.is_file():
            raise EncoderWeightsError(f"weights file {source} for encoder {spec.name!r} does not "
                                      f"exist")
        return source, "explicit path", ""
    env = os.environ.get(spec.weights_env)
    if env:
        source = Path(env)
        if not source.is_file():
            raise EncoderWeightsError(f"${spec.weights_env}={source} for encoder {spec.name!r} is "
                                      f"not a file. Fix: point it at the weights, or unset it.")
        return source, f"${spec.weights_env}", ""
    cached = _cached_weight_files(spec)
    if cached:
        return cached[0], "local hub cache", ""
    path, why = _download(spec)
    if path is not None:
        return path, "hub download", ""
    return None, "", why


def _build_loaded(spec: EncoderSpec, path: Path) -> "torch.nn.Module":
    """Architecture + weights without a random init: built on the meta device and filled with the
    checkpoint's tensors (``assign=True``). For GigaPath this skips ~25 s of initialising 1.1B
    parameters that would be overwritten anyway."""
    import torch

    with torch.device("meta"):
        model = spec.build()
    found = _match_weights(spec, model, path)
    model.load_state_dict(found, strict=True, assign=True)
    leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
                 if t.is_meta]
    if leftovers:  # non-persistent buffers are not in any checkpoint: build for real instead
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = spec.build()
        model.load_state_dict(found, strict=True)
    return model


def _fingerprint_store() -> Path:
    return _sha_store().with_name("encoder-fingerprints.json")


def _callable_id(fn: Any) -> str:
    """A process-independent name for a builder (``repr`` would include a memory address)."""
    if isinstance(fn, functools.partial):
        kw = ",".join(f"{k}={v!r}" for k, v in sorted(fn.keywords.items()))
        return f"partial({_callable_id(fn.func)},{fn.args!r},{kw})"
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


@functools.lru_cache(maxsize=1)
def _environment_id() -> str:
    """This module's source and the versions of the libraries that build and initialise the
    networks: any change means a remembered fingerprint is recomputed, never trusted."""
    from importlib import metadata

    versions = []
    for dist in ("torch", "timm", "open_clip_torch"):
        try:
            versions.append(f"{dist}={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{dist}=none")
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    return f"{code}|{'|'.join(versions)}"


def _fingerprint_ident(spec: EncoderSpec, mode: str, source: Path | None, device: str) -> str:
    """What determines an encoder's fingerprint without building it: the spec, how the weights
    were chosen (file identity by real path, size and mtime; or the seeded random init), the
    device type (precision) and :func:`_environment_id`."""
    parts = [spec.name, mode, str(device).split(":")[0], _environment_id(),
             _callable_id(spec.standin_build if mode == "standin" else spec.build),
             f"{spec.dim}|{spec.input_size}|{spec.resize_size}|{spec.interpolation}|{spec.mean}|"
             f"{spec.std}|{spec.precision_cuda}|{spec.fingerprint_by}|{spec.key_prefixes}|"
             f"{cuda_precision(spec) if str(device).startswith('cuda') else 'fp32'}|"
             f"{spec.standin_arch}"]
    if source is not None:
        real = Path(os.path.realpath(source))
        st = real.stat()
        parts.append(f"{real}|{st.st_size}|{st.st_mtime_ns}")
    else:
        parts.append(f"seed{RANDOM_INIT_SEED}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _remembered_fingerprint(ident: str) -> str | None:
    try:
        value = json.loads(_fingerprint_store().read_text(encoding="utf-8")).get(ident)
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if isinstance(value, str) else None


def _remember_fingerprint(ident: str, fingerprint: str) -> None:
    """Add one entry to the store, read-modify-replace under a lock (several workers may start
    at once). A read-only home only costs a rebuild next time."""
    from filelock import FileLock

    store = _fingerprint_store()
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
    spec = _spec(name)
    source, how, why_no_download = _resolve_weights(spec, weights)
    if source is not None:
        mode = "weights"
        build: Callable[[], torch.nn.Module] = functools.partial(_build_loaded, spec, source)
        log.info("encoder %s: pretrained weights from %s (%s)", name, source, how)
        kwargs: dict[str, Any] = dict(random_weights=False, weights_source=f"{how}: {source}",
                                      weights_file=source)
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
                      standin=spec.standin_arch if use_standin else "")
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
    ident = _fingerprint_ident(spec, mode, source, device)
    enc = Encoder(spec, build, device=device, fingerprint=_remembered_fingerprint(ident),
                  on_fingerprint=functools.partial(_remember_fingerprint, ident), **kwargs)
    log.info("encoder %s: %s, fingerprint %s", name, enc.weights_label, enc.fingerprint)
    return enc


# ------------------------------------------------------------------------ registry entries


def _build_resnet50_trunc() -> "torch.nn.Module":
    import timm

    # features_only + out_indices=(3,) keeps the network up to layer3: 1024 channels, stride 16
    return _pooled(timm.create_model("resnet50", pretrained=False, features_only=True,
                                     out_indices=(3,)))


def _build_conch_visual(**trunk_overrides: Any) -> "torch.nn.Module":
    """CONCH v1's image tower (mahmoodlab/CONCH ``conch_ViT-B-16.json``): a timm ViT-B/16 trunk at
    448 px (no classifier) -> attentional pooler (1 query, 512-d, 8 heads, keys/values 768-d) ->
    LayerNorm. This is ``encode_image(x, proj_contrast=False, normalize=False)``, the 512-d
    embedding TRIDENT and the CONCH authors use for slide tasks. Module names mirror the
    checkpoint's ``visual.*`` keys, so the released ``pytorch_model.bin`` loads as is."""
    import torch
    from open_clip.transformer import AttentionalPooler
    from timm.models.vision_transformer import VisionTransformer

    trunk_cfg = dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4, img_size=448,
                     patch_size=16, num_classes=0, dynamic_img_size=True)
    trunk_cfg.update(trunk_overrides)

    class ConchVisual(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = VisionTransformer(**trunk_cfg)
            self.attn_pool_contrast = AttentionalPooler(d_model=512, context_dim=trunk_cfg["embed_dim"],
                                                        n_head=8, n_queries=1)
            self.ln_contrast = torch.nn.LayerNorm(512)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = self.trunk.forward_features(x)  # (B, 1 + h*w, 768)
            pooled = self.attn_pool_contrast(tokens)[:, 0]  # (B, 512): the single query
            return self.ln_contrast(pooled)

    return ConchVisual()


GIGAPATH_TIMM = dict(img_size=224, in_chans=3, patch_size=16, embed_dim=1536, depth=40,
                     num_heads=24, init_values=1e-5, mlp_ratio=5.33334, num_classes=0)


def _build_gigapath(**overrides: Any) -> "torch.nn.Module":
    """Prov-GigaPath tile encoder: timm ``vit_giant_patch14_dinov2`` with the hub config's
    arguments (patch 16, 1536-d, 40 blocks, 24 heads, LayerScale 1e-5), CLS token out."""
    import timm

    return timm.create_model("vit_giant_patch14_dinov2", pretrained=False,
                             **{**GIGAPATH_TIMM, **overrides})


# Stand-ins (opt-in per dataset, random weights only): same patch size, input transform and output
# dim as the real network, 2 narrow blocks. Measured on this 2-core CPU (load ~3): CONCH ViT-B/16 at
# 448 px 0.17 patch/s and GigaPath ViT-g 38 s/patch with random weights, i.e. hours for the demo's
# 1,176 patches -- for numbers that carry no pretrained meaning either way.
STANDIN_VIT = dict(embed_dim=192, depth=2, num_heads=3)


def _build_conch_standin() -> "torch.nn.Module":
    """CONCH's image tower with a 2-block, 192-wide ViT/16 trunk at 448 px (same attentional
    pooler to 512 and LayerNorm)."""
    return _build_conch_visual(**STANDIN_VIT)


def _build_gigapath_standin() -> "torch.nn.Module":
    """GigaPath's timm DINOv2-style ViT (patch 16, SwiGLU MLP) with 2 blocks of 192, average-pooled
    patch tokens and a linear head to 1536 (the real network's output dim).

    Two departures, both because the weights are random: the CLS token of a randomly initialised
    timm ViT hardly depends on the image (measured: between-patch std / mean |x| = 1e-5 on demo
    patches, i.e. constant features), so the tokens are averaged instead; and LayerScale (1e-5 in
    GigaPath) is off so the random blocks contribute at all."""
    return _build_gigapath(**STANDIN_VIT, init_values=None, num_classes=1536, global_pool="avg")


register_encoder(EncoderSpec(
    name="resnet50",
    dim=1024,
    patch_size=256,
    magnification=20.0,
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    build=_build_resnet50_trunc,
    weights_env="BENCH_WEIGHTS_RESNET50",
    hub_files=(("timm/resnet50.tv_in1k", "model.safetensors"),
               ("timm/resnet50.tv_in1k", "pytorch_model.bin")),
    torch_hub_files=("resnet50-0676ba61.pth", "resnet50-19c8e357.pth"),
    download=("timm/resnet50.tv_in1k", "model.safetensors"),
    description="ImageNet ResNet-50 (torchvision IMAGENET1K_V1, as CLAM) truncated after layer3",
))

register_encoder(EncoderSpec(
    name="conch",
    dim=512,
    patch_size=256,
    magnification=20.0,
    input_size=448,  # CONCH's eval transform: Resize(448, bicubic) + CenterCrop(448)
    resize_size=448,
    interpolation="bicubic",
    mean=OPENAI_CLIP_MEAN,
    std=OPENAI_CLIP_STD,
    build=_build_conch_visual,
    weights_env="BENCH_WEIGHTS_CONCH",
    hub_files=(("MahmoodLab/conch", "pytorch_model.bin"),),
    download=("MahmoodLab/conch", "pytorch_model.bin"),
    # bf16 on CUDA (TRIDENT runs conch_v1 in fp32): max relative change of a feature 0.6 %
    # against fp32, random stand-in weights, tests/test_encoders.py; fp32 without bf16
    fingerprint_by="values",  # 90M parameters: hashing values costs ~0.3 s
    key_prefixes=("visual.", "", "module.visual.", "model.visual."),
    description="CONCH v1 image tower (MahmoodLab/conch pytorch_model.bin)",
    extra={"gated": True},
    standin_build=_build_conch_standin,
    standin_arch="ViT/16 2x192 + attn-pool 512",
))

register_encoder(EncoderSpec(
    name="gigapath",
    dim=1536,
    patch_size=256,
    magnification=20.0,
    input_size=224,  # Resize(256, bicubic) + CenterCrop(224), as the GigaPath README
    resize_size=256,
    interpolation="bicubic",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    build=_build_gigapath,
    weights_env="BENCH_WEIGHTS_GIGAPATH",
    hub_files=(("prov-gigapath/prov-gigapath", "pytorch_model.bin"),),
    download=("prov-gigapath/prov-gigapath", "pytorch_model.bin"),
    # bf16 on CUDA: fp16 (TRIDENT's choice, the fallback without bf16) can overflow in a 40-block
    # ViT-g; bf16 has fp32's range
    precision_cuda_fallback="fp16",
    fingerprint_by="file",  # 1.1B parameters: never hash 4.5 GB of values per call
    key_prefixes=("", "module.", "model."),
    description="Prov-GigaPath tile encoder (prov-gigapath/prov-gigapath pytorch_model.bin)",
    extra={"gated": True},
    standin_build=_build_gigapath_standin,
    standin_arch="ViT/16 2x192, avg-pool + linear 1536",
))


def _build_hipt_vit256() -> "torch.nn.Module":
    """HIPT's ViT-256-16 (mahmoodlab/HIPT ``vit_small``, DINO): ViT-S/16, 384-d, 12 blocks, 6 heads,
    qkv bias, LayerNorm eps 1e-6, CLS token out. Its position table is for 224 px (14 × 14 + CLS,
    as the checkpoint's); timm resizes it bicubically for the 256-px patches HIPT feeds it."""
    from functools import partial

    import torch
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6,
                             mlp_ratio=4, qkv_bias=True, num_classes=0, dynamic_img_size=True,
                             norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))


def _build_hipt_vit256_standin() -> "torch.nn.Module":
    """HIPT ViT-256's family at 2 blocks of 192 (ViT/16 at 256 px, as ``STANDIN_VIT``), average-pooled
    patch tokens and a linear map to 384 (the real output dim): the same departures as GigaPath's
    stand-in, for the same reason (a random ViT's CLS token hardly depends on the image)."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=256, patch_size=16, qkv_bias=True, num_classes=384, global_pool="avg",
                             dynamic_img_size=True, **STANDIN_VIT)


register_encoder(EncoderSpec(
    name="hipt-vit256",
    dim=384,
    patch_size=256,
    magnification=20.0,
    input_size=256,  # HIPT feeds whole 256-px patches: ToTensor + Normalize(0.5, 0.5), no resize
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
    build=_build_hipt_vit256,
    weights_env="BENCH_WEIGHTS_HIPT_VIT256",
    key_prefixes=("", "backbone.", "module.backbone.", "module."),
    description="HIPT ViT-256 (mahmoodlab/HIPT HIPT_4K/Checkpoints/vit256_small_dino.pth)",
    standin_build=_build_hipt_vit256_standin,
    standin_arch="ViT/16 2x192, avg-pool + linear 384",
))
