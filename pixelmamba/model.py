"""Pixel-Mamba: an end-to-end whole-slide network from pixel tokens to a slide-level prediction.

Implements Qiu, Chao, Lin et al., "From Pixels to Gigapixels: Bridging Local Inductive Bias and
Long-Range Dependencies with Pixel-Mamba" (Sec. 3; layer tables 7–8 of the appendix, 1–2 of the
supplement). No public code of the paper exists; where it is silent, the choices made here are
stated in the docstrings of ``serialize``, ``layers`` and this module.

Data flow for an image ``x (B, 3, H, W)`` (normalized with the ImageNet mean/std):

1. ``image_to_regions``: pad to multiples of the scan window, cut into ``n`` regions in zigzag
   order → ``tokens (B, n, s, s, 3)``; one learned CLS token (3 channels) per region.
2. 24 layers, each: serialize (zigzag inside regions, CLS in the middle) → Mamba block (Eq. 1) on
   the whole ``(B, n*(h*w+1), C)`` sequence → deserialize → Region Fusion (``n`` shrinks by ``k``)
   → Token Expansion on some layers (the region grid halves along one axis).
3. The remaining regions' CLS tokens are normalized (RMSNorm, as Vim's final norm) and averaged
   over the regions that hold real pixels → ``(B, C)``; a linear head gives the logits.

Memory, for gigapixel inputs: each layer runs under activation checkpointing (only its input is
kept for backward), the Mamba block can stream its sequence in chunks with carried state
(``chunk_size``; the mixer then also checkpoints every chunk), and the activations passed between
layers can be stored in bfloat16 (``act_dtype``) while every layer computes in float32. Small
inputs (at most ``UNPIECED_TOKENS`` pixels, batch included: a batch of four 224² images) skip all
of that by default (``checkpointing="auto"``, ``chunk_size="auto"``): recomputation costs time
and buys memory they do not need.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .configs import CONFIGS, LayerRow, PixelMambaConfig
from .layers import PixelMambaBlock, fuse_and_expand, fusion_slots, merge_count, region_fusion, token_expansion
from .serialize import deserialize, image_to_regions, region_grid, serialize
from .streaming import streamed_block

logger = logging.getLogger(__name__)

CHUNK_BYTES = 8 << 20  # chunk_size="auto": working set of one piece in backward, at most
CHUNK_BYTES_PER_TOKEN = 8  # ... and at most this much per token of the (padded) input: see piece_budget
UNPIECED_REGIONS = 4  # "auto": inputs of at most this many 224² regions' pixels (batch included) ...
UNPIECED_TOKENS = UNPIECED_REGIONS * 224 * 224  # ... run unpieced and unstreamed, whatever the scan window


def piece_budget(tokens: int) -> int:
    """Working set of one piece for an input of ``tokens`` pixels after padding to whole regions
    (batch included): ``CHUNK_BYTES_PER_TOKEN`` per token, at most ``CHUNK_BYTES``. A fixed 8 MB
    is a small share of a slide's peak but most of a small image's (80 B/px is 20 MB at 512²),
    so the pieces shrink with the input and the peak stays a constant factor of its size: 3.6 MB
    at 512² (451,584 tokens after padding to 3 × 3 regions), 8 MB from about 1M tokens up
    (1024² pads to 1.25M). Smaller pieces cost time (per-piece overhead; at 512², heap trimmed
    at every stage as ``bench`` does: 4 MB pieces 16.6 CPU s, 3 MB 18.8 s), which is why the cap
    stays, and below 8 bytes per token buy nothing at 512²: 6 and 4 (2.7, 1.8 MB) measured
    85–102 B/px against 84–85, since below ~3.3 MB the 50-token, 384-channel layers 23–24 take
    two pieces, whose parameter gradients then need accumulators (4 MB)."""
    return min(CHUNK_BYTES, CHUNK_BYTES_PER_TOKEN * tokens)


def auto_chunk(channels: int, d_state: int = 16, expand: int = 2, budget: int = CHUNK_BYTES) -> int:
    """Tokens per piece for ``chunk_size="auto"``. Measured (one streamed block's
    forward+backward at the shapes of 1024², peak heap bytes against piece length, 96 and 192
    channels at 205–819 tokens, 3 channels at 1.6K–6.4K): a piece's backward holds about 112
    bytes per inner channel (``expand * channels``) per token — the autograd graph of both
    branches keeps some twenty ``(d_inner, piece)`` float32 tensors, and their gradients come on
    top — and about 52 bytes per state dimension (B and C of both branches and their gradients).
    Pieces are sized so that this stays near ``budget`` (``piece_budget``; ``CHUNK_BYTES``,
    8 MB, for slides), with at least ``128 * budget / CHUNK_BYTES`` tokens (128 at 8 MB, at
    least 16): every piece boundary also keeps two SSM states (``2 * expand * channels *
    d_state`` floats) for backward, so pieces must not be tiny on the wide layers. At 8 MB:
    3 channels ~5.6K tokens; 96: ~380; 192: ~190; 384: 128. At 3.6 MB (512²): 2.4K, 171, 86, 57."""
    floor = max(16, 128 * budget // CHUNK_BYTES)
    return max(floor, budget // _piece_bytes_per_token(channels, d_state, expand))


def _piece_bytes_per_token(channels: int, d_state: int, expand: int) -> int:
    return 4 * (28 * expand * channels + 13 * d_state)  # 28 and 13 float32 values: see auto_chunk


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalise_rgb(tokens: Tensor, valid: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Region grids of raw RGB ``(B, n, s, s, 3)`` uint8 → ``(x / 255 - mean) / std`` in
    ``dtype`` (ImageNet statistics, the order of operations of ``bench``'s loaders, computed in
    float32), padding zero. One region at a time: the float32 copy is one region's, not the
    slide's (12 bytes per pixel)."""
    mean = torch.tensor(IMAGENET_MEAN, device=tokens.device)
    std = torch.tensor(IMAGENET_STD, device=tokens.device)
    out = torch.empty(tokens.shape, dtype=dtype, device=tokens.device)
    for r in range(tokens.shape[1]):
        x = tokens[:, r].to(torch.float32).div_(255.0).sub_(mean).div_(std)
        out[:, r] = x.masked_fill_(~valid[:, r].unsqueeze(-1), 0.0)
    return out


@dataclass(frozen=True)
class PlanRow:
    """What one layer will cost, from ``PixelMamba.plan``.

    ``token_h × token_w`` is the token grid of one region as the layer's Mamba block sees it,
    ``channels`` its width, ``seq_len`` the length of the sequence it scans
    (``n_regions_in * (token_h * token_w + 1)``), and ``n_regions`` the regions left after the
    layer's Region Fusion.
    """

    layer: int
    token_h: int
    token_w: int
    channels: int
    n_regions: int
    seq_len: int


class PixelMambaLayer(nn.Module):
    """Mamba block → Region Fusion → optional Token Expansion, on region grids."""

    def __init__(self, row: LayerRow, cfg: PixelMambaConfig, backend: str = "auto") -> None:
        super().__init__()
        self.row = row
        self.block = PixelMambaBlock(row.channels, cfg.d_state, cfg.d_conv, cfg.expand, backend,
                                     merge=cfg.bidirectional_merge)
        self.partition = cfg.fusion_partition

    def forward(
        self, tokens: Tensor, cls: Tensor, valid: Tensor, k: int, chunk_size: int | None = None,
        streaming: bool = True, release_pieces: bool = False, slots: list[Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``tokens (B, n, h, w, C)`` (any float dtype; computed in float32), ``cls (B, n, C)``,
        ``valid (B, n, h, w)`` → the same three after fusion and expansion; tokens come back in
        the dtype they came in, so bf16 storage between layers is the caller's choice.

        ``streaming``: run the Mamba block piece by piece straight from the region grid, keeping
        only its input for backward (``streaming.streamed_block``; ``release_pieces`` is passed
        on); otherwise serialize the whole sequence and let autograd keep everything (the plain
        reference path).

        ``slots``: when a list, Region Fusion's choice is appended to it: the output region
        ``(B, n)`` every input region went to (``PixelMamba.region_tokens`` follows them)."""
        store_dtype = tokens.dtype
        B, n, h, w, C = tokens.shape
        if streaming:  # the lean path: no full-size float32 intermediates after the block either
            # (the block's tokens go only to fuse_and_expand: their gradient is the block's own)
            tokens, cls = streamed_block(self.block, tokens, cls, valid, chunk_size, store_dtype, reuse_grad=True,
                                         release_pieces=release_pieces)
            self._record(slots, cls, valid, k)
            return fuse_and_expand(tokens, cls, valid, k, self.row.expansion, store_dtype, self.partition)
        seq = serialize(tokens.float(), cls)  # (B, n*(h*w+1), C)
        seq = self.block(seq, chunk_size=chunk_size)
        tokens, cls = deserialize(seq, n, h, w)  # (B, n, h, w, C), (B, n, C)
        self._record(slots, cls, valid, k)
        tokens = tokens * valid.unsqueeze(-1)  # padding stays zero outside the block
        tokens, cls, valid = region_fusion(tokens, cls, valid, k, self.partition)
        if self.row.expansion is not None:
            tokens, cls, valid = token_expansion(tokens, cls, valid, self.row.expansion)
        return tokens.to(store_dtype), cls, valid

    def _record(self, slots: list[Tensor] | None, cls: Tensor, valid: Tensor, k: int) -> None:
        """Append the slot of every region (Region Fusion's deterministic choice on these CLS tokens)."""
        if slots is not None:
            B, n = cls.shape[:2]
            slots.append(fusion_slots(cls, valid, k, self.partition)[0] if k
                         else torch.arange(n, device=cls.device).expand(B, n))


@dataclass(frozen=True)
class RegionTokens:
    """The final region CLS tokens of ``PixelMamba.region_tokens``, before they are averaged into
    the slide token: ``forward_features`` is the mean of ``cls`` over the ``real`` regions."""

    cls: Tensor  # (B, m, C): after the final norm
    real: Tensor  # (B, m) bool: regions holding real pixels
    source: Tensor  # (B, n0) long: the final region each initial region (zigzag order) was fused into
    grid: tuple[int, int]  # (rows, cols) of the initial regions of ``window`` px
    window: int


class PixelMamba(nn.Module):
    """The Pixel-Mamba network with the timm-style face used across wsi-bench.

    Memory options (none of them changes the result beyond float rounding; tests compare):

    ``checkpointing``: True: every Mamba block streams its sequence in pieces straight from the
    region grid and keeps only its input for backward, recomputing each piece there
    (``streaming.streamed_block``); False: the plain autograd path, which keeps everything (about
    390 MB per 224² image for Pixel-Mamba-6M, 4x the streamed path) and is faster (no
    recomputation: measured 3.3 vs 4.2 CPU s for fwd+bwd of 2 x 224²). ``"auto"`` (default,
    ``streams``): the plain path for inputs of at most ``UNPIECED_TOKENS`` pixels after padding,
    batch included (a batch of up to four 224² images, a small slide, at any scan window), the
    streamed path for anything
    larger (whole slides; also without gradients, where it still spares the full-length float32
    copies of the sequence).
    ``chunk_size``: tokens per piece; ``"auto"`` (default, ``layer_chunk``) sizes pieces so that a
    piece's working set is about ``CHUNK_BYTES`` at every layer, and runs inputs of at most
    ``UNPIECED_TOKENS`` pixels (224² batches) unpieced; None: one piece.
    ``act_dtype``: dtype of the activations kept between layers (``torch.bfloat16`` halves what
    is kept for backward; each layer still computes in float32, so the only loss is the rounding
    of the stored layer inputs and of the gradients passed between layers).
    ``segment``: layers per recomputed segment. 1 (default) keeps every layer's input; ``s > 1``
    keeps only every ``s``-th layer's input and recomputes the layers between in backward, at the
    price of one more forward pass.
    """

    def __init__(
        self,
        cfg: PixelMambaConfig,
        num_classes: int = 1000,
        chunk_size: int | str | None = "auto",
        checkpointing: bool | str = "auto",
        act_dtype: torch.dtype | str = torch.float32,
        backend: str = "auto",
        segment: int = 1,
    ) -> None:
        super().__init__()
        if isinstance(act_dtype, str):  # from YAML / the command line: "bfloat16", "float32"
            act_dtype = getattr(torch, act_dtype.removeprefix("torch."))
        if not (chunk_size is None or chunk_size == "auto" or (isinstance(chunk_size, int) and chunk_size > 0)):
            raise ValueError(f"chunk_size must be a positive int, 'auto' or None, got {chunk_size!r}")
        if not isinstance(segment, int) or segment < 1:
            raise ValueError(f"segment must be a positive int, got {segment!r}")
        self.cfg = cfg
        self.chunk_size = chunk_size
        self.set_grad_checkpointing(checkpointing)  # validates
        self.act_dtype = act_dtype
        self.segment = segment
        self.num_features = cfg.num_features
        # One learned CLS token for every region (the paper inserts "a CLS token" per region).
        self.cls_token = nn.Parameter(torch.zeros(cfg.in_chans))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.layers = nn.ModuleList(PixelMambaLayer(row, cfg, backend) for row in cfg.rows)
        self.norm = nn.RMSNorm(self.num_features, eps=1e-5)
        self.head: nn.Module = nn.Identity()
        self.reset_classifier(num_classes)

    # -- the common face -----------------------------------------------------------------------

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head (``0`` gives an identity head: ``forward`` returns features)."""
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def set_grad_checkpointing(self, enable: bool | str = True) -> None:
        """``True``/``False`` force the streamed/plain path; ``"auto"`` restores the default."""
        if not (isinstance(enable, bool) or enable == "auto"):
            raise ValueError(f"checkpointing must be True, False or 'auto', got {enable!r}")
        self.checkpointing = enable

    def streams(self, regions: int) -> bool:
        """Whether a forward pass over ``regions`` initial regions (batch included) runs the
        streamed blocks (``checkpointing``). ``"auto"``: when the input has more than
        ``UNPIECED_TOKENS`` pixels (four 224² regions' worth), counted in pixels rather than
        regions because memory scales with pixels: nine 32² regions are one small slide (the
        streamed path measured 18x the plain path's CPU time on it, 4.5 vs 0.25 s per step of
        Pixel-Mamba-6M at 78 x 88 px). Up to that (a 224² batch, a small slide) the plain
        autograd path's memory (~390 MB per 224² region for the 6M model) is not the limit and
        its speed is worth having: recomputing every block in backward costs ~30% more CPU time
        on 2 x 224². Above it, the streamed path also without gradients: it never builds the
        full-length float32 copies of the sequence that the plain path does."""
        if self.checkpointing == "auto":
            return self._tokens(regions) > UNPIECED_TOKENS
        return bool(self.checkpointing)

    def _tokens(self, regions: int) -> int:
        """Pixels of ``regions`` whole scan windows: what the memory of a forward pass scales with."""
        return regions * self.cfg.scan_window ** 2

    def layer_chunk(self, layer: PixelMambaLayer, regions: int) -> int | None:
        """Tokens per piece of ``layer`` for an input of ``regions`` initial regions (batch
        included). ``"auto"``: ``auto_chunk`` with the budget ``piece_budget`` gives for the
        input's tokens (``regions`` whole scan windows), except that small inputs (at most
        ``UNPIECED_TOKENS`` pixels: a batch of 224² images) run in one piece — pieces cost time
        (the forward runs the forward branch once more for the boundary states, the backward
        recomputes and differentiates it once more for the state chain: about 4.5 instead of 3
        passes over the mixer, measured 24% more CPU time on 2 × 224²), which only pays when
        memory is the limit."""
        if self.chunk_size == "auto":
            if self._tokens(regions) <= UNPIECED_TOKENS:
                return None
            return auto_chunk(layer.row.channels, self.cfg.d_state, self.cfg.expand, self._budget(regions))
        return self.chunk_size  # type: ignore[return-value]

    def releases_pieces(self, regions: int) -> bool:
        """Whether the streamed blocks call the release hook between the pieces of their
        backward's second sweep too (``streaming.set_release_hook``): for inputs whose
        ``"auto"`` pieces are below the 8 MB cap (``piece_budget``: below ~1M tokens). There a
        sweep's freed heap pages are a large share of the peak (``bench``, which hands them back:
        512² 84–85 → 78.5–80 B/px, +6–11% CPU); on slides, with 8 MB pieces, they are not
        (1024²: 66.4 → 65.7 B/px) and the trims cost 10–14% CPU time (1024², 2048²)."""
        return self.chunk_size == "auto" and self._budget(regions) < CHUNK_BYTES

    def _budget(self, regions: int) -> int:
        """``piece_budget`` of an input of ``regions`` whole scan windows (batch included)."""
        return piece_budget(self._tokens(regions))

    def forward_features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x (B, 3, H, W)`` → pooled CLS ``(B, num_features)``.

        ``x`` is normalised with the ImageNet mean and std, or raw RGB as ``torch.uint8`` (0–255),
        which is normalised here the same way: a slide then costs its holder 3 bytes per pixel
        instead of 12.

        ``mask (B, H, W)``, optional, marks pixels to treat as padding (e.g. several slides of
        different sizes padded onto one canvas); padding to a multiple of the scan window is
        handled without it.
        """
        cls, real = self._final_cls(x, mask)
        w = real.unsqueeze(-1).to(cls.dtype)  # (B, n_final, 1)
        return (cls * w).sum(1) / w.sum(1).clamp(min=1)  # (B, C)

    @torch.no_grad()
    def region_tokens(self, x: Tensor, mask: Tensor | None = None) -> RegionTokens:
        """The final region CLS tokens that ``forward_features`` averages, and which initial
        regions each of them holds: Region Fusion's choices are recorded layer by layer and
        composed (as ToMe traces the source of merged tokens). Without gradient."""
        slots: list[Tensor] = []
        cls, real = self._final_cls(x, mask, slots)
        grid = region_grid(x.shape[2], x.shape[3], self.cfg.scan_window)
        source = torch.arange(grid[0] * grid[1], device=cls.device).expand(x.shape[0], -1)
        for slot in slots:
            source = slot.gather(1, source)  # (B, n0)
        return RegionTokens(cls, real, source, grid, self.cfg.scan_window)

    def _final_cls(self, x: Tensor, mask: Tensor | None, slots: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Normed final CLS tokens ``(B, n_final, C)`` and which of them hold real pixels ``(B, n_final)``."""
        B, _, H, W = x.shape
        n_rows, n_cols = region_grid(H, W, self.cfg.scan_window)
        n0 = n_rows * n_cols
        cls = self.cls_token.expand(B, n0, -1)  # (B, n, 3)
        streaming = self.streams(B * n0)
        segment = self.segment if streaming and torch.is_grad_enabled() else 1

        def regions(x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
            tokens, valid = image_to_regions(x, self.cfg.scan_window, mask)  # (B, n, s, s, 3)
            if x.dtype == torch.uint8:
                return normalise_rgb(tokens, valid, self.act_dtype), valid
            return tokens.to(self.act_dtype), valid

        release = self.releases_pieces(B * n0)

        def run(first: int, tokens: Tensor, cls: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            for layer in self.layers[first: first + segment]:
                k = self._merge_count(n0, tokens.shape[1])
                tokens, cls, valid = layer(tokens, cls, valid, k, self.layer_chunk(layer, B * n0), streaming, release,
                                           slots)
            return tokens, cls, valid

        def run_first(x: Tensor, mask: Tensor | None, cls: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            tokens, valid = regions(x, mask)
            return run(0, tokens, cls, valid)

        for first in range(0, self.cfg.depth, segment):
            if segment > 1 and first == 0:
                # the first segment starts from the image the caller holds anyway: its region
                # grid (2 bytes per pixel and channel in bf16, and the validity mask) is not
                # kept but rebuilt with the segment in backward
                tokens, cls, valid = checkpoint(run_first, x, mask, cls, use_reentrant=False)
            elif segment > 1:  # keep only this segment's input; recompute its layers in backward
                tokens, cls, valid = checkpoint(run, first, tokens, cls, valid, use_reentrant=False)
            else:
                if first == 0:
                    tokens, valid = regions(x, mask)
                tokens, cls, valid = run(first, tokens, cls, valid)
        return self.norm(cls), valid.flatten(2).any(-1)  # (B, n_final, C), (B, n_final)

    def forward_head(self, feats: Tensor) -> Tensor:
        return self.head(feats)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.forward_head(self.forward_features(x, mask))

    # -- cost before running ----------------------------------------------------------------------

    def _merge_count(self, n0: int, n: int) -> int:
        """Regions a layer's Region Fusion removes, ``n0`` regions at the start and ``n`` now."""
        return merge_count(n0, self.cfg.alpha, self.cfg.depth, n, self.cfg.fusion_k_from)

    def plan(self, height: int, width: int) -> list[PlanRow]:
        """One row per layer for an ``height × width`` input, without running the network."""
        s = self.cfg.scan_window
        n_rows, n_cols = region_grid(height, width, s)
        n0 = n = n_rows * n_cols
        h = w = s
        rows = []
        for row in self.cfg.rows:
            seq_len = n * (h * w + 1)
            n -= self._merge_count(n0, n)
            rows.append(PlanRow(row.layer, h, w, row.channels, n, seq_len))
            if row.expansion is not None:
                h, w = (h, w // 2) if row.expansion.axis == "h" else (h // 2, w)
        return rows


def list_models() -> list[str]:
    """Names ``create_model`` accepts."""
    return sorted(CONFIGS)


_CONFIG_FIELDS = ("alpha", "scan_window", "d_state", "d_conv", "expand", "fusion_k_from", "fusion_partition",
                  "bidirectional_merge")


def create_model(name: str, num_classes: int = 1000, **overrides: object) -> PixelMamba:
    """Build ``pixelmamba-6m`` or ``pixelmamba-21m``.

    Overrides: architecture fields of ``PixelMambaConfig`` (``alpha``, ``scan_window``,
    ``d_state``, ``d_conv``, ``expand``, ``fusion_k_from``, ``fusion_partition``,
    ``bidirectional_merge``) and the runtime options of ``PixelMamba``
    (``chunk_size``, ``checkpointing``, ``act_dtype``, ``backend``, ``segment``).
    """
    if name not in CONFIGS:
        raise ValueError(f"unknown Pixel-Mamba model {name!r}; choose one of {list_models()}")
    cfg_over = {k: overrides.pop(k) for k in _CONFIG_FIELDS if k in overrides}
    cfg = replace(CONFIGS[name], **cfg_over)  # re-validates (e.g. scan_window % 32)
    model = PixelMamba(cfg, num_classes, **overrides)  # type: ignore[arg-type]
    logger.debug("built %s (%s), %d parameters", name, cfg_over or "defaults",
                 sum(p.numel() for p in model.parameters()))
    return model
