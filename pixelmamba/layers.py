"""The three parts of a Pixel-Mamba layer (paper Sec. 3.3, Fig. 2c and Fig. 3).

Qiu, Chao, Lin et al., "From Pixels to Gigapixels: Bridging Local Inductive Bias and Long-Range
Dependencies with Pixel-Mamba". A layer is: bidirectional Mamba block over the whole serialized
image (Eq. 1) → Region Fusion → optional Token Expansion.

Tensors between the parts are region grids (see ``serialize``): ``tokens (B, n, h, w, C)``,
``cls (B, n, C)`` and ``valid (B, n, h, w)`` (False on padding). Padded tokens are kept at zero
outside the Mamba block, and every average below ignores them.

Choices the paper leaves open, and what this implementation does:

* Shift-merge pads the first row/column with **zeros** (the paper says "padding the first row").
* Token Expansion joins the pairs (0, 1), (2, 3), …; a ``cat`` puts the top/left token's channels
  first. An ``avg`` of a real token and a padded one is the real token (mask-aware mean).
* **CLS through a channel change**: the CLS token is joined with itself, as if both members of
  the pair were the CLS — ``cat`` duplicates it ([cls, cls], 2C), ``avg`` leaves it unchanged.
  This adds no parameters (the paper's counts leave no room for a projection) and keeps the CLS
  cosine similarities that Region Fusion ranks on unchanged across the expansion.
* **Gallery/probe assignment** (``partition``): by default by alternation in scan order — even
  positions are the gallery, odd positions the probe (as ToMe's bipartite matching), so both sets
  cover the whole slide and for odd ``n`` the gallery has one more region; two regions of the same
  parity never merge. ``"halves"``: the first ``ceil(n/2)`` regions of the scan order are the
  gallery, the rest the probe; two regions of the same half never merge. Each probe region picks its most similar gallery
  region; the ``k`` probes with the highest similarity are merged into their picks. When several
  probes pick the same gallery region, the whole group is averaged (plain mean, as the paper
  averages a pair). The merged region keeps the gallery region's place in the scan order, and the
  survivors keep their relative order.
* ``k = ceil(alpha * n0 / depth)`` with ``n0`` the *initial* region count (``k_from="initial"``,
  the default) or ``ceil(alpha * n / depth)`` with ``n`` the layer's current count
  (``"current"``), capped so that at most one merge per probe happens and at least one region
  remains (``merge_count``).
* Padding in Region Fusion: a region with no real token is a *padding region*. A padding region
  is never paired with a real one while any other pair is available (pairs of two padding regions
  rank first, being free, then real pairs by similarity); and since every average is weighted by
  the validity mask, even a forced padding-with-real merge leaves the real region's values
  exactly unchanged. Such regions only arise when the caller passes a ``mask`` (e.g. slides of
  different sizes on one canvas): padding to a multiple of the window only pads *inside* edge
  regions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .configs import TokenExpansionSpec
from .mixer import BiMambaMixer
from .streaming import stage_start


def shift_merge(tokens: Tensor, axis: str) -> Tensor:
    """Average every token with its predecessor along ``axis`` ("h": left neighbour, "v": upper
    neighbour); the first column/row is averaged with a zero pad. ``(B, n, h, w, C)`` in and out.

    This is what makes the later pairwise join overlap: after it, the pair (2j, 2j+1) has seen
    pixels 2j-1 .. 2j+1, like a stride-2 convolution of width 3.
    """
    dim = tokens.dim() - (2 if axis == "h" else 3)
    shifted = F.pad(tokens.narrow(dim, 0, tokens.shape[dim] - 1), _pad_before(dim, tokens.dim()))
    return (tokens + shifted) / 2


def _pad_before(dim: int, ndim: int) -> tuple[int, ...]:
    """``F.pad`` spec that adds one zero slice before index 0 of ``dim``."""
    spec = [0, 0] * (ndim - dim)  # F.pad lists (before, after) pairs from the last dim backwards
    spec[-2] = 1
    return tuple(spec)


def token_expansion(
    tokens: Tensor, cls: Tensor, valid: Tensor, spec: TokenExpansionSpec
) -> tuple[Tensor, Tensor, Tensor]:
    """Shift-merge, then join neighbouring pairs along ``spec.axis`` by ``spec.join``.

    ``(B, n, h, w, C)`` → ``(B, n, h, w/2, C')`` for "h", ``(B, n, h/2, w, C')`` for "v", with
    ``C' = 2C`` for "cat" and ``C`` for "avg". Returns masked tokens, CLS and the new validity
    (a joined token is real if either member is).
    """
    out, out_valid = expand_tokens(tokens, valid, spec)
    if spec.join == "cat":
        cls = torch.cat([cls, cls], dim=-1)
    return out, cls, out_valid


def expand_valid(valid: Tensor, spec: TokenExpansionSpec) -> Tensor:
    """Validity after Token Expansion: a joined token is real if either member is."""
    *lead, h, w = valid.shape
    if spec.axis == "h":
        return valid.view(*lead, h, w // 2, 2).any(-1)
    return valid.view(*lead, h // 2, 2, w).any(-2)


def expand_tokens(tokens: Tensor, valid: Tensor, spec: TokenExpansionSpec) -> tuple[Tensor, Tensor]:
    """The token part of ``token_expansion`` (any leading dims before ``h, w, C``)."""
    *lead, h, w, C = tokens.shape
    if spec.axis == "h":
        if w % 2:
            raise ValueError(f"horizontal expansion needs an even token width, got {w}")
        pairs = shift_merge(tokens, "h").view(*lead, h, w // 2, 2, C)  # (..., h, w/2, 2, C)
        pair_valid = valid.view(*lead, h, w // 2, 2)
    else:
        if h % 2:
            raise ValueError(f"vertical expansion needs an even token height, got {h}")
        pairs = shift_merge(tokens, "v").view(*lead, h // 2, 2, w, C).transpose(-2, -3)
        pair_valid = valid.view(*lead, h // 2, 2, w).transpose(-1, -2)  # (..., h/2, w, 2)
    member = pair_valid.unsqueeze(-1)
    # pads become zero again (shift-merge may have moved values into them); `where` keeps only
    # the boolean mask for backward, a multiplication would keep a float copy of it
    pairs = torch.where(member, pairs, 0)
    if spec.join == "cat":
        out = pairs.flatten(-2)  # (..., h', w', 2C): [first member, second member]
    else:
        count = member.sum(-2, dtype=torch.uint8).clamp(min=1)  # 1 byte per token kept, not 4
        out = pairs.sum(-2) / count  # (..., h', w', C) mask-aware mean
    return out, pair_valid.any(-1)


def merge_count(n_initial: int, alpha: float, depth: int, n_current: int, k_from: str = "initial") -> int:
    """Regions Region Fusion removes at a layer: ``ceil(alpha * n / depth)`` with ``n`` the initial
    region count (``k_from="initial"``) or the current one (``"current"``), at most one per probe
    region (``n_current // 2``), hence never the last region."""
    if k_from not in ("initial", "current"):
        raise ValueError(f"k_from must be 'initial' or 'current', got {k_from!r}")
    n = n_initial if k_from == "initial" else n_current
    return min(math.ceil(alpha * n / depth), n_current // 2)


def gallery_probe(n: int, partition: str = "alternate", device: torch.device | None = None
                  ) -> tuple[Tensor, Tensor]:
    """Scan-order positions of the gallery and the probe sets of ``n`` regions (gallery the larger
    for odd ``n``)."""
    if partition == "alternate":
        return torch.arange(0, n, 2, device=device), torch.arange(1, n, 2, device=device)
    if partition == "halves":
        g = (n + 1) // 2
        return torch.arange(0, g, device=device), torch.arange(g, n, device=device)
    raise ValueError(f"partition must be 'alternate' or 'halves', got {partition!r}")


# Region Fusion ranks candidate pairs on these scores; real pairs score their cosine in [-1, 1].
_PAD_PAIR_SCORE = 2.0  # two padding regions: merging them costs nothing, do it first
_MIXED_PAIR_SCORE = -2.0  # padding with real: only when nothing else is left (and then harmless)


def region_fusion(
    tokens: Tensor, cls: Tensor, valid: Tensor, k: int, partition: str = "alternate"
) -> tuple[Tensor, Tensor, Tensor]:
    """Merge the ``k`` most similar (probe → gallery) region pairs by averaging their tokens.

    Similarity is the cosine of the CLS tokens, computed without gradient (the choice of pairs
    is discrete, as in ToMe); gradients flow through the averages. ``n`` regions in, ``n - k``
    out, per sample of the batch.
    """
    B, n, h, w, C = tokens.shape
    if k == 0:
        return tokens, cls, valid
    slot, region_valid = fusion_slots(cls, valid, k, partition)
    tokens_flat = tokens.view(B, n, h * w, C)
    out_tokens = _group_mean(tokens_flat, valid.view(B, n, h * w, 1), slot, n - k)
    out_cls = _group_mean(cls, region_valid[..., None], slot, n - k)  # (B, n-k, C)
    out_valid = _group_any(valid, slot, n - k)
    return out_tokens.view(B, n - k, h, w, C), out_cls, out_valid


def fusion_slots(cls: Tensor, valid: Tensor, k: int, partition: str = "alternate") -> tuple[Tensor, Tensor]:
    """Region Fusion's discrete part: the output slot ``(B, n)`` every region goes to (``n - k``
    slots, in scan order) and which regions hold real tokens ``(B, n)``."""
    B, n = valid.shape[:2]
    if not 0 < k <= n // 2:
        raise ValueError(f"cannot merge {k} of {n} regions (at most one per probe, n // 2)")
    device = valid.device
    gallery, probe = gallery_probe(n, partition, device)
    region_valid = valid.flatten(2).any(-1)  # (B, n)
    with torch.no_grad():
        unit = F.normalize(cls.float(), dim=-1)
        score = unit[:, probe] @ unit[:, gallery].transpose(1, 2)  # (B, P, G) cosine
        pv, gv = region_valid[:, probe, None], region_valid[:, gallery, None].transpose(1, 2)
        score = torch.where(pv & gv, score, torch.full_like(score, _MIXED_PAIR_SCORE))
        score = torch.where(~pv & ~gv, torch.full_like(score, _PAD_PAIR_SCORE), score)
        best_score, best_gallery = score.max(dim=-1)  # (B, P)
        chosen = best_score.topk(k, dim=-1).indices  # (B, k) probe slots to merge away
        # Where every region goes: itself, or (merged probes) their gallery partner.
        target = torch.arange(n, device=device).expand(B, n).clone()  # (B, n)
        target.scatter_(1, probe[chosen], gallery[best_gallery.gather(1, chosen)])
        keep = torch.ones(B, n, dtype=torch.bool, device=device)
        keep.scatter_(1, probe[chosen], False)
        slot = (keep.cumsum(1) - 1).gather(1, target)  # (B, n) output slot of every region
    return slot, region_valid


def _group_any(valid: Tensor, slot: Tensor, n_out: int) -> Tensor:
    """Validity after fusion ``(B, n_out, h, w)``: a token is real if any member's is."""
    B, n, h, w = valid.shape
    out = torch.zeros(B, n_out, h * w, dtype=torch.bool, device=valid.device)
    out.scatter_reduce_(1, slot[..., None].expand(B, n, h * w), valid.view(B, n, h * w), "amax")
    return out.view(B, n_out, h, w)


# fuse_and_expand: float32 bytes of input per step (groups of output regions, cut into slabs of
# rows or columns when one group is larger); the step's transients are about four times this
FUSE_CHUNK_BYTES = 1 << 16


def fuse_and_expand(
    tokens: Tensor, cls: Tensor, valid: Tensor, k: int, spec: TokenExpansionSpec | None,
    store_dtype: torch.dtype, partition: str = "alternate",
) -> tuple[Tensor, Tensor, Tensor]:
    """``region_fusion`` then (if ``spec``) ``token_expansion``, with the tokens in ``store_dtype``
    — the same values (float32 compute), but without their full-size intermediates.

    Composed from the two functions, autograd keeps nothing big, but forward and backward pass
    through four or five float32 copies of the layer's tokens at once (the group sums, the masked
    copies, shift-merge's padded copy and sum, the cast); on a slide those transients, not what
    is kept, set the peak. Here the output is built a few regions at a time, a slab of rows or
    columns of a region when one is larger than ``FUSE_CHUNK_BYTES`` (``_FuseExpand``): the
    only full-size tensors are the input, the output and, in backward, the two gradients.
    """
    B, n, h, w, C = tokens.shape
    if k:
        slot, region_valid = fusion_slots(cls, valid, k, partition)
        cls = _group_mean(cls, region_valid[..., None], slot, n - k)
        out_valid = _group_any(valid, slot, n - k)
    else:
        slot = torch.arange(n, device=tokens.device).expand(B, n)
        out_valid = valid
    if spec is not None and spec.join == "cat":
        cls = torch.cat([cls, cls], dim=-1)
    out = _FuseExpand.apply(tokens, valid, out_valid, slot, spec, store_dtype)
    if spec is not None:
        out_valid = expand_valid(out_valid, spec)
    return out, cls, out_valid


def _fuse_groups(n_in: int, n_out: int, per_region: int) -> list[tuple[int, int]]:
    step = max(1, FUSE_CHUNK_BYTES // max(1, per_region * 4 * max(1, n_in // max(1, n_out))))
    return [(o, min(o + step, n_out)) for o in range(0, n_out, step)]


def _slab_dim(spec: TokenExpansionSpec | None) -> int:
    """The axis of ``(regions, h, w, C)`` along which a group is cut into slabs: rows, or columns
    when the expansion joins vertical pairs (each slab then holds whole pairs)."""
    return 2 if spec is not None and spec.axis == "v" else 1


def _slabs(members: int, h: int, w: int, C: int, dim: int) -> list[tuple[int, int]]:
    """Rows (``dim`` 1) or columns (2) of a group of ``members`` input regions ``(h, w, C)``, in
    slabs of about ``FUSE_CHUNK_BYTES`` of float32 input (at least one row or column)."""
    extent, unit = (h, members * w * C * 4) if dim == 1 else (w, members * h * C * 4)
    step = max(1, FUSE_CHUNK_BYTES // max(1, unit))
    return [(a, min(a + step, extent)) for a in range(0, extent, step)]


class _FuseExpand(torch.autograd.Function):
    """Tokens through Region Fusion's group means and Token Expansion, a few output regions at a
    time (a slab of their rows or columns at a time, ``_slabs``); the regions are flattened over
    the batch (slot ``b * n_out + o``). Keeps for backward
    only the boolean masks and the slots. Backward: the expansion's adjoint by autograd on each
    group (it is linear, so the recomputation runs on zeros), then the group means' adjoint."""

    @staticmethod
    def _prepare(valid: Tensor, out_valid: Tensor, slot: Tensor):
        B, n = slot.shape
        n_out = out_valid.shape[1]
        gslot = (slot + torch.arange(B, device=slot.device)[:, None] * n_out).reshape(-1)  # (B*n,)
        order = torch.argsort(gslot, stable=True)  # input regions grouped by slot, in scan order
        starts = torch.searchsorted(gslot[order], torch.arange(B * n_out + 1, device=slot.device))
        return gslot, order, starts

    @staticmethod
    def _group(g0, g1, gslot, order, starts, valid_f, out_valid_f):
        """Input regions of output regions ``g0..g1-1``, their local slot and member masks."""
        idx = order[starts[g0]: starts[g1]]
        local = gslot[idx] - g0
        member = valid_f[idx] | ~out_valid_f[g0:g1][local]  # all members where no member is real
        return idx, local, member

    @staticmethod
    def forward(ctx, tokens, valid, out_valid, slot, spec, store_dtype):  # noqa: D102
        B, n, h, w, C = tokens.shape
        n_out = out_valid.shape[1]
        gslot, order, starts = _FuseExpand._prepare(valid, out_valid, slot)
        flat, valid_f = tokens.reshape(B * n, h, w, C), valid.reshape(B * n, h, w)
        out_valid_f = out_valid.reshape(B * n_out, h, w)
        cdtype = torch.promote_types(tokens.dtype, torch.float32)  # float32 compute (or float64)
        # allocated before the loop: a long-lived tensor among the loop's temporaries would pin
        # glibc's heap top (see streaming._run_forward)
        h2, w2, C2 = h, w, C
        if spec is not None:
            h2, w2 = (h, w // 2) if spec.axis == "h" else (h // 2, w)
            C2 = 2 * C if spec.join == "cat" else C
        out = torch.empty(B * n_out, h2, w2, C2, dtype=store_dtype, device=tokens.device)
        sd = _slab_dim(spec)
        stage_start()
        for g0, g1 in _fuse_groups(B * n, B * n_out, h * w * C):
            idx, local, member = _FuseExpand._group(g0, g1, gslot, order, starts, valid_f, out_valid_f)
            for a, b in _slabs(len(idx), h, w, C, sd):
                m = member.narrow(sd, a, b - a)
                x = torch.where(m[..., None], flat.narrow(sd, a, b - a).index_select(0, idx).to(cdtype), 0)
                y = x.new_zeros(g1 - g0, *x.shape[1:]).index_add_(0, local, x)
                del x
                count = y.new_zeros(g1 - g0, *m.shape[1:]).index_add_(0, local, m.to(y.dtype))
                y.div_(count[..., None])
                if spec is not None:
                    y = expand_tokens(y, out_valid_f[g0:g1].narrow(sd, a, b - a), spec)[0]
                out[g0:g1].narrow(sd, a, b - a).copy_(y)
        ctx.save_for_backward(valid, out_valid, slot)
        ctx.spec, ctx.in_dtype, ctx.in_shape = spec, tokens.dtype, tokens.shape
        return out.view(B, n_out, *out.shape[1:])

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        valid, out_valid, slot = ctx.saved_tensors
        B, n, h, w, C = ctx.in_shape
        n_out = out_valid.shape[1]
        gslot, order, starts = _FuseExpand._prepare(valid, out_valid, slot)
        valid_f, out_valid_f = valid.reshape(B * n, h, w), out_valid.reshape(B * n_out, h, w)
        g_f = g.reshape(B * n_out, *g.shape[2:])
        g_in = torch.empty(B * n, h, w, C, dtype=ctx.in_dtype, device=g.device)
        sd = _slab_dim(ctx.spec)
        stage_start()
        for g0, g1 in _fuse_groups(B * n, B * n_out, h * w * C):
            idx, local, member = _FuseExpand._group(g0, g1, gslot, order, starts, valid_f, out_valid_f)
            for a, b in _slabs(len(idx), h, w, C, sd):
                m = member.narrow(sd, a, b - a)
                g_y = g_f[g0:g1].narrow(sd, a, b - a).to(torch.promote_types(ctx.in_dtype, torch.float32))
                if ctx.spec is not None:
                    with torch.enable_grad():
                        y0 = g_y.new_zeros(g1 - g0, *m.shape[1:], C, requires_grad=True)
                        (g_y,) = torch.autograd.grad(expand_tokens(y0, out_valid_f[g0:g1].narrow(sd, a, b - a),
                                                                   ctx.spec)[0], y0, g_y)
                count = g_y.new_zeros(g1 - g0, *m.shape[1:]).index_add_(0, local, m.to(g_y.dtype))
                g_x = torch.where(m[..., None], (g_y / count[..., None]).index_select(0, local), 0)
                g_in.narrow(sd, a, b - a).index_copy_(0, idx, g_x.to(g_in.dtype))
        return g_in.view(B, n, h, w, C), None, None, None, None, None


def _group_mean(x: Tensor, valid: Tensor, slot: Tensor, n_out: int) -> Tensor:
    """Mean of ``x (B, n, ..., C)`` over the regions that share an output ``slot (B, n)``,
    counting only members whose ``valid (B, n, ..., 1)`` is set; where no member of a group is
    valid the plain mean is taken instead (the value is padding then, but stays finite).

    A hand-written backward (``_GroupMean``) keeps only the boolean mask and the slots: autograd
    would keep a float weight and a float count per token, 8 bytes per token on every layer."""
    return _GroupMean.apply(x, valid, slot, n_out)


def _group_weights(valid: Tensor, slot: Tensor, n_out: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Member mask (valid, or every member of an all-padding group), group sizes, gather index."""
    B, n = slot.shape
    index = slot.view(B, n, *([1] * (valid.dim() - 2)))

    def group_sum(v: Tensor) -> Tensor:
        return v.new_zeros(B, n_out, *v.shape[2:]).scatter_add(1, index.expand_as(v), v)

    weight = valid.to(dtype)
    has_valid = group_sum(weight).gather(1, index.expand_as(weight)) > 0  # per member
    member = valid | ~has_valid
    return member, group_sum(member.to(dtype)), index


class _GroupMean(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, valid, slot, n_out):  # noqa: D102
        member, count, index = _group_weights(valid, slot, n_out, x.dtype)
        summed = x.new_zeros(x.shape[0], n_out, *x.shape[2:])
        summed.scatter_add_(1, index.expand_as(x), torch.where(member, x, 0))
        ctx.save_for_backward(valid, slot)
        ctx.n_out = n_out
        return summed / count

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        valid, slot = ctx.saved_tensors
        member, count, index = _group_weights(valid, slot, ctx.n_out, g.dtype)
        shape = (*slot.shape, *g.shape[2:])
        g_x = (g / count).gather(1, index.expand(shape))
        return torch.where(member, g_x, 0), None, None, None


class PixelMambaBlock(nn.Module):
    """Eq. 1: ``T' = T + Mixer(norm(T))`` with the bidirectional Mamba mixer (``merge="mean"``:
    Vim "v2"; ``"sum"``: Eq. 1's sum with one conv, see ``BiMambaMixer``).

    RMSNorm as in Vim; residual kept in the input dtype (float32 unless the caller chose
    otherwise). ``chunk_size`` streams the sequence through the mixer with carried state.
    """

    def __init__(self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 backend: str = "auto", merge: str = "mean") -> None:
        super().__init__()
        self.norm = nn.RMSNorm(dim, eps=1e-5)
        self.mixer = BiMambaMixer(dim, d_state=d_state, d_conv=d_conv, expand=expand, backend=backend,
                                  merge=merge)

    def forward(self, seq: Tensor, chunk_size: int | None = None) -> Tensor:  # (B, L, C)
        return seq + self.mixer(self.norm(seq), chunk_size=chunk_size)
