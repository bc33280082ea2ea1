"""A Pixel-Mamba block that streams its sequence in pieces and keeps only its input for backward.

Why by hand: ``torch.utils.checkpoint`` around a layer keeps the layer input, but when the layer
is recomputed in backward every full-length intermediate comes back at once (the serialized
sequence, the RMSNorm output that the mixer's pieces read, the pieces' outputs, their
concatenation, the deserialized grid and their gradients): several copies of the layer's
activations, which is most of the peak memory on a slide. This autograd ``Function`` never builds
a full-length intermediate. It reads the tokens of each piece straight from the region grid (zigzag
order and the middle CLS are index arithmetic, ``SeqIndex``), runs RMSNorm → bidirectional mixer →
residual on the piece, and writes the result straight into the output grid. What it keeps for
backward is its input (a reference, in whatever dtype the caller stores it) and the SSM states at
the piece boundaries: ``2 · (L / c) · d_inner · d_state`` floats.

The bidirectional scan makes every output depend on every input, so the pieces are linked by two
state chains: the forward branch's state ``h_f[i]`` entering piece ``i`` from the left and the
backward branch's state ``h_b[i+1]`` entering it from the right. Forward: one pass left to right
computes ``h_f`` (forward branch only), one pass right to left computes the outputs and ``h_b``.
Backward: the gradient of ``h_f`` flows right to left and that of ``h_b`` left to right, so it
takes two passes too. First, right to left, the forward branch of each piece is recomputed to
carry the gradient ``g_hf[i]`` of the state entering it back to the start (from the piece's
output, whose forward-branch share is affine in ``y_f``, and from ``h_f[i+1]``); these are
states, ``d_inner · d_state`` floats per piece. Then, left to right, each piece is recomputed
with autograd and pulled back from all three of its outputs at once (its output, ``h_b[i]``
with the gradient the piece before it handed on, ``h_f[i+1]`` with ``g_hf[i+1]``) into its
input, the parameters and ``h_b[i+1]`` (handed to the next piece). A position's input gradient
is complete once the pieces whose conv halo reaches it are done, so it is summed in a buffer of
about one piece and written once, in the input's dtype: there is no full-length float32
gradient; where the caller owns the output gradient (``reuse_grad``) the input gradient is
written into it, since every position of it has been read by then. Where the tokens need no
gradient (layer 1, fed an image) none is made for them, and where the CLS does not either,
only the parameters' gradients are computed. Every piece is thus recomputed twice at most, as with
per-piece checkpointing, and the result equals the unstreamed block up to float rounding (tests
compare gradients, in float64 to 1e-9).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .serialize import cls_position

_release_hook: Callable[[], object] | None = None


def set_release_hook(hook: Callable[[], object] | None) -> Callable[[], object] | None:
    """Call ``hook()`` whenever a stage of the streamed path starts: each of a streamed block's
    sweeps over its pieces (two in forward, two in backward) and each pass of Region Fusion and
    Token Expansion over their groups (``layers.fuse_and_expand``, forward and backward); and,
    for blocks called with ``release_pieces``, before every piece after the first of the
    backward's second sweep, where the peak is (each piece is recomputed and differentiated
    there: its autograd graph is the largest working set of all).
    At those points the previous stage's or piece's temporaries are all freed, so this is where a
    caller can hand the allocator's free pages back to the system (``bench`` does: glibc keeps
    freed heap pages resident, several MB per stage at a piece size of a few MB, and the next
    piece's allocations land on other, released pages; ``bench/engine/memory.py``). Process-wide, like
    the allocator it serves; ``None`` removes it. Returns the previous hook."""
    global _release_hook
    previous, _release_hook = _release_hook, hook
    return previous


def stage_start() -> None:
    """A stage of the streamed path starts (see ``set_release_hook``)."""
    if _release_hook is not None:
        _release_hook()


@dataclass(frozen=True)
class SeqIndex:
    """Where each position of the serialized sequence lives in the region grid.

    ``n`` regions of ``h × w`` tokens; position ``p`` is in region ``p // (h*w+1)``; inside it,
    the middle slot is the CLS token and the others follow the zigzag (``serialize``'s order).
    """

    n: int
    h: int
    w: int

    @property
    def length(self) -> int:
        return self.n * (self.h * self.w + 1)

    def locate(self, lo: int, hi: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """For positions ``lo..hi-1``: flat token index into ``(B, n*h*w, C)`` (0 at CLS slots),
        region index (for CLS slots), and the CLS mask."""
        hw = self.h * self.w
        p = torch.arange(lo, hi, device=device)
        region, j = p // (hw + 1), p % (hw + 1)
        mid = cls_position(self.h, self.w)
        is_cls = j == mid
        t = j - (j > mid).long()  # position in the region's zigzag order
        row, col = t // self.w, t % self.w
        col = torch.where(row % 2 == 1, self.w - 1 - col, col)
        tok = torch.where(is_cls, torch.zeros_like(p), region * hw + row * self.w + col)
        return tok, region, is_cls


def _compute_dtype(flat: Tensor, cls: Tensor) -> torch.dtype:
    """Pieces compute in float32 (float64 when the inputs are float64, as the tests use)."""
    return torch.promote_types(torch.promote_types(flat.dtype, cls.dtype), torch.float32)


def _gather(flat: Tensor, cls: Tensor, where: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """Sequence positions ``where`` of (tokens ``(B, N, C)``, cls ``(B, n, C)``) → ``(B, l, C)``
    in the compute dtype."""
    tok, region, is_cls = where
    dtype = _compute_dtype(flat, cls)
    x = flat.index_select(1, tok).to(dtype)
    c = cls.index_select(1, region).to(dtype)
    return torch.where(is_cls[None, :, None], c, x)


def _pieces(length: int, chunk: int | None) -> list[tuple[int, int]]:
    c = length if chunk is None else max(1, int(chunk))
    return [(s, min(s + c, length)) for s in range(0, length, c)]


def _state_store(mixer, batch: int, count: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``count`` SSM states ``(batch, d_inner, d_state)`` in one allocation."""
    return torch.empty(count, batch, mixer.d_inner, mixer.d_state, dtype=dtype, device=device)


def _states(store: Tensor) -> tuple[list[Tensor | None], list[Tensor | None]]:
    """``h_f`` (state entering piece ``i`` from the left) and ``h_b`` (entering it from the
    right) as lists of views of ``_run_forward``'s store, ``None`` at the sequence ends."""
    n = store.shape[0] // 2
    views = store.unbind(0)
    return [None, *views[: n - 1]], [*views[n:], None]


def _run_forward(block, flat, cls, valid_flat, idx: SeqIndex, chunk, keep_states: bool,
                 out_dtype: torch.dtype = torch.float32):
    """The streamed block without autograd: output grid ``(B, n*h*w, C)`` in ``out_dtype`` and
    CLS ``(B, n, C)`` in float32, padded tokens zeroed, and the boundary states in one tensor
    (``_states``; the backward branch's only with ``keep_states``)."""
    mixer, norm = block.mixer, block.norm
    k = mixer.d_conv - 1
    L, dev = idx.length, flat.device
    bounds = _pieces(L, chunk)
    # Everything that outlives a piece is allocated before the piece loops (the boundary states
    # too): a small long-lived tensor allocated among a piece's temporaries pins glibc's heap
    # top, and the heap then grows by a piece's working set each time instead of reusing it.
    out = torch.empty(flat.shape, dtype=out_dtype, device=dev)
    cdt = _compute_dtype(flat, cls)
    out_cls = torch.empty(cls.shape, dtype=cdt, device=dev)
    store = _state_store(mixer, flat.shape[0], 2 * len(bounds), dev, cdt)
    states = store.unbind(0)  # the views are made now too
    h_f: list[Tensor | None] = [None]
    stage_start()
    for i, (s, e) in enumerate(bounds[:-1]):
        lo = max(0, s - k)
        x = _gather(flat, cls, idx.locate(lo, e, dev))
        h_f.append(states[i].copy_(mixer.forward_piece_state(norm(x), k - (s - lo), h_f[-1])))
    h_b: list[Tensor | None] = [None] * (len(bounds) + 1)
    stage_start()
    for i in range(len(bounds) - 1, -1, -1):
        s, e = bounds[i]
        lo, hi = max(0, s - k), min(L, e + k)
        x = _gather(flat, cls, idx.locate(lo, hi, dev))
        y, hb = mixer.piece(norm(x), k - (s - lo), k - (hi - e), h_f[i], h_b[i + 1])
        h_b[i] = states[len(bounds) + i].copy_(hb) if keep_states else hb
        y = x[:, s - lo: e - lo] + y  # residual (Eq. 1)
        tok, region, is_cls = idx.locate(s, e, dev)
        keep = ~is_cls
        y_tok = y[:, keep] * valid_flat.index_select(1, tok[keep]).unsqueeze(-1)
        out.index_copy_(1, tok[keep], y_tok.to(out_dtype))
        out_cls.index_copy_(1, region[is_cls], y[:, is_cls])
    return out, out_cls, store


class _StreamedBlock(torch.autograd.Function):
    @staticmethod
    def forward(ctx, flat, cls, valid_flat, block, idx, chunk, out_dtype, reuse_grad, release_pieces,  # noqa: D102
                *params):
        out, out_cls, store = _run_forward(block, flat, cls, valid_flat, idx, chunk, True, out_dtype)
        # saved, not a ctx attribute: autograd frees saved tensors once backward has used them
        ctx.save_for_backward(flat, cls, valid_flat, store)
        ctx.block, ctx.idx, ctx.chunk = block, idx, chunk
        ctx.reuse_grad, ctx.release_pieces = reuse_grad, release_pieces
        return out, out_cls

    @staticmethod
    def backward(ctx, g_out, g_out_cls):  # noqa: D102
        flat, cls, valid_flat, store = ctx.saved_tensors
        block, idx = ctx.block, ctx.idx
        h_f, h_b = _states(store)
        mixer, norm = block.mixer, block.norm
        params = [p for p in block.parameters()]
        trainable = [p for p in params if p.requires_grad]
        k, L, dev = mixer.d_conv - 1, idx.length, flat.device
        bounds = _pieces(L, ctx.chunk)
        last = len(bounds) - 1
        want_x = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        # Parameter gradients: with one piece, the piece's own (a zero-filled accumulator would be
        # a second copy of the layer's parameters, 4 MB at 384 channels, the peak of the narrow
        # late layers of a small slide); with several, accumulators allocated before the loops
        # (see _run_forward on allocations that outlive a piece)
        g_params: list[Tensor | None] = (
            [None] * len(trainable) if len(bounds) == 1 else [torch.zeros_like(p) for p in trainable])
        cdt = _compute_dtype(flat, cls)
        if g_out is None:  # (an output that does not reach the loss: one zero of its dtype, broadcast)
            g_out = torch.zeros(1, 1, 1, dtype=cdt, device=dev).expand(flat.shape)
        if g_out_cls is None:
            g_out_cls = torch.zeros(1, 1, 1, dtype=cdt, device=dev).expand(cls.shape)

        def leaf(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().requires_grad_(True)

        def g_y_of(s: int, e: int) -> Tensor:
            """Gradient of the block's output at positions ``s..e-1`` (padding masked), fp32."""
            tok, region, is_cls = idx.locate(s, e, dev)
            return torch.where(
                is_cls[None, :, None], g_out_cls.index_select(1, region),
                g_out.index_select(1, tok).to(cdt) * valid_flat.index_select(1, tok).unsqueeze(-1),
            )

        # Right to left: the gradient g_hf[i] of the forward-branch state entering piece i, from
        # piece i's output and (through h_f[i+1] = F(piece i, h_f[i])) from everything after.
        g_hf_store = _state_store(mixer, flat.shape[0], len(bounds), dev, cdt).unbind(0)  # see _run_forward
        g_hf: list[Tensor | None] = [None] * (len(bounds) + 1)
        with torch.enable_grad():
            stage_start()
            for i in range(last, 0, -1):
                s, e = bounds[i]
                lo = max(0, s - k)
                with torch.no_grad():
                    xn = norm(_gather(flat, cls, idx.locate(lo, e, dev)))
                hf = leaf(h_f[i])
                share, state = mixer.forward_piece_share(xn, k - (s - lo), hf)
                outs, gouts = [share], [g_y_of(s, e)]
                if g_hf[i + 1] is not None:
                    outs.append(state)
                    gouts.append(g_hf[i + 1])
                (g,) = torch.autograd.grad(outs, [hf], gouts)
                g_hf[i] = g_hf_store[i].copy_(g)

        # Left to right: each piece recomputed once more with autograd and pulled back from all
        # three of its outputs (its part of the output, the backward-branch state it hands to
        # the piece before, the forward-branch state it hands to the piece after). The input
        # gradient of a sequence position gets contributions from its own piece and from the
        # conv halos of its neighbours; it is summed in float32 in a short buffer (``pending``,
        # positions ``p0..``) and written once, in the input's dtype, when no later piece can
        # reach it: no full-length float32 buffer.
        # (the tokens of layer 1 come from the image and need none: only the CLS gradient then)
        g_flat = None
        if ctx.needs_input_grad[0]:
            # The output gradient is read piece by piece, left to right (and whole in the first
            # sweep, which is over); a position's input gradient is written once no later piece
            # reads there, so it can take the output gradient's place when nothing else holds that
            # tensor (``reuse_grad``: the caller knows): one layer-sized grid less.
            reuse = (ctx.reuse_grad and g_out.dtype == flat.dtype and g_out.shape == flat.shape
                     and g_out.is_contiguous() and g_out.stride() == flat.stride())
            g_flat = g_out if reuse else torch.empty(flat.shape, dtype=flat.dtype, device=dev)
        g_cls = torch.zeros(cls.shape, dtype=cdt, device=dev) if ctx.needs_input_grad[1] else None
        # ``pending`` holds positions ``p0 .. p0 + width``; a piece starts at ``p0`` (the previous
        # one flushed up to its start) and spans at most the longest piece plus both halos
        width = min(L, max(e - s for s, e in bounds) + 2 * k)
        pending = torch.zeros(flat.shape[0], width, flat.shape[2], dtype=cdt, device=dev) if want_x else None
        g_hb_store = _state_store(mixer, flat.shape[0], 2, dev, cdt).unbind(0)  # piece to piece, in turn
        p0 = 0

        def flush(upto: int, end: int) -> None:
            """Write positions ``p0..upto-1`` (complete) and move ``upto..end-1`` to the front."""
            nonlocal p0
            if upto <= p0:
                return
            tok, region, is_cls = idx.locate(p0, upto, dev)
            g = pending[:, : upto - p0]
            keep = ~is_cls
            if g_flat is not None:
                g_flat.index_copy_(1, tok[keep], g[:, keep].to(g_flat.dtype))
            if g_cls is not None:
                g_cls.index_copy_(1, region[is_cls], g[:, is_cls])
            rest = pending[:, upto - p0: end - p0].clone()  # (the halo: 2 (d_conv - 1) positions)
            pending[:, : end - p0].zero_()
            pending[:, : rest.shape[1]] = rest
            p0 = upto

        g_hb = None  # gradient of the backward-branch state that the current piece returns
        with torch.enable_grad():
            stage_start()
            for i, (s, e) in enumerate(bounds):
                if i and ctx.release_pieces:
                    stage_start()  # (see set_release_hook: the previous piece's graph is freed)
                lo, hi = max(0, s - k), min(L, e + k)
                x = _gather(flat, cls, idx.locate(lo, hi, dev)).detach().requires_grad_(want_x)
                hb = leaf(h_b[i + 1])
                hf = None if h_f[i] is None else h_f[i].detach()
                y, hb_out, *hf_out = mixer.piece(norm(x), k - (s - lo), k - (hi - e), hf, hb,
                                                  forward_state=i < last)
                y = x[:, s - lo: e - lo] + y
                outs, gouts = [y], [g_y_of(s, e)]
                if g_hb is not None:
                    outs.append(hb_out)
                    gouts.append(g_hb)
                if i < last:
                    outs.append(hf_out[0])
                    gouts.append(g_hf[i + 1])
                ins = ([x] if want_x else []) + ([hb] if hb is not None else []) + trainable
                grads = list(torch.autograd.grad(outs, ins, gouts, allow_unused=True))
                if want_x:
                    g_x = grads.pop(0)
                    pending[:, : hi - lo] += g_x  # (lo == p0)
                    flush(L if i == last else max(p0, e - k), hi)  # the next piece starts at e - k
                g_hb = g_hb_store[i % 2].copy_(grads.pop(0)) if hb is not None else None
                for j, g in enumerate(grads):
                    if g is None:
                        continue
                    if g_params[j] is None:
                        g_params[j] = g
                    else:
                        g_params[j] += g
        g_param_out = iter(g if g is not None else torch.zeros_like(p) for g, p in zip(g_params, trainable))
        return (
            g_flat,
            None if g_cls is None else g_cls.to(cls.dtype),
            None, None, None, None, None, None, None,
            *[next(g_param_out) if p.requires_grad else None for p in params],
        )


def streamed_block(block, tokens: Tensor, cls: Tensor, valid: Tensor, chunk: int | None,
                   out_dtype: torch.dtype = torch.float32, reuse_grad: bool = False,
                   release_pieces: bool = False) -> tuple[Tensor, Tensor]:
    """``x + mixer(norm(x))`` over the serialized sequence of region grids, streamed.

    ``tokens (B, n, h, w, C)`` in any float dtype (kept as is for backward), ``cls (B, n, C)``,
    ``valid (B, n, h, w)``; returns ``tokens`` in ``out_dtype`` (padding zeroed) and float32
    ``cls``. ``chunk``: tokens per piece (None: the whole sequence in one piece). A bfloat16
    ``out_dtype`` (the model's bf16 storage) halves the block's output and the gradient that
    comes back to it; every piece still computes in float32. ``reuse_grad``: the caller
    guarantees that nothing but this block's backward holds the gradient of the returned tokens
    (no hook keeps it, no other use of them adds to it: ``PixelMambaLayer`` hands them only to
    ``fuse_and_expand``, whose backward makes a fresh one); the backward then writes the input
    gradient into it (same dtype and shape) instead of into a new grid. ``release_pieces``: call
    the release hook (``set_release_hook``) between the pieces of the backward's second sweep too.
    """
    B, n, h, w, C = tokens.shape
    idx = SeqIndex(n, h, w)
    flat = tokens.reshape(B, n * h * w, C)
    valid_flat = valid.reshape(B, n * h * w)
    params = list(block.parameters())
    needs_grad = torch.is_grad_enabled() and (
        tokens.requires_grad or cls.requires_grad or any(p.requires_grad for p in params)
    )
    if needs_grad:
        out, out_cls = _StreamedBlock.apply(flat, cls, valid_flat, block, idx, chunk, out_dtype, reuse_grad,
                                            release_pieces, *params)
    else:
        out, out_cls, _ = _run_forward(block, flat, cls, valid_flat, idx, chunk, False, out_dtype)
    return out.view(B, n, h, w, C), out_cls
