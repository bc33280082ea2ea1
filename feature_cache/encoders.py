"""Patch encoders: a registry of specs, each carrying its own transform, output dim and weights
resolution, so the cache key and the numbers always come from the same place.

Weights resolve in one documented order (no silent downloads, no silent random weights):

1. ``weights=`` passed explicitly (a ``.safetensors``/``.pth``/``.bin`` state dict);
2. the environment variable named by the spec (``BENCH_WEIGHTS_RESNET50`` for ``resnet50``);
3. a local Hugging Face hub cache entry (``timm/resnet50.tv_in1k``) or the torch hub cache
   (``resnet50-0676ba61.pth``, torchvision's ImageNet weights) -- read offline, never fetched;
4. if ``allow_random``: a *seeded* random initialisation (identical in every process, so several
   workers can share one cache), a logged warning and ``encoder.random_weights = True``;
5. otherwise :class:`EncoderWeightsError` naming the fix.

``encoder.fingerprint`` hashes the loaded parameter values, so two different weight files never
share a cache directory, whatever their names.

Importing this module does not import torch; building an encoder does.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "EncoderSpec",
    "Encoder",
    "EncoderWeightsError",
    "register_encoder",
    "list_encoders",
    "get_encoder",
]

log = logging.getLogger(__name__)

ENCODER_CODE_VERSION = "1"  # bump when preprocessing or pooling changes the numbers
RANDOM_INIT_SEED = 0


class EncoderWeightsError(RuntimeError):
    """No usable weights for an encoder; the message says how to supply them."""


@dataclass(frozen=True)
class EncoderSpec:
    """What defines an encoder: how to build it, what it eats and emits, where weights live."""

    name: str
    dim: int
    patch_size: int  # px at `magnification`, as the encoder's authors extracted patches
    magnification: float
    input_size: int  # px fed to the network after resizing the patch
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    build: Callable[[], "torch.nn.Module"]  # architecture, random init, no weights
    weights_env: str
    hub_files: tuple[tuple[str, str], ...] = ()  # (repo_id, filename) in the local HF cache
    torch_hub_files: tuple[str, ...] = ()  # file names in torch.hub's checkpoints dir
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


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


class Encoder:
    """A ready patch encoder: ``enc(batch)`` maps uint8 patches (B, H, W, 3) -- numpy or torch --
    or an already-transformed float tensor (B, 3, S, S) to float32 features (B, dim) on the CPU.

    ``transform`` maps one uint8 (H, W, 3) array or PIL image to the normalized (3, S, S) tensor,
    for DataLoader workers; ``__call__`` applies the same preprocessing batched.
    """

    def __init__(self, spec: EncoderSpec, model: "torch.nn.Module", *, random_weights: bool,
                 weights_source: str, device: str = "cpu"):
        import torch

        self.spec = spec
        self.name = spec.name
        self.dim = spec.dim
        self.patch_size = spec.patch_size
        self.magnification = spec.magnification
        self.input_size = spec.input_size
        self.random_weights = random_weights
        self.weights_source = weights_source
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        if self.device.type == "cpu":
            # measured 2x faster for ResNet-50 on this 2-core CPU
            self.model = self.model.to(memory_format=torch.channels_last)
        self._mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.fingerprint = self._fingerprint()

    def _fingerprint(self) -> str:
        import torch

        h = hashlib.sha256()
        h.update(f"{self.name}|{ENCODER_CODE_VERSION}|{self.input_size}|{self.spec.mean}|"
                 f"{self.spec.std}".encode())
        for key, tensor in sorted(self.model.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype, raw bytes
        return h.hexdigest()[:16]

    def _preprocess(self, batch: Any) -> "torch.Tensor":
        import torch
        import torch.nn.functional as F

        if isinstance(batch, torch.Tensor):
            x = batch
        else:
            arr = np.asarray(batch)
            x = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
        if x.dtype == torch.uint8:
            if x.ndim == 3:
                x = x.unsqueeze(0)
            if x.ndim != 4 or x.shape[-1] != 3:
                raise ValueError(f"expected uint8 patches (B, H, W, 3); got {tuple(x.shape)}")
            x = x.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W)
            if x.shape[-2:] != (self.input_size, self.input_size):
                x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                                  align_corners=False, antialias=True)
            x = (x - self._mean) / self._std
        elif not x.is_floating_point() or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError("expected uint8 (B, H, W, 3) patches or transformed float "
                             f"(B, 3, S, S) tensors; got {x.dtype} {tuple(x.shape)}")
        return x.float()

    def transform(self, image: Any) -> "torch.Tensor":
        """One patch (uint8 (H, W, 3) array or PIL image) -> normalized (3, S, S) tensor."""
        return self._preprocess(np.asarray(image, dtype=np.uint8)[None])[0]

    def __call__(self, batch: Any) -> "torch.Tensor":
        import torch

        x = self._preprocess(batch).to(self.device)
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = self.model(x)  # (B, dim)
        return out.float().cpu()

    def __repr__(self) -> str:
        w = "random weights" if self.random_weights else self.weights_source
        return f"Encoder({self.name!r}, dim={self.dim}, fingerprint={self.fingerprint}, {w})"


# ------------------------------------------------------------------------ weights


def _load_state_dict(path: Path) -> dict[str, Any]:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):  # common checkpoint wrappers
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise EncoderWeightsError(f"{path}: not a state dict (got {type(sd).__name__})")
    return sd


def _apply_weights(spec: EncoderSpec, model: "torch.nn.Module", path: Path) -> None:
    """Load a (possibly full-network) state dict into the truncated model: every parameter the
    model has must be present with the right shape; extra keys (layer4, fc) are ignored."""
    try:
        sd = _load_state_dict(path)
    except EncoderWeightsError:
        raise
    except Exception as err:
        raise EncoderWeightsError(f"cannot read weights for {spec.name!r} from {path}: {err}. "
                                  f"Fix: point to a readable .safetensors/.pth state dict.") from err
    own = model.state_dict()
    prefixes = ("", "module.", "model.", "backbone.", "trunk.")
    missing, mismatched, found = [], [], {}
    for key, value in own.items():
        bare = key.split("body.", 1)[-1]
        cand = next((sd[p + bare] for p in prefixes if p + bare in sd), None)
        if cand is None:
            missing.append(key)
        elif tuple(cand.shape) != tuple(value.shape):
            mismatched.append(f"{key} {tuple(cand.shape)} vs {tuple(value.shape)}")
        else:
            found[key] = cand
    if missing or mismatched:
        raise EncoderWeightsError(
            f"{path} does not fit encoder {spec.name!r}: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(mismatched)} shape mismatches ({mismatched[:3]}). "
            f"Fix: use the weights of {spec.description or spec.name}.")
    model.load_state_dict(found, strict=True)


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


def get_encoder(name: str, weights: str | os.PathLike | None = None, allow_random: bool = False,
                device: str = "cpu") -> Encoder:
    """Build encoder ``name`` with weights resolved in the order of the module docstring."""
    import torch

    spec = _spec(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)  # random init is reproducible across processes
        model = _pooled(spec.build())

    source: Path | None = None
    how = ""
    if weights is not None:
        source, how = Path(weights), "explicit path"
        if not source.is_file():
            raise EncoderWeightsError(f"weights file {source} for encoder {name!r} does not exist")
    elif os.environ.get(spec.weights_env):
        source, how = Path(os.environ[spec.weights_env]), f"${spec.weights_env}"
        if not source.is_file():
            raise EncoderWeightsError(f"${spec.weights_env}={source} for encoder {name!r} is not a "
                                      f"file. Fix: point it at the weights, or unset it.")
    else:
        cached = _cached_weight_files(spec)
        if cached:
            source, how = cached[0], "local hub cache"

    if source is not None:
        _apply_weights(spec, model, source)
        log.info("encoder %s: weights from %s (%s)", name, source, how)
        return Encoder(spec, model, random_weights=False, weights_source=f"{how}: {source}",
                       device=device)
    if allow_random:
        log.warning("encoder %s: no weights found (%s, local hub cache); using RANDOM weights "
                    "(seed %d) -- results will say so", name, spec.weights_env, RANDOM_INIT_SEED)
        return Encoder(spec, model, random_weights=True, weights_source="random", device=device)
    hubs = " ".join(dict.fromkeys(r for r, _ in spec.hub_files)) or "its hub repository"
    raise EncoderWeightsError(
        f"no weights for encoder {name!r}. Fix one of: pass weights=/path/to/weights "
        f"(.safetensors/.pth); set {spec.weights_env}=/path/to/weights; download them while "
        f"online (`huggingface-cli download {hubs}`) so the local hub cache has them; or allow "
        f"random weights (the demo dataset does; results are then marked 'random weights')."
    )


# ------------------------------------------------------------------------ registry entries


def _build_resnet50_trunc() -> "torch.nn.Module":
    import timm

    # features_only + out_indices=(3,) keeps the network up to layer3: 1024 channels, stride 16
    return timm.create_model("resnet50", pretrained=False, features_only=True, out_indices=(3,))


register_encoder(EncoderSpec(
    name="resnet50",
    dim=1024,
    patch_size=256,
    magnification=20.0,
    input_size=224,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    build=_build_resnet50_trunc,
    weights_env="BENCH_WEIGHTS_RESNET50",
    hub_files=(("timm/resnet50.tv_in1k", "model.safetensors"),
               ("timm/resnet50.tv_in1k", "pytorch_model.bin")),
    torch_hub_files=("resnet50-0676ba61.pth", "resnet50-19c8e357.pth"),
    description="ImageNet ResNet-50 (torchvision IMAGENET1K_V1, as CLAM) truncated after layer3",
))
