"""The encoder registry and the ready encoder: specs carry their own transform, output dim,
precision and weights sources, so the cache key and the numbers always come from the same place.

Importing this module does not import torch; building an encoder does.
"""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from feature_cache.loader import Preprocess
from feature_cache.weights import KeyMap, WeightsError, WeightsProvenance, WeightsSource, file_sha256, sha_store

if TYPE_CHECKING:
    import torch

ENCODER_CODE_VERSION = "1"  # bump when preprocessing or pooling changes the numbers
RANDOM_INIT_SEED = 0
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CONCH's eval transform (open_clip)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class EncoderWeightsError(WeightsError):
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
    # the release layouts a weights file may have (feature_cache.weights.KeyMap: container, renames,
    # deliberately dropped keys), tried in order; the match is strict
    keymaps: tuple[KeyMap, ...] = ()
    official: str = ""  # where the published file comes from (docs/weights.md)
    published_sha256: dict[str, str] = field(default_factory=dict)  # by file name, as published
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # a small network of the same family (same patch size, input transform and output dim) that a
    # dataset may opt into *instead of* a random-weight copy of the full network (see get_encoder)
    standin_build: Callable[[], "torch.nn.Module"] | None = None
    standin_arch: str = ""


    def weights_source(self) -> WeightsSource:
        """The generic view of where this encoder's weights come from (``bench weights``)."""
        files = tuple(dict.fromkeys([f for _, f in self.hub_files] + list(self.torch_hub_files)
                                    + list(self.published_sha256)))
        return WeightsSource(component=f"encoder {self.name}", env=self.weights_env, files=files,
                             official=self.official, keymaps=self.keymaps, hub=self.hub_files,
                             torch_hub=self.torch_hub_files, sha256=self.published_sha256,
                             gated=bool(self.extra.get("gated")), note=self.description)


STANDIN_VIT = dict(embed_dim=192, depth=2, num_heads=3)
# Stand-ins (opt-in per dataset, random weights only): same patch size, input transform and output
# dim as the real network, 2 narrow blocks. On a CPU the full CONCH ViT-B/16 at 448 px and GigaPath
# ViT-g take seconds to tens of seconds per patch, i.e. hours for the demo's 1,176 patches -- for
# numbers that carry no pretrained meaning either way.

REGISTRY: dict[str, EncoderSpec] = {}


def register_encoder(spec: EncoderSpec, replace: bool = False) -> EncoderSpec:
    """Add ``spec`` (``replace``: over a spec of the same name, e.g. a re-read declaration)."""
    if spec.name in REGISTRY and not replace:
        raise ValueError(f"encoder {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec
    return spec


def unregister_encoder(name: str) -> None:
    """Forget ``name`` (a declaration that no longer exists); unknown names are ignored."""
    REGISTRY.pop(name, None)


def registered_spec(name: str) -> EncoderSpec | None:
    """The spec registered under ``name``, or None (no "did you mean": callers decide)."""
    return REGISTRY.get(name)


def list_encoders(pattern: str = "*") -> list[str]:
    """Registered encoder names matching a glob; cheap (imports no deep-learning library)."""
    return sorted(n for n in REGISTRY if fnmatch.fnmatch(n, pattern))


def encoder_spec(name: str) -> EncoderSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(REGISTRY), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown encoder {name!r}; known: {', '.join(list_encoders())}.{hint}") from None


def build_module(name: str, device: str = "meta") -> "torch.nn.Module":
    """The bare architecture of encoder ``name``, built on ``device``. On ``"meta"`` no memory is
    allocated and nothing is initialised, so even GigaPath's 1.1B parameters build in well under a
    second -- what tests use to check parameter counts and output shapes."""
    import torch

    with torch.device(device):
        return encoder_spec(name).build()


# ------------------------------------------------------------------------ the encoder


def pooled(model: "torch.nn.Module") -> "torch.nn.Module":
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
                 fingerprint: str | None = None, on_fingerprint: Callable[[str], None] | None = None,
                 provenance: WeightsProvenance | None = None):
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
        # what the weights were loaded from (feature_cache.weights.WeightsProvenance), one entry;
        # completed (mapping, dropped keys, tensor count) when the network is built
        self.weights_provenance: list[WeightsProvenance] = [
            provenance or WeightsProvenance(part=f"encoder {spec.name}",
                                            source="random" if random_weights else "explicit")]
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
    def weights_file(self) -> Path | None:
        """The checkpoint the encoder's weights come from (None: random or a stand-in)."""
        return self._weights_file

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
        built = getattr(model, "weights_provenance", None)
        if built:  # the load's own record (keys matched, dropped): in place, callers may hold the list
            self.weights_provenance[:] = built
        # channels-last: the layout CPU convolutions run fastest in (ResNet-50 about twice as fast); a no-op for ViTs
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
                        f"{fingerprint_store()}); it has been corrected. Fix: run the command again.")
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

    def prepare_batch(self, batch: Any) -> "torch.Tensor":
        return self.preprocess(batch)

    def transform(self, image: Any) -> "torch.Tensor":
        """One patch (uint8 (H, W, 3) array or PIL image) -> normalized (3, S, S) tensor."""
        return self.prepare_batch(np.asarray(image, dtype=np.uint8)[None])[0]

    def __call__(self, batch: Any) -> "torch.Tensor":
        import torch

        x = self.prepare_batch(batch).to(self.device, non_blocking=True)  # pinned by the loader on CUDA
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



def fingerprint_store() -> Path:
    return sha_store().with_name("encoder-fingerprints.json")

