"""Pixel-Mamba's protocol options (docs/protocol.md, choices 5-7): each changes what it claims only.

5. ``fusion_k_from``: k = ceil(alpha * n / L) from the initial region count or the current one.
6. ``bidirectional_merge``: Vim v2's mean of two branches with a conv each, or Eq. 1's sum with one conv.
7. ``fusion_partition``: gallery/probe sets alternating in scan order, or the two halves of it.
"""

from __future__ import annotations

import math

import pytest
import torch

from pixelmamba import create_model
from pixelmamba.layers import fusion_slots, gallery_probe, merge_count, region_fusion
from pixelmamba.mixer import BiMambaMixer


# -- 5. k from the initial or the current region count ---------------------------------------------


@pytest.mark.parametrize("n0, n_now, initial, current", [
    (100, 100, 4, 4),  # ceil(0.8 * 100 / 24) = ceil(3.33) both
    (100, 60, 4, 2),  # current: ceil(0.8 * 60 / 24) = ceil(2.0) = 2
    (100, 30, 4, 1),  # ceil(1.0) = 1
    (100, 5, 2, 1),  # initial capped at 5 // 2; current ceil(0.167) = 1
    (378, 378, 13, 13),  # 6000 x 3000 px at a 224 window: 27 x 14 regions
    (378, 100, 13, 4),
])
def test_merge_count_initial_vs_current(n0, n_now, initial, current) -> None:
    assert merge_count(n0, 0.8, 24, n_now) == initial  # the default is the initial count
    assert merge_count(n0, 0.8, 24, n_now, "initial") == initial
    assert merge_count(n0, 0.8, 24, n_now, "current") == current


def _regions_left(n0: int, current: bool, alpha: float = 0.8, depth: int = 24) -> int:
    n = n0
    for _ in range(depth):
        n -= min(math.ceil(alpha * (n if current else n0) / depth), n // 2)
    return n


@pytest.mark.parametrize("h, w, initial, current", [
    (2048, 2048, 4, 36),  # 10 x 10 regions: 100 - 24 * 4 = 4; the current count leaves 36
    (3000, 6000, 66, 160),  # 14 x 27 = 378 regions: 378 - 24 * 13 = 66
])
def test_plan_region_count_after_fusion(h, w, initial, current) -> None:
    assert _regions_left(math.ceil(h / 224) * math.ceil(w / 224), False) == initial
    assert _regions_left(math.ceil(h / 224) * math.ceil(w / 224), True) == current
    with torch.device("meta"):
        m_init = create_model("pixelmamba-6m", num_classes=4)
        m_cur = create_model("pixelmamba-6m", num_classes=4, fusion_k_from="current")
    assert m_init.plan(h, w)[-1].n_regions == initial
    assert m_cur.plan(h, w)[-1].n_regions == current
    # only the region counts differ: same token sizes and channels at every layer
    strip = lambda rows: [(r.token_h, r.token_w, r.channels) for r in rows]  # noqa: E731
    assert strip(m_init.plan(h, w)) == strip(m_cur.plan(h, w))


def test_forward_follows_fusion_k_from() -> None:
    """The network fuses as its plan says: 8 x 8 = 64 regions of 32 px (alpha 0.8, 24 layers).
    Initial: k = ceil(2.13) = 3 per layer until the n // 2 cap: 64 - 3 * 21 = 1 region left.
    Current: k = 3, 3 (64 → 58), then 2 while n > 30 (14 layers: 58 → 30), then 1 (8 layers): 22."""
    x = torch.randn(1, 3, 256, 256)
    for k_from in ("initial", "current"):
        torch.manual_seed(0)
        model = create_model("pixelmamba-6m", num_classes=3, scan_window=32, fusion_k_from=k_from)
        outs: list[int] = []
        hooks = [layer.register_forward_hook(lambda m, a, out: outs.append(out[0].shape[1])) for layer in model.layers]
        with torch.no_grad():
            model(x)
        for hk in hooks:
            hk.remove()
        assert outs == [r.n_regions for r in model.plan(256, 256)]
        assert outs[-1] == _regions_left(64, k_from == "current")
    assert _regions_left(64, False) == 1 and _regions_left(64, True) == 22


def test_fusion_k_from_changes_no_parameter() -> None:
    torch.manual_seed(0)
    a = create_model("pixelmamba-6m", num_classes=3, scan_window=32).state_dict()
    torch.manual_seed(0)
    b = create_model("pixelmamba-6m", num_classes=3, scan_window=32, fusion_k_from="current",
                     fusion_partition="halves").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- 7. gallery/probe partition ---------------------------------------------------------------------


def test_gallery_probe_sets_by_hand() -> None:
    assert [t.tolist() for t in gallery_probe(5, "alternate")] == [[0, 2, 4], [1, 3]]
    assert [t.tolist() for t in gallery_probe(5, "halves")] == [[0, 1, 2], [3, 4]]
    assert [t.tolist() for t in gallery_probe(4, "halves")] == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match="partition"):
        gallery_probe(4, "random")


# regions 0 and 2 are identical, every other pair is orthogonal-ish
CLS4 = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.3, 1.0]]])


def _grid(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = (10.0 * torch.arange(n).view(n, 1, 1) + torch.arange(4.0).view(1, 2, 2)).view(1, n, 2, 2, 1)
    return tokens, torch.ones(1, n, 2, 2, dtype=torch.bool)


def test_which_pairs_can_merge() -> None:
    """Alternating sets put regions 0 and 2 both in the gallery: the most similar pair cannot
    merge; the best cross pair is p3 -> g2 (cos 0 vs p1 -> g0 cos 0; p3 · g2 = 0 too, so ties) —
    with halves 0 and 1 are the gallery and p2 -> g0 (cos 1) merges."""
    tokens, valid = _grid(4)
    slot_h, _ = fusion_slots(CLS4, valid, 1, "halves")
    assert slot_h[0].tolist() == [0, 1, 0, 2]  # region 2 joins region 0
    out, cls, _ = region_fusion(tokens, CLS4, valid, 1, "halves")
    assert out[0, :, 0, 0, 0].tolist() == [10.0, 10.0, 30.0]  # (0 + 20) / 2, then 1 and 3
    slot_a, _ = fusion_slots(CLS4, valid, 1, "alternate")
    assert slot_a[0, 0] != slot_a[0, 2]  # 0 and 2 never share a slot
    # the default is the alternation
    assert torch.equal(fusion_slots(CLS4, valid, 1)[0], slot_a)


# -- 6. bidirectional merge ------------------------------------------------------------------------


def test_eq1_sum_has_one_conv_and_is_eq1() -> None:
    torch.manual_seed(0)
    mean = BiMambaMixer(8, d_state=4, backend="ref")
    summ = BiMambaMixer(8, d_state=4, backend="ref", merge="sum")
    extra = {n for n, _ in mean.named_parameters()} - {n for n, _ in summ.named_parameters()}
    assert extra == {"conv1d_b.weight", "conv1d_b.bias"}
    summ.load_state_dict({k: v for k, v in mean.state_dict().items() if not k.startswith("conv1d_b")})
    x = torch.randn(2, 11, 8, dtype=torch.float64)
    mean, summ = mean.double(), summ.double()
    # Eq. 1 by hand: x, z from in_proj; psi = SiLU(causal conv); both SSMs read psi(x)
    xz = summ.in_proj(x).transpose(1, 2)
    xi, z = xz.chunk(2, dim=1)
    k = summ.d_conv - 1
    psi = summ.causal_conv(torch.nn.functional.pad(xi, (k, 0)))
    y_f, _ = summ.scan_branch(None, z, None, False, False, xc=psi)
    y_b, _ = summ.scan_branch(None, z.flip(-1), None, True, False, xc=psi.flip(-1))
    want = summ.out_proj((y_f + y_b.flip(-1)).transpose(1, 2))
    torch.testing.assert_close(summ(x), want, rtol=1e-12, atol=1e-12)
    # the mean mixer's forward branch is the same; its output is half the forward branch plus
    # half a backward branch with its own conv, so the two differ
    assert not torch.allclose(summ(x), mean(x))
    # streaming (pieces with carried states) gives the same sum
    for chunk in (1, 3, 5):
        torch.testing.assert_close(summ(x, chunk_size=chunk), want, rtol=1e-10, atol=1e-10)


def test_eq1_sum_streamed_block_equals_plain_block() -> None:
    """The streamed path's hand-written backward holds for the sum too (outputs and every gradient)."""
    from pixelmamba.serialize import deserialize, serialize
    from pixelmamba.streaming import streamed_block

    torch.manual_seed(0)
    model = create_model("pixelmamba-6m", num_classes=3, scan_window=32, bidirectional_merge="sum")
    block = model.layers[2].block.double()  # 12 channels
    assert not hasattr(block.mixer, "conv1d_b")
    tokens = torch.randn(2, 3, 4, 6, 12, dtype=torch.float64)
    cls = torch.randn(2, 3, 12, dtype=torch.float64)
    valid = torch.ones(2, 3, 4, 6, dtype=torch.bool)
    g_tok, g_cls = torch.randn_like(tokens), torch.randn_like(cls)

    def run(streamed: bool):
        block.zero_grad()
        t, c = tokens.clone().requires_grad_(True), cls.clone().requires_grad_(True)
        if streamed:
            out, out_cls = streamed_block(block, t, c, valid, 7, torch.float64)
        else:
            out, out_cls = deserialize(block(serialize(t, c)), 3, 4, 6)
        torch.autograd.backward([out, out_cls], [g_tok.clone(), g_cls])
        return [out, out_cls, t.grad, c.grad] + [p.grad.clone() for p in block.parameters()]

    for got, want in zip(run(True), run(False)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_options_are_validated() -> None:
    for opt in ("fusion_k_from", "fusion_partition", "bidirectional_merge"):
        with pytest.raises(ValueError, match=opt):
            create_model("pixelmamba-6m", num_classes=3, **{opt: "other"})
