"""Where a model looks: per-tile scores of one slide for any registered method.

Two kinds of score, both per tile of the feature cache's patch grid (two-stage) or of a square grid
laid on the end-to-end model's input image:

* **occlusion** (every method, the common currency): the change of the model's output when one tile
  is removed -- dropped from the bag (two-stage) or painted with the slide's background colour
  (end-to-end) -- ``out(full) - out(without tile)``, so a positive score means the tile supports
  the prediction. Computed in batches of leave-one-out inputs (``torch.func.vmap`` over the bags;
  one forward per input when a model cannot be vmapped).
* **the family's own score** (``family_scores``): ABMIL's attention weights, MeanMIL's per-instance
  contribution to the logit, MaxMIL's instance logits, TransMIL's CLS attention of its last layer
  (through the Nystrom approximation), ILRA-MIL's and MambaMIL's pooling attention, HIPT's and
  Prov-GigaPath's region/tile attention, and gradient x input summed over feature channels (two-stage
  models without their own score) or pooled over each tile's pixels (end-to-end models); for
  Pixel-Mamba also each region CLS token's contribution to the averaged slide token
  (``region_cls_scores``).

The output is a scalar per slide chosen by ``Target``: the probability of a class (staging: the
predicted class or a chosen one) or the survival risk (-sum of the survival curve).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch

from baselines.bag import Bag

from ..losses import survival_risk

log = logging.getLogger(__name__)

__all__ = ["Target", "SlideScores", "occlusion_scores", "occlusion_image", "family_scores",
           "percentile_rank", "grid_tiles", "tumour_auroc", "mask_fraction", "region_cls_scores",
           "regions_to_tiles"]


@dataclass(frozen=True)
class Target:
    """The scalar a map explains: a class's probability (``klass``) or the survival risk."""

    klass: int | None = None  # None: survival risk

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:  # (B, n_out) -> (B,)
        logits = logits.float().reshape(-1, logits.shape[-1])
        if self.klass is None:
            return survival_risk(logits)
        return torch.softmax(logits, dim=1)[:, self.klass]

    @property
    def label(self) -> str:
        return "risk" if self.klass is None else f"P(class {self.klass})"


@dataclass
class SlideScores:
    """One slide's scored tiles: level-0 top-left ``coords`` (N, 2) of squares of ``tile_size``
    level-0 pixels, the feature cache's coordinate system, and named score arrays (N,)."""

    slide_id: str
    coords: np.ndarray
    tile_size: int
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)  # how each score was computed


def percentile_rank(x: np.ndarray) -> np.ndarray:
    """Each value's percentile rank within its slide, in [0, 1] (ties share their mean rank)."""
    from scipy.stats import rankdata

    x = np.asarray(x, dtype=float)
    if len(x) < 2:
        return np.full(len(x), 0.5)
    return (rankdata(x) - 1) / (len(x) - 1)


# ----------------------------------------------------------------------------- occlusion


def _drop(x: torch.Tensor | Bag, i: int) -> torch.Tensor | Bag:
    keep = torch.cat([torch.arange(i), torch.arange(i + 1, len(x))])
    return x.subsample(keep) if isinstance(x, Bag) else x[keep]


def _forward_many(model: torch.nn.Module, xs: list[Any], target: Target) -> torch.Tensor:
    """Target values of several same-shaped inputs: one vmapped forward when the model allows it."""
    if all(isinstance(x, torch.Tensor) for x in xs) and len(xs) > 1:
        try:
            return target(torch.func.vmap(lambda t: model(t).reshape(-1))(torch.stack(xs)))
        except Exception:  # noqa: BLE001 -- a model vmap cannot trace (custom kernels, data-dependent shapes)
            pass
    return torch.cat([target(model(x)) for x in xs])


@torch.no_grad()
def occlusion_scores(model: torch.nn.Module, x: torch.Tensor | Bag, target: Target, batch: int = 32,
                     on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """``target(full bag) - target(bag without tile i)`` for every tile (first axis) of a bag."""
    model.eval()
    n = len(x)
    if n < 2:
        return np.zeros(n)
    full = float(target(model(x))[0])
    out = np.empty(n)
    for s in range(0, n, batch):
        idx = range(s, min(n, s + batch))
        out[s:idx.stop] = full - _forward_many(model, [_drop(x, i) for i in idx], target).numpy()
        if on_batch is not None:
            on_batch(len(idx))
    return out


def background_value(img: torch.Tensor) -> torch.Tensor:
    """The slide's background colour: the per-channel median of the image's border pixels."""
    border = torch.cat([img[0, :, 0, :], img[0, :, -1, :], img[0, :, :, 0], img[0, :, :, -1]], dim=1)
    return border.float().median(dim=1).values.to(img.dtype)  # (3,)


def grid_tiles(height: int, width: int, tile: int) -> np.ndarray:
    """Top-left (x, y) of the ``tile``-px grid covering an image (input pixels)."""
    ys, xs = np.mgrid[0:height:tile, 0:width:tile]
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


@torch.no_grad()
def occlusion_image(model: torch.nn.Module, img: torch.Tensor, tiles: np.ndarray, tile: int, target: Target,
                    batch: int = 8, on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """End-to-end occlusion: each tile painted with the background colour, in batches of images."""
    model.eval()
    fill = background_value(img)[:, None, None]
    full = float(target(model(img))[0])
    out = np.empty(len(tiles))
    for s in range(0, len(tiles), batch):
        chunk = tiles[s:s + batch]
        imgs = []
        for x, y in chunk:
            im = img.clone()
            im[0, :, y:y + tile, x:x + tile] = fill
            imgs.append(im)
        try:
            vals = target(model(torch.cat(imgs)))
            if vals.shape[0] != len(imgs):
                raise ValueError("the model pools over its batch")
        except Exception:  # noqa: BLE001 -- a model that takes one slide per call
            vals = torch.cat([target(model(im)) for im in imgs])
        out[s:s + len(chunk)] = full - vals.numpy()
        if on_batch is not None:
            on_batch(len(chunk))
    return out


# ----------------------------------------------------------------------------- the families' own scores


def _grad_x_input(model: torch.nn.Module, x: torch.Tensor | Bag, target: Target) -> torch.Tensor | None:
    """Gradient x input of the target w.r.t. the input features (or pixels), not yet pooled."""
    feats = (x.features if isinstance(x, Bag) else x).detach().float().clone().requires_grad_(True)
    inp = x.map_features(lambda _: feats) if isinstance(x, Bag) else feats
    with torch.enable_grad():
        out = target(model(inp))[0]
        if not out.requires_grad:
            return None
        out.backward()
    return None if feats.grad is None else (feats.grad * feats).detach()


def _abmil(model: Any, x: torch.Tensor, target: Target) -> tuple[np.ndarray, str]:
    return model.attention_weights(x).detach().numpy(), "ABMIL attention weights (softmax over the bag)"


def _meanmil(model: Any, x: torch.Tensor, target: Target) -> tuple[np.ndarray, str]:
    w = model.head.weight.detach()  # (n_out, D)
    bag = model.as_bag(x)
    c = target.klass
    if c is None:  # survival: the contribution to the risk's linearisation is not one logit; use all bins' mean
        contrib = (bag @ w.T).mean(dim=1) / len(bag)
        return contrib.numpy(), "MeanMIL instance contribution x_i W / N (mean over survival bins)"
    return (bag @ w[c] / len(bag)).numpy(), f"MeanMIL instance contribution to the class-{c} logit, x_i W_c / N"


def _maxmil(model: Any, x: torch.Tensor, target: Target) -> tuple[np.ndarray, str]:
    inst = model.head(model.as_bag(x)).detach()  # (N, n_out): each instance scored by the head
    return target(inst).numpy(), f"MaxMIL instance logits through the head ({target.label} of each instance)"


def nystrom_row(attn: Any, x: torch.Tensor, row: int) -> torch.Tensor:
    """Row ``row`` (of the unpadded sequence) of a Nystrom attention's approximate attention matrix,
    softmax(q k_l^T) pinv(softmax(q_l k_l^T)) softmax(q_l k^T), per head: ``(h, n)``."""
    from baselines.mil.transmil import moore_penrose_pinv

    b, n, _ = x.shape
    m, h = attn.num_landmarks, attn.heads
    x = torch.nn.functional.pad(x, (0, 0, (-n) % m, 0))  # as the layer pads: zeros first
    P = x.shape[1]
    q, k, _ = (t.unflatten(-1, (h, -1)).transpose(1, 2) for t in attn.to_qkv(x).chunk(3, dim=-1))
    q = q * attn.scale
    q_l = q.unflatten(2, (m, P // m)).mean(dim=3)
    k_l = k.unflatten(2, (m, P // m)).mean(dim=3)
    kernel_inv = moore_penrose_pinv((q_l @ k_l.transpose(-1, -2)).softmax(-1), attn.pinv_iterations)
    qi = q[:, :, P - n + row:P - n + row + 1]  # (B, h, 1, d)
    a = (qi @ k_l.transpose(-1, -2)).softmax(-1) @ kernel_inv @ (q_l @ k.transpose(-1, -2)).softmax(-1)
    return a[0, :, 0, P - n:]  # (h, n)


def _transmil(model: Any, x: torch.Tensor, target: Target) -> tuple[np.ndarray, str]:
    seen: list[torch.Tensor] = []
    hook = model.layer2.attn.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    try:
        model(x)
    finally:
        hook.remove()
    row = nystrom_row(model.layer2.attn, seen[0], 0).mean(dim=0)[1:]  # CLS -> tokens, mean over heads
    n = len(model.as_bag(x))
    att = row[:n].clone()
    att[: len(row) - n] += row[n:]  # PPEG's square repeats the first patches: credit them
    return att.numpy(), "TransMIL CLS attention of the last layer (Nystrom approximation, mean over heads)"


def _ilra(model: Any, x: torch.Tensor, target: Target) -> tuple[np.ndarray, str]:
    h = model.as_bag(x).unsqueeze(0)  # (1, N, D)
    for block in model.gab_blocks:
        h = block(h)  # (1, N, hidden)
    pool = model.pooling
    _, w = pool.multihead_attn(pool.fc_q(model.query), pool.fc_k(h), pool.fc_v(h), need_weights=True,
                               average_attn_weights=True)  # (1, 1, N)
    return w[0, 0].numpy(), "ILRA-MIL pooling attention: the learnable query's softmax over the bag, mean over heads"


def _mambamil(model: Any, x: torch.Tensor, target: Target) -> tuple[np.ndarray, str]:
    seen: list[torch.Tensor] = []
    hook = model.attention.register_forward_hook(lambda mod, args, out: seen.append(out))
    try:
        model(x)
    finally:
        hook.remove()
    a = torch.softmax(seen[0].squeeze(-1), dim=0)  # (N,): the weights of its attention pooling
    return a.numpy(), "MambaMIL attention pooling weights (softmax over the bag, after the SRMamba layers)"


def _hipt(model: Any, x: Bag, target: Target) -> tuple[np.ndarray, str]:
    h = model.global_phi(model.region_embeddings(x))  # (M, dim)
    h = model.global_transformer(h.unsqueeze(0))[0]
    a = torch.softmax(model.global_attn_pool(h).squeeze(-1), dim=0)  # (M,)
    return a.numpy(), "HIPT region attention (gated attention pooling over the 4096-px regions)"


def _gigapath(model: Any, x: Bag, target: Target) -> tuple[np.ndarray, str] | None:
    if model.variant == "cls":
        return None  # the CLS token reads every tile through LongNet: no one pooling weight per tile
    tiles = torch.cat([s[0, 1:] for s in model.encode(x)], dim=-1)  # (N, layers * E)
    a = torch.softmax(model.attention(model.fc(tiles)).squeeze(-1), dim=0)
    return a.numpy(), "Prov-GigaPath tile attention (ABMIL pooling over the slide encoder's tile states)"


def _family_scorer(model: torch.nn.Module) -> Callable[..., tuple[np.ndarray, str]] | None:
    from baselines.mil.abmil import ABMIL
    from baselines.mil.pooling import MaxMIL, MeanMIL

    table: list[tuple[type, Callable[..., tuple[np.ndarray, str]]]] = [(ABMIL, _abmil), (MeanMIL, _meanmil),
                                                                       (MaxMIL, _maxmil)]
    from baselines.hipt import HIPT
    from baselines.mil.ilra import ILRA
    from baselines.mil.mambamil import MambaMIL
    from baselines.mil.transmil import TransMIL
    from baselines.prov_gigapath import ProvGigaPath

    table += [(TransMIL, _transmil), (ILRA, _ilra), (MambaMIL, _mambamil), (HIPT, _hipt), (ProvGigaPath, _gigapath)]
    return next((f for cls, f in table if isinstance(model, cls)), None)


@torch.no_grad()
def family_scores(model: torch.nn.Module, x: torch.Tensor | Bag, target: Target) -> tuple[np.ndarray, str]:
    """The family's own per-tile score of a bag (first axis), with how it was computed."""
    model.eval()
    f = _family_scorer(model)
    got = f(model, x, target) if f is not None else None
    if got is not None:
        return got
    g = _grad_x_input(model, x, target)
    if g is None:
        raise ValueError(f"{type(model).__name__}: no gradient reaches its input (a frozen first stage) and it "
                         "has no per-tile weight of its own: only the occlusion score applies")
    while g.dim() > 1:
        g = g.sum(dim=-1)
    return g.numpy(), "gradient x input, summed over feature channels"


def image_grad_x_input(model: torch.nn.Module, img: torch.Tensor, tiles: np.ndarray, tile: int,
                       target: Target) -> tuple[np.ndarray, str]:
    """End-to-end attribution: gradient x input at the pixels, summed over channels and each tile."""
    model.eval()
    if img.dtype == torch.uint8:  # a model that normalises itself takes uint8: attribute w.r.t. the float image
        img = img.float()
    g = _grad_x_input(model, img, target)[0].sum(dim=0)  # (H, W)
    return (np.array([float(g[y:y + tile, x:x + tile].sum()) for x, y in tiles]),
            "gradient x input at the pixels, summed over channels and each tile")


def _head_direction(head: torch.nn.Linear, feats: torch.Tensor, target: Target) -> torch.Tensor:
    """The slide-token direction a map projects on: the class's row of the head (its logit), or for
    the risk its gradient at this slide token (the risk's linearisation)."""
    if target.klass is not None:
        return head.weight[target.klass].detach().float()
    f = feats.detach().float().requires_grad_(True)
    with torch.enable_grad():
        target(head(f[None])).sum().backward()
    return f.grad


def regions_to_tiles(values: np.ndarray, window: int, height: int, width: int, tiles: np.ndarray,
                     tile: int) -> np.ndarray:
    """Per-region totals ``(rows, cols)`` of ``window``-px regions spread evenly over each region's
    pixels inside the ``height x width`` image, summed over each tile (top-left ``tiles``)."""
    ys = np.minimum(np.arange(values.shape[0] + 1) * window, height)
    xs = np.minimum(np.arange(values.shape[1] + 1) * window, width)
    dens = values / np.maximum(np.outer(np.diff(ys), np.diff(xs)), 1)  # per pixel

    def overlap(edges: np.ndarray, t0: int) -> np.ndarray:  # pixels of [t0, t0 + tile) in each region
        return np.clip(np.minimum(edges[1:], t0 + tile) - np.maximum(edges[:-1], t0), 0, None)

    return np.array([overlap(ys, y) @ dens @ overlap(xs, x) for x, y in tiles], dtype=float)


def region_cls_scores(model: Any, img: torch.Tensor, tiles: np.ndarray, tile: int,
                      target: Target) -> tuple[np.ndarray, str]:
    """Pixel-Mamba: each final region CLS token's share of the slide token, projected on the head.

    The slide token is the mean of the m final region CLS tokens, ``f = sum_j cls_j / m``, so a
    class logit is ``W_c f + b_c = sum_j W_c cls_j / m + b_c``: region j contributes
    ``d . cls_j / m`` with ``d = W_c`` (staging), or ``d`` = the risk's gradient at ``f`` (survival).
    A final region that Region Fusion built from several initial regions splits its contribution
    evenly among them, and each initial region's share is spread evenly over its pixels, then summed
    per tile: the map sums to ``d . f`` (the logit minus its bias)."""
    from pixelmamba.serialize import zigzag_indices

    model.eval()
    rt = model.region_tokens(img)
    cls, real = rt.cls[0].float(), rt.real[0].float()  # (m, C), (m,)
    feats = (cls * real[:, None]).sum(0) / real.sum().clamp(min=1)  # (C,): the slide token
    contrib = (cls @ _head_direction(model.head, feats, target)) * real / real.sum().clamp(min=1)  # (m,)
    members = torch.bincount(rt.source[0], minlength=len(contrib)).float()
    share = (contrib / members.clamp(min=1))[rt.source[0]]  # (n0,) initial regions, zigzag order
    grid = torch.empty_like(share)
    grid[zigzag_indices(*rt.grid)] = share  # row-major
    vals = regions_to_tiles(grid.view(*rt.grid).numpy(), rt.window, img.shape[2], img.shape[3], tiles, tile)
    what = "logit" if target.klass is not None else "risk's gradient"
    return vals, (f"Pixel-Mamba region CLS contribution to the slide token, projected on the head's {what}, "
                  "shared by fused regions and their pixels")


def tumour_auroc(scores: Iterable[np.ndarray], tumour: Iterable[np.ndarray]) -> float:
    """AUROC of tile scores ranking tumour tiles above non-tumour tissue tiles, pooled over slides
    (scores percentile-ranked per slide first, so slides are comparable)."""
    from sklearn.metrics import roc_auc_score

    s = np.concatenate([percentile_rank(a) for a in scores])
    t = np.concatenate([np.asarray(b, bool) for b in tumour])
    if t.all() or not t.any():
        return float("nan")
    return float(roc_auc_score(t, s))


def mask_fraction(mask: np.ndarray, downsample: float, coords: np.ndarray, tile: int) -> np.ndarray:
    """The share of each level-0 tile (top-left ``coords``, side ``tile``) that a mask drawn at
    ``downsample`` covers."""
    out = np.zeros(len(coords))
    for i, (x, y) in enumerate(np.asarray(coords)):
        x0, y0 = int(x // downsample), int(y // downsample)
        x1, y1 = int(np.ceil((x + tile) / downsample)), int(np.ceil((y + tile) / downsample))
        win = mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)]
        out[i] = float(win.sum()) / max((y1 - y0) * (x1 - x0), 1)  # outside the mask counts as not covered
    return out
