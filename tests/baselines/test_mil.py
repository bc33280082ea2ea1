"""MIL aggregators: parameter counts of the paper's Table 2 (REFERENCE.md) and the shared face."""

import pytest
import torch

from bench.registry import build_model, count_parameters, get_method, list_methods, resolve_methods

# REFERENCE.md, 4 outputs
PARAMS = {
    "meanmil": {"resnet50": 4100, "conch": 2052, "gigapath": 6148},
    "maxmil": {"resnet50": 4100, "conch": 2052, "gigapath": 6148},
    "abmil": {"resnet50": 921_221, "conch": 659_077, "gigapath": 1_183_365},
}
# the face is the same whatever the input width: one encoder per aggregator keeps this fast;
# TransMIL, ILRA-MIL and MambaMIL have the same checks in test_mil_aggregators.py
TWO_STAGE = [f"{a}.conch" for a in PARAMS]


@pytest.mark.parametrize("agg,enc", [(a, e) for a in PARAMS for e in PARAMS[a]])
def test_parameter_counts_match_reference(agg, enc):
    assert count_parameters(build_model(f"{agg}.{enc}", 4)) == PARAMS[agg][enc]


@pytest.mark.parametrize("name", TWO_STAGE)
@pytest.mark.parametrize("n_patches", [1, 37])
def test_shape_finite_and_every_parameter_learns(name, n_patches):
    torch.manual_seed(0)
    spec = get_method(name)
    model = build_model(name, 4)
    x = torch.randn(n_patches, spec.feature_dim)
    out = model(x)
    assert out.shape == (1, 4) and torch.isfinite(out).all()
    out.sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    # (1, N, D) is the same bag
    model.eval()
    torch.testing.assert_close(model(x), model(x.unsqueeze(0)))


@pytest.mark.parametrize("name", TWO_STAGE)
def test_large_bag(name):
    """50,000 patches (TransMIL, ILRA-MIL, MambaMIL: test_mil_aggregators.py, -m slow; HIPT and
    Prov-GigaPath: test_hierarchical.py)."""
    torch.manual_seed(0)
    model = build_model(name, 4).eval()
    with torch.no_grad():
        out = model(torch.randn(50_000, 512))
    assert out.shape == (1, 4) and torch.isfinite(out).all()


def test_abmil_is_permutation_invariant():
    torch.manual_seed(0)
    model = build_model("abmil.resnet50", 4).eval()
    x = torch.randn(20, 1024)
    torch.testing.assert_close(model(x), model(x[torch.randperm(20)]), rtol=1e-5, atol=1e-6)


def test_abmil_attention_sums_to_one():
    torch.manual_seed(0)
    model = build_model("abmil.resnet50", 2).eval()
    a = model.attention_weights(torch.randn(9, 1024))
    assert a.shape == (9,) and float(a.detach().sum()) == pytest.approx(1.0, abs=1e-6)


def test_empty_bag_is_a_clear_error():
    with pytest.raises(ValueError, match="N >= 1"):
        build_model("meanmil.resnet50", 4)(torch.zeros(0, 1024))


def test_method_expressions():
    assert [s.name for s in resolve_methods("abmil.*")] == ["abmil.resnet50", "abmil.conch", "abmil.gigapath"]
    conch = [s.name for s in resolve_methods("*.conch,abmil.conch")]  # de-duplicated, in order
    assert conch[:3] == ["meanmil.conch", "maxmil.conch", "abmil.conch"] and len(conch) == len(set(conch))
    assert len(resolve_methods("all")) == len(list_methods())
    with pytest.raises(KeyError, match="Did you mean abmil.conch"):
        resolve_methods("abmil.cnch")
    with pytest.raises(KeyError, match="matches no method"):
        resolve_methods("nope.*")


def test_reset_classifier():
    m = build_model("abmil.resnet50", 4)
    m.reset_classifier(2)
    assert m(torch.randn(3, 1024)).shape == (1, 2)
