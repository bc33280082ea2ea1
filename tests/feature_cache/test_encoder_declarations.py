"""Every shipped encoder declaration: the architecture it builds (on the meta device: no memory,
no initialisation) has the published parameter count and output dim, and a state dict in the
official layout (the release's key names and shapes, checked against anchor keys known from the
releases) loads strictly, while a renamed or reshaped key is refused by name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

import bench.registry  # noqa: E402,F401 -- registers the declared encoders (configs/encoders)
import feature_cache.encoders as E  # noqa: E402
from bench.encoders import encoder_table  # noqa: E402
from feature_cache.weights import WeightsError, match_state_dict  # noqa: E402

SHIPPED = sorted(n for n, i in encoder_table().items() if "bench/configs/encoders" in i.declared_in)
HF = {"phikon", "phikon_v2", "hibou-b", "hibou-l"}

# keys and shapes of the official files, from the releases' own code (TRIDENT load.py, timm,
# transformers, the model cards): independent of how we build the modules
ANCHORS: dict[str, dict[str, tuple[int, ...]]] = {
    "uni": {"blocks.23.ls2.gamma": (1024,), "pos_embed": (1, 197, 1024)},
    "uni_v2": {"reg_token": (1, 8, 1536), "pos_embed": (1, 256, 1536), "blocks.23.mlp.fc1.weight": (8192, 1536)},
    "virchow": {"pos_embed": (1, 257, 1280), "blocks.31.mlp.fc1.weight": (6832, 1280)},
    "virchow2": {"reg_token": (1, 4, 1280), "blocks.31.mlp.fc2.weight": (1280, 3416)},
    "h-optimus-0": {"reg_token": (1, 4, 1536), "blocks.39.ls1.gamma": (1536,)},
    "h-optimus-1": {"reg_token": (1, 4, 1536), "blocks.39.ls1.gamma": (1536,)},
    "conch_v15": {"trunk.blocks.23.ls1.gamma": (1024,), "attn_pool_contrast.to_kv.weight": (1536, 1024),
                  "attn_pool_contrast.query": (1, 768), "ln_contrast.weight": (768,)},
    "ctranspath": {"patch_embed.proj.0.weight": (12, 3, 3, 3), "layers.0.downsample.reduction.weight": (192, 384),
                   "layers.2.downsample.norm.weight": (1536,), "norm.weight": (768,)},
    "phikon": {"encoder.layer.11.output.dense.weight": (768, 3072), "embeddings.position_embeddings": (1, 197, 768)},
    "phikon_v2": {"encoder.layer.23.layer_scale2.lambda1": (1024,), "embeddings.mask_token": (1, 1024)},
    "hibou-b": {"embeddings.register_tokens": (1, 4, 768), "embeddings.patch_embeddings.projection.weight": (768, 3, 14, 14)},
    "hibou-l": {"embeddings.register_tokens": (1, 4, 1024), "encoder.layer.23.mlp.fc2.weight": (1024, 4096)},
    "kaiko-vitb8": {"patch_embed.proj.weight": (768, 3, 8, 8), "pos_embed": (1, 785, 768)},
    "resnet50": {"layer3.5.bn3.running_var": (1024,), "layer4.2.conv3.weight": (2048, 512, 1, 1), "fc.weight": (1000, 2048)},
    "conch": {"visual.trunk.blocks.11.mlp.fc2.weight": (768, 3072), "text.token_embedding.weight": (32007, 768)},
    "gigapath": {"blocks.39.ls2.gamma": (1536,), "pos_embed": (1, 197, 1536)},
    "hipt-vit256": {"teacher": ()},  # a DINO checkpoint: the ViT under teacher/backbone.*
}


def _published(value: object) -> tuple[float, float]:
    """(count, tolerance): 0.5 %, or half the published last digit when coarser ("1.1B")."""
    if isinstance(value, int):
        return float(value), 0.005 * value
    m = re.fullmatch(r"([\d.]+)([KMB])", str(value))
    assert m, f"unparseable parameter count {value!r}"
    scale = {"K": 1e3, "M": 1e6, "B": 1e9}[m.group(2)]
    decimals = len(m.group(1).partition(".")[2])
    count = float(m.group(1)) * scale
    return count, max(0.005 * count, 0.5 * 10 ** -decimals * scale)


def _official(name: str, module: "torch.nn.Module") -> dict:
    """The release's layout, as meta tensors: our names mapped back to the file's names."""
    sd = {k.removeprefix("body."): v for k, v in module.state_dict().items()}
    if name == "ctranspath":  # timm 0.5 keeps a stage's patch merging at its end
        sd = {re.sub(r"^layers\.(\d)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample.", k): v
              for k, v in sd.items()}
        sd["layers.0.blocks.0.attn.relative_position_index"] = torch.empty(49, 49, device="meta")
        return {"model": sd}
    if name == "resnet50":
        sd = {k: v for k, v in sd.items()}
        sd.update({"layer4.2.conv3.weight": torch.empty(2048, 512, 1, 1, device="meta"),
                   "fc.weight": torch.empty(1000, 2048, device="meta"), "fc.bias": torch.empty(1000, device="meta")})
    if name == "conch":
        sd = {f"visual.{k}": v for k, v in sd.items()}
        sd.update({"visual.proj_contrast": torch.empty(512, 512, device="meta"),
                   "text.token_embedding.weight": torch.empty(32007, 768, device="meta")})
    if name == "hipt-vit256":
        return {"teacher": {f"backbone.{k}": v for k, v in sd.items()}}
    if name in HF:  # the releases were saved by transformers 4 (attention.attention.query, ...)
        sd = {_transformers4(k): v for k, v in sd.items()}
    return sd


def _transformers4(key: str) -> str:
    for ours, theirs in (("q_proj", "attention.query"), ("k_proj", "attention.key"), ("v_proj", "attention.value"),
                         ("o_proj", "output.dense")):
        key = key.replace(f".attention.{ours}.", f".attention.{theirs}.")
    key = key.replace(".mlp.fc1.", ".intermediate.dense.").replace(".mlp.fc2.", ".output.dense.") \
        if key.startswith("layers.") else key  # ViTModel; Dinov2 kept mlp.fc1/fc2
    return re.sub(r"^layers\.", "encoder.layer.", key)


def _anchors_hold(name: str, official: dict) -> None:
    flat = official.get("model") or official.get("teacher") or official
    for key, shape in ANCHORS[name].items():
        if key == "teacher":
            assert "teacher" in official
            continue
        assert key in flat, f"{name}: the official key {key!r} is not in the layout we load"
        assert tuple(flat[key].shape) == shape, (name, key, tuple(flat[key].shape), shape)


def test_at_least_sixteen_encoders_are_shipped() -> None:
    assert len(SHIPPED) >= 16 and set(ANCHORS) == set(SHIPPED), sorted(set(SHIPPED) ^ set(ANCHORS))


@pytest.mark.parametrize("name", SHIPPED)
def test_declaration_builds_the_published_network(name: str) -> None:
    if name in HF:
        pytest.importorskip("transformers")
    spec = E.encoder_spec(name)
    info = encoder_table()[name]
    module = E.build_module(name, device="meta")
    n = sum(p.numel() for p in module.parameters())
    if "parameters" in info.decl:  # CONCH v1.5's card publishes no count
        count, tol = _published(info.decl["parameters"])
        assert abs(n - count) <= tol, f"{name}: {n:,} parameters, published {info.decl['parameters']}"
    x = torch.empty(2, 3, spec.input_size, spec.input_size, device="meta")
    assert tuple(module(x).shape) == (2, spec.dim) == (2, info.dim)
    assert info.source and info.license and spec.weights_env.startswith("BENCH_WEIGHTS_")

    official = _official(name, module)
    _anchors_hold(name, official)
    matched = match_state_dict(module.state_dict(), official, spec.keymaps, what=name, where=f"{name}.bin")
    assert set(matched.state) == set(module.state_dict()) - set(matched.init_only)


@pytest.mark.parametrize("name", SHIPPED)
def test_renamed_or_reshaped_key_is_refused_by_name(name: str) -> None:
    if name in HF:
        pytest.importorskip("transformers")
    spec = E.encoder_spec(name)
    module = E.build_module(name, device="meta")
    official = _official(name, module)
    flat = official.get("model") or official.get("teacher") or official
    key = next(k for k, v in flat.items() if v.ndim >= 2)
    renamed = dict(flat)
    renamed[key + "_renamed"] = renamed.pop(key)
    with pytest.raises(WeightsError, match=re.escape(key.split(".")[-1] + "_renamed")):
        match_state_dict(module.state_dict(), _rewrap(official, renamed), spec.keymaps, what=name, where="f.bin")
    reshaped = dict(flat)
    reshaped[key] = torch.empty(*[d + 1 for d in flat[key].shape], device="meta")
    with pytest.raises(WeightsError, match="shape mismatch"):
        match_state_dict(module.state_dict(), _rewrap(official, reshaped), spec.keymaps, what=name, where="f.bin")


def _rewrap(official: dict, flat: dict) -> dict:
    for box in ("model", "teacher"):
        if box in official:
            return {box: flat}
    return flat


def test_overlay_declaration_wins_and_bad_ones_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.encoders import ensure_registered
    from bench.resources import ConfigError

    (tmp_path / "encoders").mkdir()
    monkeypatch.setenv("BENCH_CONFIG", str(tmp_path))
    (tmp_path / "encoders" / "mine.yaml").write_text(
        "dim: 64\nbuilder: {kind: timm, arch: vit_tiny_patch16_224, kwargs: {embed_dim: 64, depth: 1, "
        "num_heads: 2, num_classes: 0}}\noutput: mean\ninput_size: 224\nmean: [0.5, 0.5, 0.5]\n"
        "std: [0.5, 0.5, 0.5]\nsource: test\n")
    ensure_registered()
    assert E.encoder_spec("mine").dim == 64 and "mine" in encoder_table()
    (tmp_path / "encoders" / "bad.yaml").write_text(
        "dim: 64\nbuilder: {kind: keras, arch: x}\noutput: mean\ninput_size: 224\nmean: [0.5, 0.5, 0.5]\n"
        "std: [0.5, 0.5, 0.5]\nsource: test\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: builder\.kind must be one of timm, open_clip"):
        ensure_registered()
    monkeypatch.delenv("BENCH_CONFIG")
    monkeypatch.chdir(tmp_path)  # no ./configs either
    ensure_registered()
    assert "mine" not in E.list_encoders() and "mine" not in encoder_table()


# fingerprints and a feature digest of the four encoders written in Python before they became
# declarations, computed by that code (random seeded weights; torch 2.14.1, timm 1.0.31): the
# declarations build the same networks, so caches keep their keys and the features their bits
BEFORE = {("resnet50", False): ("144906029a16ea2f", "565a5f9d436db812"),
          ("conch", True): ("19e117557a4f22c4", "204593a32edc5335"),
          ("gigapath", True): ("259ecbe43b62574f", "2c031c028e8624de"),
          ("hipt-vit256", True): ("c5af900d15a05f9a", "ef72a1e896d1b638"),
          ("hipt-vit256", False): ("c1838bf48255a62d", "5423f001482feb8b")}


@pytest.mark.parametrize("name,standin", sorted(BEFORE))
def test_moved_encoders_keep_fingerprints_and_features(name: str, standin: bool, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    import numpy as np
    import timm

    if (torch.__version__.split("+")[0], timm.__version__) != ("2.14.1", "1.0.31"):
        pytest.skip("the digests were recorded with torch 2.14.1 and timm 1.0.31 (seeded random init)")
    monkeypatch.setenv("BENCH_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("BENCH_WEIGHTS_RESNET50", "BENCH_WEIGHTS_CONCH", "BENCH_WEIGHTS_GIGAPATH", "BENCH_WEIGHTS_HIPT_VIT256"):
        monkeypatch.delenv(var, raising=False)
    enc = E.get_encoder(name, allow_random=True, standin=standin)
    batch = np.random.default_rng(0).integers(0, 255, size=(2, 256, 256, 3), dtype=np.uint8)
    digest = hashlib.sha256(enc(batch).numpy().tobytes()).hexdigest()[:16]
    assert (enc.fingerprint, digest) == BEFORE[(name, standin)]
