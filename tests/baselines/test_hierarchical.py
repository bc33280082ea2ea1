"""The hierarchical rows of Table 2: HIPT (ViT-4K over the region cache, slide transformer, gated
pooling) and the Prov-GigaPath slide encoder (LongNet over tile features with 2D sin-cos
positions), their weights, their inputs, and the region cache they read."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from baselines.bag import Bag  # noqa: E402
from baselines.hipt import HIPT, ViT4K  # noqa: E402
from baselines.prov_gigapath import ProvGigaPath, release_segment_lengths, sincos_2d  # noqa: E402
from baselines.weights import WeightsError  # noqa: E402
from bench.registry import build_model, count_parameters, get_method  # noqa: E402


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Two intra-op threads on busy cores oversubscribe OpenMP (tests/pixelmamba/ops/conftest.py)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def grid(n_x: int, n_y: int) -> torch.Tensor:
    gx, gy = torch.meshgrid(torch.arange(n_x), torch.arange(n_y), indexing="ij")
    return torch.stack([gx, gy], -1).reshape(-1, 2)


def small_gigapath(**kw) -> ProvGigaPath:
    """The same network at toy width (the architecture, not the size, is under test)."""
    cfg = dict(in_dim=16, embed_dim=32, depth=3, heads=4, feat_layers=(1, 2), freeze=False,
               segment_lengths=[8, 16, 32, 64, 128])
    return ProvGigaPath(4, **{**cfg, **kw})


# --- parameter counts ---------------------------------------------------------------------------


def test_prov_gigapath_counts():
    """86,330,880 encoder parameters (REFERENCE.md: ~86M); the paper's '+ 6.1K' and '+ 1.2M' are
    the trainable heads over 2 × 768 = 1536-d layer outputs."""
    with torch.device("meta"):
        cls, feat = ProvGigaPath(4, variant="cls"), ProvGigaPath(4, variant="feat")
    assert count_parameters(cls.slide_encoder_modules()) == 86_330_880
    assert trainable(cls) == 6_148 and trainable(feat) == 1_183_365


def test_hipt_counts():
    model = HIPT(4)
    assert count_parameters(model.local_vit) == 2_781_504  # vit4k_xs: 6 blocks of 192-d, 14² + 1 positions
    assert trainable(model) == 595_397  # frozen ViT-4K: slide transformer + pooling + head
    assert trainable(HIPT(4, freeze_4k=False)) == 2_781_504 + 595_397


# --- shape, finiteness, gradients, bag sizes -------------------------------------------------------


def _check_learns(model: torch.nn.Module, x) -> None:
    out = model(x)
    assert out.shape == (1, 4) and torch.isfinite(out).all()
    out.sum().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("freeze", [True, False])
@pytest.mark.parametrize("n_regions", [1, 3])
def test_hipt_learns(freeze, n_regions):
    torch.manual_seed(0)
    mask = torch.rand(n_regions, 256) > 0.5
    mask[:, 0] = True
    _check_learns(HIPT(4, freeze_4k=freeze), Bag(torch.randn(n_regions, 256, 384), mask=mask))


def test_hipt_one_patch():
    torch.manual_seed(0)
    one = torch.zeros(1, 256, dtype=torch.bool)
    one[0, 17] = True  # a single patch in a single region
    _check_learns(HIPT(4), Bag(torch.randn(1, 256, 384), mask=one))


@pytest.mark.parametrize("width", [pytest.param("toy"), pytest.param("full", marks=pytest.mark.slow)])
def test_hipt_50000_patches(width):
    """196 regions × 256 = 50,176 patches (toy width in the fast suite: same architecture)."""
    torch.manual_seed(0)
    model = (HIPT(4, in_dim=16, dim=24) if width == "toy" else HIPT(4)).eval()
    x = torch.randn(196, 256, model.local_vit.phi[0].in_features)
    with torch.no_grad():
        out = model(Bag(x, mask=torch.ones(196, 256, dtype=torch.bool)))
    assert out.shape == (1, 4) and torch.isfinite(out).all()


def test_hipt_padding_is_masked_out():
    """Positions without a patch (a region cut by the slide's edge) must not change the output."""
    torch.manual_seed(0)
    model = HIPT(4).eval()
    x, mask = torch.randn(2, 256, 384), torch.ones(2, 256, dtype=torch.bool)
    mask[1, 100:] = False
    y = x.clone()
    y[1, 100:] = 1e3 * torch.randn(156, 384)
    with torch.no_grad():
        torch.testing.assert_close(model(Bag(x, mask=mask)), model(Bag(y, mask=mask)))
        assert not torch.allclose(model(Bag(x, mask=mask)), model(Bag(y)))  # unmasked: it would


def test_vit4k_positions_follow_the_grid():
    """Token i of a region sits at row i // 16, column i % 16 (HIPT's ``unfold``): swapping two
    patches changes the CLS output, and the 14×14 table is used as is at 14 × 14."""
    torch.manual_seed(0)
    vit = ViT4K().eval()
    assert vit.pos_for(14, 14) is vit.pos_embed
    assert vit.pos_for(16, 16).shape == (1, 257, 192)
    x = torch.randn(1, 256, 384)
    with torch.no_grad():
        swapped = x[:, torch.tensor([1, 0, *range(2, 256)])]
        assert not torch.allclose(vit(x), vit(swapped))


@pytest.mark.parametrize("variant", ["cls", "feat"])
@pytest.mark.parametrize("n_tiles", [1, 37])
def test_prov_gigapath_learns(variant, n_tiles):
    torch.manual_seed(0)
    model = small_gigapath(variant=variant)
    _check_learns(model, Bag(torch.randn(n_tiles, 16), coords=grid(7, 7)[:n_tiles]))
    # the never-run layers (after the last one read) are the only parameters left without a gradient
    unused = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert unused == {n for n, _ in model.named_parameters() if n.startswith(("encoder.layers.2.", "encoder.layer_norm"))}


def test_prov_gigapath_full_size_one_tile():
    torch.manual_seed(0)
    for variant in ("cls", "feat"):
        _check_learns(build_model(f"prov-gigapath-{variant}", 4), Bag(torch.randn(1, 1536), coords=grid(1, 1)))


def test_prov_gigapath_50000_tiles():
    """A 50,000-tile slide through the encoder (toy width, so it runs in seconds on a CPU)."""
    torch.manual_seed(0)
    model = small_gigapath(variant="feat", depth=2, feat_layers=(2,)).eval()
    with torch.no_grad():
        out = model(Bag(torch.randn(50_000, 16), coords=grid(250, 200)))
    assert out.shape == (1, 4) and torch.isfinite(out).all()


@pytest.mark.slow  # 11 full-width LongNet layers over 50,001 tokens: ~500 CPU-s per variant (docs/hierarchical.md)
@pytest.mark.parametrize("variant", ["cls", "feat"])
def test_prov_gigapath_full_size_50000_tiles(variant):
    """The issue's 50,000-patch bag through the registered rows at full width (768-d, 16 heads, the
    release's segment lengths, LongNet states 5 and 11 read), in training mode, forward and
    backward: the frozen encoder runs without gradients, every trainable parameter (the head) gets
    a finite gradient and no frozen one gets any."""
    torch.manual_seed(0)
    model = build_model(f"prov-gigapath-{variant}", 4).train()
    _check_learns(model, Bag(torch.randn(50_000, 1536), coords=grid(250, 200)))
    assert trainable(model) == {"cls": 6_148, "feat": 1_183_365}[variant]
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


# --- Prov-GigaPath mechanisms --------------------------------------------------------------------


def _release_table(dim: int, n: int) -> np.ndarray:
    """The release's ``get_2d_sincos_pos_embed(dim, n, cls_token=True)`` (MAE), written out."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=float) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gh = np.arange(n, dtype=np.float32)
    g = np.stack(np.meshgrid(gh, gh), axis=0).reshape(2, 1, n, n)
    emb = np.concatenate([one_d(dim // 2, g[0]), one_d(dim // 2, g[1])], axis=1)
    return np.concatenate([np.zeros((1, dim)), emb], axis=0)


def test_sincos_positions_match_the_release_table():
    """The release indexes its table at ``x · slide_ngrids + y + 1`` for the tile at grid (x, y)."""
    table = _release_table(64, 30)
    xy = torch.tensor([[0, 0], [3, 7], [29, 1], [12, 29]])
    want = table[(xy[:, 0] * 30 + xy[:, 1] + 1).numpy()]
    np.testing.assert_allclose(sincos_2d(xy, 64).numpy(), want, rtol=0, atol=1e-6)


def test_release_segment_lengths():
    assert release_segment_lengths() == [1024, 5792, 32768, 185363, 1048576]


def test_positions_matter_and_order_does_not():
    """With one dense branch the encoder is attention over (feature + position) tokens: permuting
    tiles together with their positions leaves the CLS token unchanged; moving tiles changes it."""
    torch.manual_seed(0)
    model = small_gigapath(ratios=(1,), segment_lengths=[1024]).eval()
    x, xy = torch.randn(20, 16), grid(4, 5)
    perm = torch.randperm(20)
    with torch.no_grad():
        ref = model(Bag(x, coords=xy))
        torch.testing.assert_close(model(Bag(x[perm], coords=xy[perm])), ref, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(model(Bag(x, coords=xy[perm])), ref, atol=1e-4)


def test_frozen_encoder_states_are_remembered():
    torch.manual_seed(0)
    model = small_gigapath(freeze=True)
    calls = []
    model.encoder.layers[0].register_forward_hook(lambda *a: calls.append(1))
    x = Bag(torch.randn(10, 16), coords=grid(2, 5))
    a = model(x)
    b = model(Bag(x.features.clone(), coords=x.coords.clone()))  # same content, new tensors
    torch.testing.assert_close(a, b)
    assert len(calls) == 1
    model(Bag(x.features + 1, coords=x.coords))
    assert len(calls) == 2


def test_prov_gigapath_needs_positions():
    with pytest.raises(ValueError, match="coords"):
        small_gigapath()(torch.randn(5, 16))


# --- weights -------------------------------------------------------------------------------------


def test_slide_encoder_weights_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A ``{"model": state}`` checkpoint (the release's format) through the environment variable."""
    from baselines.prov_gigapath import SLIDE_WEIGHTS_ENV, find_slide_encoder_weights

    torch.manual_seed(0)
    src = small_gigapath()
    torch.save({"model": src.slide_encoder_modules().state_dict()}, tmp_path / "slide_encoder.pth")
    monkeypatch.setenv(SLIDE_WEIGHTS_ENV, str(tmp_path / "slide_encoder.pth"))
    path, how = find_slide_encoder_weights()
    assert path == tmp_path / "slide_encoder.pth" and how == f"${SLIDE_WEIGHTS_ENV}"
    torch.manual_seed(1)
    dst = small_gigapath(weights=path).eval()
    src.eval()
    x = Bag(torch.randn(6, 16), coords=grid(2, 3))
    with torch.no_grad():
        torch.testing.assert_close(dst.encode(x)[0], src.encode(x)[0])
    torch.save({"model": {"cls_token": torch.zeros(1, 1, 32)}}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="missing keys"):
        small_gigapath(weights=tmp_path / "bad.pth")


def test_hipt_vit4k_weights_load_from_a_dino_checkpoint(tmp_path: Path):
    """HIPT's vit4k_xs_dino.pth: ``{"teacher": {"backbone.…": …, "head.…": …}}``."""
    torch.manual_seed(0)
    src = ViT4K()
    state = {f"backbone.{k}": v for k, v in src.state_dict().items()}
    state["head.mlp.0.weight"] = torch.zeros(3, 3)  # DINO's projection head: ignored
    torch.save({"teacher": state, "epoch": 100}, tmp_path / "vit4k_xs_dino.pth")
    model = HIPT(4, weights_4k=tmp_path / "vit4k_xs_dino.pth")
    x = torch.randn(2, 256, 384)
    with torch.no_grad():
        torch.testing.assert_close(model.local_vit(x), src.eval()(x))


def test_hipt_vit256_encoder_loads_the_release_layout(tmp_path: Path):
    """The stage-1 encoder: a DINO teacher checkpoint with ``backbone.`` keys fits ``hipt-vit256``."""
    import feature_cache as fc
    from feature_cache.encoders import build_module

    torch.manual_seed(0)
    net = build_module("hipt-vit256", device="cpu")
    assert count_parameters(net) == 21_665_664  # ViT-S/16 (DINO vit_small) without a head
    from bench.registry import SOURCE_PARAMS

    assert SOURCE_PARAMS["hipt-vit256"] == 21_665_664  # what the tables' Params column adds for HIPT
    torch.save({"teacher": {f"backbone.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "vit256.pth")
    enc = fc.get_encoder("hipt-vit256", weights=tmp_path / "vit256.pth")
    patch = np.random.default_rng(0).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    out = enc(patch)
    assert out.shape == (2, 384) and not enc.random_weights
    x = (torch.from_numpy(patch).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        torch.testing.assert_close(out, net.eval()(x), rtol=1e-4, atol=1e-4)


# --- registry ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,inp,source", [("hipt", "region_features", "hipt-vit256"),
                                             ("prov-gigapath-cls", "tiles", "gigapath"),
                                             ("prov-gigapath-feat", "tiles", "gigapath")])
def test_registered(name, inp, source):
    spec = get_method(name)
    assert spec.family == "two-stage" and spec.input == inp and spec.cache_encoder == source
    assert spec.encoder is None and spec.group == "Two-stage hierarchical representation"


# --- the region cache (HIPT's input) --------------------------------------------------------------


def test_regions_from_patches_hand_case():
    from feature_cache.region_features import regions_from_patches

    """Patches on a 2-per-side region grid; only the patch at (3, 0) has tissue, so only region
    (1, 0) is kept, and every patch inside it gets its row-major slot."""
    xy = np.array([[0, 0], [1, 0], [2, 0], [3, 0], [2, 1], [3, 1], [0, 1], [4, 4]])
    tissue = np.array([False, False, False, True, False, False, False, False])
    regions, sel, region_of, slots = regions_from_patches(xy, tissue, 2)
    assert regions.tolist() == [[1, 0]]
    assert sel.tolist() == [2, 3, 4, 5] and region_of.tolist() == [0, 0, 0, 0]
    assert slots.tolist() == [0, 1, 2, 3]


def _tiny_encoder():
    """An 8-d patch encoder (pool + linear) with the Encoder interface: the cache is under test."""
    from torch import nn

    from feature_cache.encoders import IMAGENET_MEAN, IMAGENET_STD, Encoder, EncoderSpec

    def build() -> nn.Module:
        return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 8))

    spec = EncoderSpec(name="tiny", dim=8, patch_size=256, magnification=20.0, input_size=32,
                       mean=IMAGENET_MEAN, std=IMAGENET_STD, build=build, weights_env="NONE")
    torch.manual_seed(0)
    return Encoder(spec, build(), random_weights=True, weights_source="random")


def test_region_cache_places_patch_features(tmp_path: Path):
    """Regions of 4 × 4 patches (1024 px at 5×, so the demo's small slides are cut by their edges):
    every real slot holds exactly the feature the patch cache computes for that patch, the rest is
    zero padding with mask False, and a second extraction is a no-op."""
    import feature_cache as fc
    from bench.data.demo import write_pyramid_tiff
    from feature_cache.region_features import RegionFeatureCache

    rng = np.random.default_rng(0)
    rgb = np.full((2600, 3400, 3), 240, np.uint8)  # glass, 0.5 um/px: 5x patches are 1024 px here
    yy, xx = np.mgrid[:2600, :3400]
    tissue = ((yy - 1300) / 1100.0) ** 2 + ((xx - 1500) / 1400.0) ** 2 < 1
    rgb[tissue] = (rng.normal(0, 12, (int(tissue.sum()), 3)) + (200, 110, 170)).clip(0, 255)
    sid = "BLOB-00-0000-01Z-00-DX1"
    write_pyramid_tiff(tmp_path / f"{sid}.tiff", rgb)
    slides = {sid: tmp_path / f"{sid}.tiff"}
    enc = _tiny_encoder()
    kw = dict(magnification=5.0, min_tissue=0.25)
    cache = RegionFeatureCache(tmp_path / "cache", region_size=1024)
    rep = cache.extract(slides, enc, progress=False, **kw)
    assert rep.done == [sid]
    feats, mask, coords = cache.load_regions(sid, enc, **kw)
    assert feats.shape[1:] == (16, 8) and mask.shape == feats.shape[:2] and coords.shape == (len(feats), 2)
    assert len(feats) >= 1 and mask.any(axis=1).all() and not mask.all()  # edges cut the regions
    assert (feats[~mask] == 0).all()
    patches = fc.FeatureCache(tmp_path / "patches")
    patches.extract(slides, enc, progress=False, magnification=5.0, min_tissue=0.0)  # every in-slide patch
    pf, pc = patches.load(sid, enc, magnification=5.0, min_tissue=0.0)
    patch0 = 1024  # a 256-px patch at 5x on a 0.5 um/px slide is 1024 level-0 px; 4 per region side
    found = 0
    for r, (x0, y0) in enumerate(coords):
        for slot in np.nonzero(mask[r])[0]:
            x, y = x0 + (slot % 4) * patch0, y0 + (slot // 4) * patch0
            j = np.nonzero((pc[:, 0] == x) & (pc[:, 1] == y))[0]
            assert len(j) == 1
            np.testing.assert_allclose(feats[r, slot], pf[j[0]], rtol=1e-4, atol=1e-5)
            found += 1
    assert found == int(mask.sum())
    assert cache.extract(slides, enc, progress=False, **kw).skipped == [sid]


# --- through the runner ---------------------------------------------------------------------------


@pytest.fixture()
def tiny_stage1(monkeypatch: pytest.MonkeyPatch):
    """The first stages (HIPT ViT-256, GigaPath) as tiny networks of the same output width, so the
    runner's plumbing (caches, bags, weights marks) is what the test spends its time on."""
    import dataclasses

    from torch import nn

    from feature_cache import encoders

    for name, dim in (("hipt-vit256", 384), ("gigapath", 1536)):
        spec = encoders.REGISTRY[name]
        build = (lambda d=dim: nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, d)))
        monkeypatch.setitem(encoders.REGISTRY, name, dataclasses.replace(spec, build=build))
    for env in ("BENCH_WEIGHTS_HIPT_VIT256", "BENCH_WEIGHTS_GIGAPATH", "BENCH_WEIGHTS_HIPT_VIT4K",
                "BENCH_WEIGHTS_GIGAPATH_SLIDE"):
        monkeypatch.delenv(env, raising=False)


@pytest.mark.slow
def test_runner_trains_the_hierarchical_rows(tmp_path: Path, tiny_stage1):
    import json

    from bench.data.datasets import load_spec
    from bench.registry import get_method
    from bench.engine.inputs import TileInputs
    from bench.engine.runner import run

    spec_file = tmp_path / "tinyh.yaml"
    spec_file.write_text(f"""description: tiny cohort for the hierarchical rows
generator: demo
generator_args: {{n_cases: 8, seed: 2}}
root: {tmp_path / 'data'}
slides: slides
slide_glob: "*.tiff"
clinical: clinical.csv
clinical_format: normalized
tasks: [staging]
allow_random_weights: true
""")
    common = dict(tasks=["staging"], folds=[0], n_folds=2, results=tmp_path / "results", cache=tmp_path / "cache",
                  train_overrides={"epochs": 1}, progress=False)
    rep = run([get_method("hipt")], str(spec_file), **common)
    toy = {"embed_dim": 32, "depth": 2, "heads": 4, "feat_layers": [1, 2]}
    rep2 = run([get_method("prov-gigapath-cls"), get_method("prov-gigapath-feat")], str(spec_file),
               model_overrides=toy, **common)
    assert not rep.failed and not rep2.failed and len(rep.ran) == 1 and len(rep2.ran) == 2
    for method, part in (("hipt", "vit4k"), ("prov-gigapath-cls", "slide_encoder"),
                         ("prov-gigapath-feat", "slide_encoder")):
        unit = tmp_path / "results" / "runs" / "tinyh" / "staging" / method / "fold0"
        config = json.loads((unit / "config.json").read_text())
        metrics = json.loads((unit / "metrics.json").read_text())
        second = [w for w in config["weights"] if w["part"] == part]
        assert second and second[0]["source"] == "random" and metrics["weights"] == config["weights"]
        assert metrics["group"] == "Two-stage hierarchical representation"
    assert (tmp_path / "cache" / "region_features" / "hipt-vit256").is_dir()

    # a case with several slides: its tiles are laid side by side, positions never collide
    from bench.data.datasets import load_cohort

    cohort = load_cohort(load_spec(str(spec_file)))
    inputs = TileInputs(cohort, "gigapath", tmp_path / "cache", True, False)
    multi = [c for c, s in cohort.slides_of().items() if len(s) > 1]
    assert multi, "the demo generator gives some cases two slides"
    bag = inputs.bags.get(multi[0])
    assert len({tuple(p) for p in bag.coords.tolist()}) == len(bag) == len(bag.features)
