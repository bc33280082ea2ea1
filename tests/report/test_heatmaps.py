"""Heatmaps: occlusion and the families' own scores against hand-computed values, the files in the
formats other tools read (GeoJSON through shapely, HDF5), the kept weights, and every registered
method scored on a tiny input. The CLI on a generated demo, with the ground-truth AUROC, is in
tests/report/test_heatmaps_demo.py (slow)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch

from bench.registry import build_model, list_methods
from bench.report import heatmaps as H
from bench.report.heatmap_files import read_geojson_tiles, shown, write_geojson, write_h5
from bench.results.store import MissingWeightsError, ResultsStore, Unit, load_weights
from pixelmamba import PixelMamba
from record_factory import make_record
from tiny_models import N_OUT, TINY, tiny_input


def test_occlusion_of_meanmil_is_the_hand_computed_leave_one_out():
    torch.manual_seed(0)
    m = build_model("meanmil.resnet50", 4).eval()
    x = torch.randn(7, 1024)
    W, b = m.head.weight.detach().numpy(), m.head.bias.detach().numpy()
    xs = x.numpy().astype(np.float64)

    def prob2(bag):  # softmax of the mean-pooled bag's logits, class 2
        z = bag.mean(0) @ W.T + b
        e = np.exp(z - z.max())
        return e[2] / e.sum()

    want = np.array([prob2(xs) - prob2(np.delete(xs, i, axis=0)) for i in range(len(xs))])
    got = H.occlusion_scores(m, x, H.Target(2), batch=3)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_occlusion_batches_agree_with_one_forward_per_tile():
    torch.manual_seed(0)
    m = build_model("abmil.resnet50", 4, hidden=16, attn_dim=8).eval()
    x = torch.randn(11, 1024)
    t = H.Target(None)  # survival risk
    with torch.no_grad():
        full = float(t(m(x)))
        want = [full - float(t(m(torch.cat([x[:i], x[i + 1:]])))) for i in range(11)]
    np.testing.assert_allclose(H.occlusion_scores(m, x, t, batch=4), want, atol=1e-6)


def test_meanmil_contributions_sum_to_the_logit_and_abmil_attention_is_its_softmax():
    torch.manual_seed(0)
    m = build_model("meanmil.resnet50", 4).eval()
    x = torch.randn(5, 1024)
    contrib, _ = H.family_scores(m, x, H.Target(1))
    assert contrib.sum() + float(m.head.bias[1]) == pytest.approx(float(m(x)[0, 1]), abs=1e-5)
    a = build_model("abmil.resnet50", 4, hidden=16, attn_dim=8).eval()
    att, how = H.family_scores(a, x, H.Target(1))
    with torch.no_grad():
        h = a.fc(x)
        want = torch.softmax(a.attention(h).squeeze(-1), 0).numpy()
        pooled = torch.from_numpy(att) @ h  # the attention-weighted mean is what the head reads
        assert torch.allclose(a.head(pooled), a(x)[0], atol=1e-5)
    np.testing.assert_allclose(att, want, atol=1e-6)
    assert "attention" in how


def test_maxmil_instance_scores_are_the_head_applied_to_each_instance():
    torch.manual_seed(0)
    m = build_model("maxmil.resnet50", 4).eval()
    x = torch.randn(6, 1024)
    got, _ = H.family_scores(m, x, H.Target(0))
    with torch.no_grad():
        want = torch.softmax(x @ m.head.weight.T + m.head.bias, 1)[:, 0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_transmil_cls_row_equals_exact_softmax_attention_when_every_token_is_a_landmark():
    """With as many landmarks as (padded) tokens the Nystrom product is exact attention."""
    torch.manual_seed(0)
    m = build_model("transmil.resnet50", 4, dim=16, heads=2, num_landmarks=16, pinv_iterations=30).eval()
    attn = m.layer2.attn
    x = torch.randn(1, 10, 16)
    with torch.no_grad():
        got = H.nystrom_row(attn, x, 0)  # (h, n)
        xp = torch.nn.functional.pad(x, (0, 0, 6, 0))
        q, k, _ = (t.unflatten(-1, (2, -1)).transpose(1, 2) for t in attn.to_qkv(xp).chunk(3, dim=-1))
        exact = torch.softmax((q * attn.scale) @ k.transpose(-1, -2), -1)[0, :, 6, 6:]
    print("max |nystrom - exact|", float((got - exact).abs().max()))
    assert torch.allclose(got, exact, atol=2e-3)


def test_percentile_rank_and_auroc():
    np.testing.assert_allclose(H.percentile_rank(np.array([3.0, -1.0, 10.0])), [0.5, 0.0, 1.0])
    # tumour tiles (True) all ranked above the others in both slides -> 1; reversed -> 0
    s = [np.array([0.9, 0.1, 0.8]), np.array([5.0, 7.0])]
    t = [np.array([True, False, True]), np.array([False, True])]
    assert H.tumour_auroc(s, t) == 1.0
    assert H.tumour_auroc([-a for a in s], t) == 0.0


def test_mask_fraction_counts_covered_level0_pixels():
    mask = np.zeros((8, 8), bool)  # drawn at downsample 2: 16 x 16 level-0 px
    mask[:, :4] = True  # left half (level-0 x < 8)
    f = H.mask_fraction(mask, 2, np.array([[0, 0], [4, 0], [8, 8]]), 8)
    np.testing.assert_allclose(f, [1.0, 0.5, 0.0])


def test_geojson_parses_back_with_shapely_onto_the_tile_coordinates(tmp_path):
    coords = np.array([[0, 0], [256, 0], [512, 768]])  # level-0 top-left, as the feature cache stores
    sc = H.SlideScores("S1", coords, 256, {"occlusion": np.array([0.1, -0.2, 0.3])})
    polys, meas = read_geojson_tiles(write_geojson(tmp_path / "s.geojson", sc))
    assert [p.bounds for p in polys] == [(x, y, x + 256, y + 256) for x, y in coords.tolist()]
    assert [m["occlusion"] for m in meas] == pytest.approx([0.1, -0.2, 0.3])
    doc = json.loads((tmp_path / "s.geojson").read_text())
    assert {f["properties"]["objectType"] for f in doc["features"]} == {"tile"}  # QuPath's object type
    import h5py

    with h5py.File(write_h5(tmp_path / "s.h5", sc, {"method": "m"}), "r") as f:
        assert f["coords"][:].tolist() == coords.tolist() and f.attrs["patch_size_level0"] == 256
        assert f["scores/occlusion"][:] == pytest.approx([0.1, -0.2, 0.3])
    assert shown(sc.scores["occlusion"], raw=False)[1] == "percentile rank in slide"


def test_kept_weights_are_hashed_in_the_record_and_checked_when_loaded(tmp_path):
    store = ResultsStore(tmp_path)
    u = Unit("demo", "staging", "abmil.resnet50", 0)
    store.prepare(u, {}, "c")
    m = torch.nn.Linear(3, 2)
    rec = store.finish(u, pd.DataFrame({"case_id": ["a"]}), pd.DataFrame(), make_record(), weights=m.state_dict())
    entry = rec.info["weights_file"]
    path = store.unit_dir(u) / "model.pt"
    assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and entry["bytes"] == path.stat().st_size
    back = store.done_record(u)
    assert torch.equal(load_weights(store, back)["weight"], m.weight)
    path.write_bytes(path.read_bytes()[:-1] + b"x")
    with pytest.raises(MissingWeightsError, match="sha256 differs"):
        load_weights(store, back)
    nostore = ResultsStore(tmp_path / "b", keep_weights=False)
    nostore.prepare(u, {}, "c")
    rec2 = nostore.finish(u, pd.DataFrame({"case_id": ["a"]}), pd.DataFrame(), make_record(), weights=m.state_dict())
    assert not (nostore.unit_dir(u) / "model.pt").exists()
    with pytest.raises(MissingWeightsError, match="--keep-weights"):
        load_weights(nostore, rec2)


def _fast(name: str) -> bool:  # one member per family and input kind: the rest of the registry runs in -m slow
    return (name.endswith(".resnet50") and not name.startswith("mambamil")) or name in ("hipt", "prov-gigapath-cls", "pixelmamba-6m", "vim-ti",
                                                  "longvit-s")


@pytest.mark.parametrize("name", [pytest.param(s.name, marks=() if _fast(s.name) else pytest.mark.slow)
                                  for s in list_methods()])
def test_every_method_gets_occlusion_and_its_own_scores(name):
    spec = next(s for s in list_methods() if s.name == name)
    torch.manual_seed(0)
    m = build_model(name, N_OUT, **TINY.get(spec.builder, {})).eval()
    x = tiny_input(spec, torch.Generator().manual_seed(0))
    t = H.Target(1)
    if spec.family == "end-to-end":
        tiles = H.grid_tiles(x.shape[2], x.shape[3], 16)
        occ = H.occlusion_image(m, x, tiles, 16, t, batch=4)
        own, how = H.image_grad_x_input(m, x, tiles, 16, t)
        assert len(occ) == len(own) == len(tiles) == 16
        if isinstance(m, PixelMamba):  # and its region CLS tokens' share of the slide token
            regioncls, _ = H.region_cls_scores(m, x, tiles, 16, t)
            assert len(regioncls) == 16 and np.isfinite(regioncls).all() and np.abs(regioncls).max() > 0
    else:
        occ = H.occlusion_scores(m, x, t, batch=4)
        try:
            own, how = H.family_scores(m, x, t)
        except ValueError as exc:  # only a model without any own score may say so
            assert "only the occlusion score applies" in str(exc)
            own, how = occ, "occlusion only"
        assert len(occ) == len(own) == len(x)
        assert "gradient" not in how  # every aggregator has a weight of its own (or occlusion only)
    assert np.isfinite(occ).all() and np.isfinite(own).all() and how
    assert np.abs(occ).max() > 0  # removing a tile changes the output


def _hooked(module: torch.nn.Module, run, inputs: bool = False):
    """What ``module`` saw (its positional inputs) or returned during ``run()``."""
    seen = []
    h = module.register_forward_hook(lambda mod, args, out: seen.append(args if inputs else out))
    try:
        with torch.no_grad():
            run()
    finally:
        h.remove()
    return seen[0]


def test_ilra_scores_are_its_pooling_querys_attention_computed_by_hand():
    torch.manual_seed(0)
    m = build_model("ilra.resnet50", 4, hidden=16, heads=2).eval()
    x = torch.randn(9, 1024)
    mha = m.pooling.multihead_attn
    q, k, _ = _hooked(mha, lambda: m(x), inputs=True)  # (1, 1, 16), (1, 9, 16) as the pooling saw them
    Wq, Wk, _ = mha.in_proj_weight.detach().chunk(3)
    bq, bk, _ = mha.in_proj_bias.detach().chunk(3)
    Q = (q[0] @ Wq.T + bq).view(1, 2, 8).transpose(0, 1)  # (heads, 1, 8)
    K = (k[0] @ Wk.T + bk).view(9, 2, 8).transpose(0, 1)  # (heads, 9, 8)
    want = torch.softmax(Q @ K.transpose(1, 2) / 8 ** 0.5, -1).mean(0)[0]  # (9,): mean over heads
    got, how = H.family_scores(m, x, H.Target(1))
    np.testing.assert_allclose(got, want.numpy(), atol=1e-6)
    assert got.sum() == pytest.approx(1.0, abs=1e-5) and "pooling attention" in how


def test_mambamil_scores_are_the_weights_its_attention_pooling_averages_with():
    torch.manual_seed(0)
    m = build_model("mambamil.resnet50", 4, dim=16, d_state=4, attn_dim=8).eval()
    x = torch.randn(9, 1024)
    h = _hooked(m.norm, lambda: m(x))[0]  # (9, 16): the tokens the pooling reads
    got, how = H.family_scores(m, x, H.Target(0))
    with torch.no_grad():
        pooled = torch.from_numpy(got) @ h
        assert torch.allclose(pooled[None], m.forward_features(x), atol=1e-5)  # the weighted mean it classifies
        want = torch.softmax(m.attention(h).squeeze(-1), 0)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-6)
    assert "attention pooling" in how


def _tiny_pixelmamba(**kw):
    torch.manual_seed(0)
    return build_model("pixelmamba-6m", 4, scan_window=32, d_state=4, **kw).eval()


def test_pixelmamba_region_cls_scores_without_fusion_are_each_regions_share_of_the_logit():
    """No Region Fusion (alpha 0): 2 x 3 regions keep their own CLS; region j's score is
    W_c . norm(cls_j) / 6, read from the final norm's output, in the zigzag region order."""
    m = _tiny_pixelmamba(alpha=0.0)
    img = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    cls = _hooked(m.norm, lambda: m(img))[0]  # (6, C) final region CLS tokens, zigzag order
    c = 2
    per_region = (cls @ m.head.weight[c].detach()) / 6
    zigzag = {(0, 0): 0, (0, 1): 1, (0, 2): 2, (1, 2): 3, (1, 1): 4, (1, 0): 5}  # (row, col) -> position
    tiles = H.grid_tiles(64, 96, 32)  # one tile per region, row-major (x, y)
    want = [float(per_region[zigzag[(y // 32, x // 32)]]) for x, y in tiles]
    got, how = H.region_cls_scores(m, img, tiles, 32, H.Target(c))
    np.testing.assert_allclose(got, want, atol=1e-5)
    with torch.no_grad():
        assert got.sum() + float(m.head.bias[c]) == pytest.approx(float(m(img)[0, c]), abs=1e-4)
    halves = H.region_cls_scores(m, img, H.grid_tiles(64, 96, 16), 16, H.Target(c))[0]  # 4 tiles per region
    np.testing.assert_allclose(halves[0] * 4, want[0], atol=1e-5)
    assert "CLS" in how


def test_pixelmamba_region_cls_scores_follow_region_fusion():
    """Default alpha on 1 x 60 regions: 24 layers fuse them into 12 final regions; every initial
    region carries its final region's contribution / member count, so the scores of the members of
    one final region are equal, sum to its contribution, and all sum to the logit minus the bias."""
    m = _tiny_pixelmamba()
    img = torch.randn(1, 3, 32, 32 * 60, generator=torch.Generator().manual_seed(2))
    cls = _hooked(m.norm, lambda: m(img))[0]  # (m, C)
    assert len(cls) == 12
    contrib = np.sort((cls @ m.head.weight[1].detach()).numpy() / len(cls))
    got, _ = H.region_cls_scores(m, img, H.grid_tiles(32, 32 * 60, 32), 32, H.Target(1))
    vals, counts = np.unique(np.round(got, 6), return_counts=True)
    assert len(vals) == 12 and counts.sum() == 60
    np.testing.assert_allclose(np.sort(vals * counts), contrib, atol=1e-4)
    with torch.no_grad():
        assert got.sum() + float(m.head.bias[1]) == pytest.approx(float(m(img)[0, 1]), abs=1e-4)
    risk, how = H.region_cls_scores(m, img, H.grid_tiles(32, 32 * 60, 32), 32, H.Target(None))
    assert np.isfinite(risk).all() and "gradient" in how


def test_regions_to_tiles_spreads_a_region_over_its_pixels_inside_the_image():
    vals = np.array([[8.0, 2.0]])  # two 4-px regions over a 4 x 6 image: the second has 2 x 4 real pixels
    got = H.regions_to_tiles(vals, 4, 4, 6, np.array([[0, 0], [2, 0], [4, 0]]), 2)
    np.testing.assert_allclose(got, [2.0, 2.0, 1.0])  # 4 of 16 px of region 0; 4 of 8 px of region 1


def test_a_finished_unit_is_reloaded_with_the_options_it_was_trained_with(tmp_path, caplog):
    """`bench heatmap` rebuilds the unit's network as trained (here `--model hidden=16`, which the
    default ABMIL's 512 would not load) and scores its test cases from the feature cache."""
    import os

    from bench.cli.heatmap import load_unit, score_case, target_chooser
    from fake_inputs import run_bench, write_cached_cohort

    spec = write_cached_cohort(tmp_path, 8)
    res, cache = tmp_path / "res", tmp_path / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENCH_JOBS": "1"}
    run_bench("run", "--methods", "abmil.resnet50", "--dataset", spec, "--tasks", "staging", "--folds", "0",
              "--results", res, "--cache", cache, "--set", "epochs=1", "--model", "hidden=16", "--model", "attn_dim=8", "-q",
              env=env)
    ld = load_unit(str(spec), "abmil.resnet50", "staging", 0, res, cache, progress=False)
    assert ld.model.fc[0].out_features == 16 and ld.test_cases
    assert "differs" not in caplog.text  # resolved as it was trained: the same config hash
    slides, target, value = score_case(ld, ld.test_cases[0], target_chooser("staging", 4, None), True, 128.0, 4,
                                       lambda k: None)
    assert [len(s.scores["occlusion"]) for s in slides] == [6] and "attention" in slides[0].notes["family"]
    assert 0 < value <= 1 and target.klass is not None


@pytest.mark.slow  # one `bench run` of the six aggregators on a cached cohort (~1-2 min)
def test_every_feature_aggregator_is_reloaded_and_scored_by_bench_heatmap(tmp_path):
    """Every `*.resnet50` row of the registry, trained one epoch, goes through `bench heatmap`'s
    loader and scorer: occlusion and the aggregator's own score (never a gradient fallback)."""
    import os

    from bench.cli.heatmap import load_unit, score_case, target_chooser
    from fake_inputs import run_bench, write_cached_cohort

    spec = write_cached_cohort(tmp_path, 16)  # enough events for 4 survival bins in a training fold
    res, cache = tmp_path / "res", tmp_path / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENCH_JOBS": "1"}
    names = [s.name for s in list_methods("*.resnet50")]
    run_bench("run", "--methods", ",".join(names), "--dataset", spec, "--tasks", "survival", "--folds", "0",
              "--results", res, "--cache", cache, "--set", "epochs=1", "-q", env=env)
    for name in names:
        ld = load_unit(str(spec), name, "survival", 0, res, cache, progress=False)
        slides, target, _ = score_case(ld, ld.test_cases[0], target_chooser("survival", ld.n_out, None), True, 128.0,
                                       4, lambda k: None)
        sc = slides[0]
        assert target.klass is None and set(sc.scores) == {"occlusion", "family"}, name
        assert np.isfinite(sc.scores["family"]).all() and "gradient" not in sc.notes["family"], name
