"""Prov-GigaPath's slide encoder — Xu et al., "A whole-slide foundation model for digital pathology
from real-world data", Nature 2024 — as prov-gigapath/prov-gigapath ``gigapath/slide_encoder.py``
(``gigapath_slide_enc12l768d``) builds it, on this project's LongNet dilated attention.

GigaPath tile features (1536-d) → Linear(1536, 768) → + 2D sin-cos position of each tile on the
slide's patch grid (MAE's table: half the channels encode the row, half the column) → a CLS token
in front (its position is zero) → 12 pre-norm LongNet layers (768-d, 16 heads, FFN 3072 with GELU
and sub-LN, dilated attention with ratios 1, 2, 4, 8, 16 and the release's segment lengths for a
262,144-px slide of 256-px tiles: 1024, 5792, 32768, 185363, 1048576) → LayerNorm (eps 1e-6).
86,330,880 parameters (REFERENCE.md: ~86M).

The two rows of the Pixel-Mamba paper's Table 2:

* ``variant="cls"`` ("CLS token"): the CLS token of the LongNet states listed in ``feat_layers``,
  each through the final LayerNorm, concatenated → Linear. This is the release's
  ``ClassificationHead``; ``feat_layers=(5, 11)`` (its docstring's example) gives 2 × 768 = 1536
  inputs, i.e. the 6,148-parameter head the paper's "1.2G + 6.1K" counts.
* ``variant="feat"`` ("feature"): the same layers' *tile* tokens (1536-d per tile) → CLAM's gated
  ABMIL (``baselines.mil.abmil``) → Linear: 1,183,365 parameters, the paper's "+ 1.2M".

``freeze=True`` (default) keeps the slide encoder fixed, as those "+ 6.1K" / "+ 1.2M" trainable
counts imply; it then runs in eval mode without gradients. Layers after the last one in
``feat_layers`` (and the encoder's closing LayerNorm) cannot change the output: they are kept so
the released checkpoint loads key for key, but never run and never train. Position tables are
computed for the tiles present instead of stored (the release keeps a 1000² × 768 buffer, 3 GB).
Not modelled: drop-path (the release fine-tunes with 0) and dropout inside the frozen encoder.

A frozen encoder maps a bag to the same states every epoch, so they are remembered per input
(keyed by a hash of the features and positions, up to ``memo_bytes``): after the first epoch only
the head trains, which is what makes this row affordable on a CPU (~1.3 s per 72-tile forward of
the 86M-parameter encoder here, ~0.1 ms for the head).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .dilated_attention import DEFAULT_RATIOS, DilatedAttention
from .mil.abmil import GatedAttention
from .mil.base import Bag, MILModel
from feature_cache.weights import find_weights, kind_for_path, record

from .weights import GIGAPATH_SLIDE, load

SLIDE_WEIGHTS_ENV = GIGAPATH_SLIDE.env
SLIDE_WEIGHTS_HUB = GIGAPATH_SLIDE.hub[0]


def find_slide_encoder_weights(weights: str | os.PathLike | None = None):
    """(path, how) of ``slide_encoder.pth``: explicit path, ``$BENCH_WEIGHTS_GIGAPATH_SLIDE``, then
    the local hub cache of ``prov-gigapath/prov-gigapath`` (gated: accept its terms, then
    ``huggingface-cli download prov-gigapath/prov-gigapath slide_encoder.pth``)."""
    path, _, how = find_weights(weights, GIGAPATH_SLIDE)
    return path, how


def release_segment_lengths(max_wsi_size: int = 262144, tile_size: int = 256, n: int = 5) -> list[int]:
    """The release's ``get_optimal_segment_length``: ``n`` lengths log-spaced from 1024 to the
    number of tiles of a ``max_wsi_size``² slide (truncated to integers as it does)."""
    max_len = (max_wsi_size // tile_size) ** 2
    exps = np.linspace(np.log2(1024), int(np.log2(max_len)), n)
    return [int(v) for v in np.power(2, exps).astype(int)]


def sincos_1d(pos: torch.Tensor, dim: int) -> torch.Tensor:
    """(N,) positions → (N, dim) = [sin(p·ω), cos(p·ω)], ω_i = 10000^(−i / (dim/2))."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = pos.to(torch.float64)[:, None] * omega[None]  # (N, dim/2)
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(grid_xy: torch.Tensor, dim: int) -> torch.Tensor:
    """(N, 2) integer (x, y) grid positions → (N, dim) float32, equal to the row the release's
    ``get_2d_sincos_pos_embed`` table holds at index ``x · slide_ngrids + y + 1``: the first half
    of the channels encodes y, the second half x."""
    if dim % 4:
        raise ValueError(f"embed_dim must be a multiple of 4, got {dim}")
    return torch.cat([sincos_1d(grid_xy[:, 1], dim // 2), sincos_1d(grid_xy[:, 0], dim // 2)], 1).float()


class FeedForward(nn.Module):
    """torchscale's ``FeedForwardNetwork`` with sub-LN: fc1 → GELU → LayerNorm(ffn) → fc2."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.ffn_layernorm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.ffn_layernorm(F.gelu(self.fc1(x)))))


class LongNetLayer(nn.Module):
    """Pre-norm encoder layer (torchscale ``EncoderLayer``, ``normalize_before``)."""

    def __init__(self, dim: int, heads: int, hidden: int, ratios: Sequence[int],
                 segment_lengths: Sequence[int], dropout: float) -> None:
        super().__init__()
        self.self_attn = DilatedAttention(dim, heads, ratios, segment_lengths, subln=True)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, hidden, dropout)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.self_attn(self.self_attn_layer_norm(x)))
        return x + self.ffn(self.final_layer_norm(x))


class LongNetEncoder(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, hidden: int, ratios: Sequence[int],
                 segment_lengths: Sequence[int], dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(LongNetLayer(dim, heads, hidden, ratios, segment_lengths, dropout)
                                    for _ in range(depth))
        self.layer_norm = nn.LayerNorm(dim)  # torchscale's normalize_output: unused by all-layer outputs

    def states(self, x: torch.Tensor, layers: Sequence[int]) -> list[torch.Tensor]:
        """The states after each of ``layers`` (0 = the input; torchscale's ``encoder_states``
        indices), in that order. Only those are kept: at 50,000 tiles every layer's state would
        hold 150 MB for nothing."""
        want = {int(i) for i in layers}
        kept = {0: x} if 0 in want else {}
        for i, layer in enumerate(self.layers[:max(want)], start=1):
            x = layer(x)
            if i in want:
                kept[i] = x
        return [kept[int(i)] for i in layers]


class ProvGigaPath(MILModel):
    """Slide encoder + the "CLS token" or "feature" head. Input: a :class:`Bag` with
    ``features (N, in_dim)`` and ``coords (N, 2)`` = (x, y) tile indices on the slide's grid."""

    def __init__(self, n_out: int, in_dim: int = 1536, variant: Literal["cls", "feat"] = "cls",
                 embed_dim: int = 768, depth: int = 12, heads: int = 16, mlp_ratio: float = 4.0,
                 feat_layers: Sequence[int] = (5, 11), ratios: Sequence[int] = DEFAULT_RATIOS,
                 segment_lengths: Sequence[int] | None = None, dropout: float = 0.1, freeze: bool = True,
                 weights: str | os.PathLike | None = None, abmil_hidden: int = 512, abmil_attn: int = 384,
                 abmil_dropout: float = 0.25, memo_bytes: int = 1 << 30) -> None:
        super().__init__()
        self.memo_bytes = int(memo_bytes)
        self._memo: OrderedDict[str, list[torch.Tensor]] = OrderedDict()
        self._memo_size = 0
        if variant not in ("cls", "feat"):
            raise ValueError(f"variant must be 'cls' or 'feat', got {variant!r}")
        self.feat_layers = tuple(int(i) for i in feat_layers)
        if not self.feat_layers or min(self.feat_layers) < 0 or max(self.feat_layers) > depth:
            raise ValueError(f"feat_layers must lie in 0..{depth} (0 = the embeddings), got {feat_layers}")
        self.variant, self.embed_dim, self.freeze = variant, embed_dim, freeze
        segs = list(segment_lengths) if segment_lengths is not None else release_segment_lengths()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Linear(in_dim, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.encoder = LongNetEncoder(embed_dim, depth, heads, int(embed_dim * mlp_ratio), ratios, segs, dropout)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init_encoder()
        self.weights = None
        if weights is not None:
            path = os.fspath(weights)
            record(self, load(self.slide_encoder_modules(), path, GIGAPATH_SLIDE,
                              kind=kind_for_path(path, GIGAPATH_SLIDE)))
            self.weights = path
        # never run: the layers after the last one read, and the closing LayerNorm
        for layer in self.encoder.layers[max(self.feat_layers):]:
            layer.requires_grad_(False)
        self.encoder.layer_norm.requires_grad_(False)
        if freeze:
            self.slide_encoder_modules().requires_grad_(False)
        feat_dim = len(self.feat_layers) * embed_dim
        if variant == "cls":
            self.num_features = feat_dim
        else:
            self.num_features = abmil_hidden
            self.fc = nn.Sequential(nn.Linear(feat_dim, abmil_hidden), nn.ReLU(), nn.Dropout(abmil_dropout))
            self.attention = GatedAttention(abmil_hidden, abmil_attn, abmil_dropout)
        self.head = nn.Linear(self.num_features, n_out)

    def slide_encoder_modules(self) -> nn.Module:
        """The slide encoder's parameters under the release's names (for loading and freezing)."""
        m = nn.Module()
        m.patch_embed, m.encoder, m.norm = self.patch_embed, self.encoder, self.norm
        m.register_parameter("cls_token", self.cls_token)
        return m

    def _init_encoder(self) -> None:
        """The release's init: Xavier-uniform Linear weights, zero biases, CLS ~ N(0, 0.02); then
        torchscale's sub-LN rescaling of fc1/fc2/out_proj/v_proj by sqrt(log(2·depth))."""
        for m in [self.patch_embed.proj, *self.encoder.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        gain = math.sqrt(math.log(2 * len(self.encoder.layers)))
        with torch.no_grad():
            for name, p in self.encoder.named_parameters():
                if any(k in name for k in ("fc1", "fc2", "out_proj", "v_proj")):
                    p.mul_(gain)

    def train(self, mode: bool = True) -> "ProvGigaPath":
        super().train(mode)
        if self.freeze:
            for m in (self.patch_embed, self.encoder, self.norm):
                m.eval()  # a frozen stage stays in inference mode
        return self

    @staticmethod
    def _unpack(x: Bag | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(x, Bag) or x.coords is None:
            raise ValueError("Prov-GigaPath needs tile positions: pass Bag(features (N, D), coords (N, 2))")
        feats, coords = x.features, x.coords
        if feats.dim() == 3 and feats.shape[0] == 1:
            feats, coords = feats[0], coords.reshape(-1, 2)
        if feats.dim() != 2 or feats.shape[0] == 0 or coords.shape != (feats.shape[0], 2):
            raise ValueError(f"need features (N, D) with N >= 1 and coords (N, 2), got "
                             f"{tuple(feats.shape)} and {tuple(coords.shape)}")
        return feats, coords

    def _key(self, feats: torch.Tensor, coords: torch.Tensor) -> str:
        h = hashlib.blake2b(digest_size=16)
        for t in (feats, coords):
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def load_state_dict(self, *args, **kwargs):  # new weights: forget remembered states
        self._memo.clear()
        self._memo_size = 0
        return super().load_state_dict(*args, **kwargs)

    def encode(self, x: Bag) -> list[torch.Tensor]:
        """The normed LongNet states of ``feat_layers``, each ``(1, 1 + N, embed_dim)``."""
        feats, coords = self._unpack(x)
        if not self.freeze or self.memo_bytes <= 0:
            return self._encode(feats, coords)
        key = self._key(feats, coords)
        if key in self._memo:
            self._memo.move_to_end(key)
            return self._memo[key]
        states = self._encode(feats, coords)
        size = sum(s.numel() * s.element_size() for s in states)
        if size <= self.memo_bytes:
            self._memo[key] = states
            self._memo_size += size
            while self._memo_size > self.memo_bytes:
                _, old = self._memo.popitem(last=False)
                self._memo_size -= sum(s.numel() * s.element_size() for s in old)
        return states

    def _encode(self, feats: torch.Tensor, coords: torch.Tensor) -> list[torch.Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            h = self.patch_embed.proj(feats) + sincos_2d(coords, self.embed_dim).to(feats)  # (N, E)
            h = torch.cat([self.cls_token[0], h], dim=0).unsqueeze(0)  # (1, 1 + N, E); CLS position = 0
            return [self.norm(state) for state in self.encoder.states(h, self.feat_layers)]

    def forward_features(self, x: Bag | torch.Tensor) -> torch.Tensor:
        states = self.encode(x)
        if self.variant == "cls":
            return torch.cat([s[:, 0] for s in states], dim=-1)  # (1, layers · E)
        tiles = torch.cat([s[0, 1:] for s in states], dim=-1)  # (N, layers · E)
        h = self.fc(tiles)  # (N, hidden)
        a = torch.softmax(self.attention(h).squeeze(-1), dim=0)  # (N,)
        return (a @ h).unsqueeze(0)  # (1, hidden)
