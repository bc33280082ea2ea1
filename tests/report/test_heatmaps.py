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

from baselines.bag import Bag
from bench.registry import build_model, list_methods
from bench.report import heatmaps as H
from bench.report.heatmap_files import read_geojson_tiles, shown, write_geojson, write_h5
from bench.results.store import MissingWeightsError, ResultsStore, Unit, load_weights
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
    else:
        occ = H.occlusion_scores(m, x, t, batch=4)
        try:
            own, how = H.family_scores(m, x, t)
        except ValueError as exc:  # only a model without any own score may say so
            assert "only the occlusion score applies" in str(exc)
            own, how = occ, "occlusion only"
        assert len(occ) == len(own) == len(x)
    assert np.isfinite(occ).all() and np.isfinite(own).all() and how
    assert np.abs(occ).max() > 0  # removing a tile changes the output
