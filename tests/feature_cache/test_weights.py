"""Published weights load on the first try: for every pretrained part of Table 2, a random state dict
written in exactly the release's layout and container (key names and shapes from the official
architecture: torchvision/timm where they build it, else a table written from the original source)
loads through the one strict matcher, and a renamed or a reshaped key fails with a message naming it.

Big tensors (DINO's 65,536-way projection head, ViT-g blocks) are stored as stride-0 views of one
number, so a release-size checkpoint is a few kB on disk; GigaPath's ViT-g and CONCH's ViT-B are
checked at full size on the meta device and loaded from files at a tiny width (same key names).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Callable

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

import bench.registry  # noqa: E402,F401 -- registers the declared encoders (configs/encoders)
import feature_cache.encoders as E  # noqa: E402
from feature_cache.weights import WeightsError, WeightsProvenance, match_state_dict  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-hub"))


def _fill(shapes: dict[str, tuple[int, ...]], seed: int = 0, big: int = 300_000) -> dict[str, "torch.Tensor"]:
    """Random tensors of the table's shapes; those over ``big`` elements as a stride-0 view of one
    random number (loads like any tensor; costs 4 bytes in the file)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in shapes.items():
        n = math.prod(s)
        out[k] = (torch.randn((), generator=g).expand(s) if n > big else torch.randn(s, generator=g))
    return out


def _shapes(module: "torch.nn.Module", prefix: str = "") -> dict[str, tuple[int, ...]]:
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def _dino(backbone: dict[str, tuple[int, ...]], in_dim: int, out_dim: int = 65536) -> dict[str, tuple[int, ...]]:
    """DINO's MultiCropWrapper keys (facebookresearch/dino, as HIPT and LongViT ran it): backbone.*
    and the default head (3 layers, hidden 2048, bottleneck 256, weight-normed last layer)."""
    head = {"head.mlp.0.weight": (2048, in_dim), "head.mlp.0.bias": (2048,), "head.mlp.2.weight": (2048, 2048),
            "head.mlp.2.bias": (2048,), "head.mlp.4.weight": (256, 2048), "head.mlp.4.bias": (256,),
            "head.last_layer.weight_g": (out_dim, 1), "head.last_layer.weight_v": (out_dim, 256)}
    return {f"backbone.{k}": v for k, v in backbone.items()} | head


def _dino_file(teacher: dict, student: dict | None = None) -> dict:
    """The whole DINO training checkpoint (main_dino.py's save_dict), args included."""
    student = student if student is not None else {f"module.{k}": v for k, v in teacher.items()}
    return {"student": student, "teacher": teacher, "optimizer": {"state": {}, "param_groups": []},
            "epoch": 100, "args": argparse.Namespace(arch="vit_small", out_dim=65536),
            "dino_loss": {"center": torch.zeros(1, 8)}}


def _vit_blocks(prefix: str, depth: int, dim: int, hidden: int, qkv_bias: bool = True,
                layerscale: bool = False) -> dict[str, tuple[int, ...]]:
    """timm / DINO ``Block`` keys."""
    out: dict[str, tuple[int, ...]] = {}
    for i in range(depth):
        b = f"{prefix}blocks.{i}."
        out |= {b + "norm1.weight": (dim,), b + "norm1.bias": (dim,), b + "attn.qkv.weight": (3 * dim, dim)}
        if qkv_bias:
            out[b + "attn.qkv.bias"] = (3 * dim,)
        out |= {b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,), b + "norm2.weight": (dim,),
                b + "norm2.bias": (dim,), b + "mlp.fc1.weight": (hidden, dim), b + "mlp.fc1.bias": (hidden,),
                b + "mlp.fc2.weight": (dim, hidden // (2 if layerscale else 1)), b + "mlp.fc2.bias": (dim,)}
        if layerscale:
            out |= {b + "ls1.gamma": (dim,), b + "ls2.gamma": (dim,)}
    return out


def _torchscale_layers(prefix: str, depth: int, dim: int, ffn: int) -> dict[str, tuple[int, ...]]:
    """torchscale ``EncoderLayer`` with sub-LN (DilatedAttention + FeedForwardNetwork) keys."""
    out: dict[str, tuple[int, ...]] = {}
    for i in range(depth):
        b = f"{prefix}layers.{i}."
        for p in ("k_proj", "v_proj", "q_proj", "out_proj"):
            out |= {f"{b}self_attn.{p}.weight": (dim, dim), f"{b}self_attn.{p}.bias": (dim,)}
        out |= {f"{b}self_attn.inner_attn_ln.weight": (dim,), f"{b}self_attn.inner_attn_ln.bias": (dim,),
                f"{b}self_attn_layer_norm.weight": (dim,), f"{b}self_attn_layer_norm.bias": (dim,),
                f"{b}ffn.fc1.weight": (ffn, dim), f"{b}ffn.fc1.bias": (ffn,), f"{b}ffn.fc2.weight": (dim, ffn),
                f"{b}ffn.fc2.bias": (dim,), f"{b}ffn.ffn_layernorm.weight": (ffn,),
                f"{b}ffn.ffn_layernorm.bias": (ffn,), f"{b}final_layer_norm.weight": (dim,),
                f"{b}final_layer_norm.bias": (dim,)}
    return out


# ------------------------------------------------------------------ the release tables


def resnet50_torchvision() -> dict[str, tuple[int, ...]]:
    """torchvision's resnet50 (what resnet50-0676ba61.pth holds), without BatchNorm counters as in
    the older torchvision files."""
    import torchvision

    with torch.device("meta"):
        net = torchvision.models.resnet50()
    return {k: v for k, v in _shapes(net).items() if not k.endswith("num_batches_tracked")}


def vit256_teacher() -> dict[str, tuple[int, ...]]:
    """HIPT vision_transformer.vit_small(patch_size=16): ViT-S/16, img 224, qkv bias."""
    backbone = {"cls_token": (1, 1, 384), "pos_embed": (1, 197, 384), "patch_embed.proj.weight": (384, 3, 16, 16),
                "patch_embed.proj.bias": (384,)} | _vit_blocks("", 12, 384, 1536) | {
                "norm.weight": (384,), "norm.bias": (384,)}
    return _dino(backbone, 384)


def vit4k_teacher() -> dict[str, tuple[int, ...]]:
    """HIPT vision_transformer4k.vit4k_xs: phi Linear(384, 192), 6 blocks of 192, pos table 14² + 1."""
    backbone = {"phi.0.weight": (192, 384), "phi.0.bias": (192,), "cls_token": (1, 1, 192),
                "pos_embed": (1, 197, 192)} | _vit_blocks("", 6, 192, 768) | {"norm.weight": (192,), "norm.bias": (192,)}
    return _dino(backbone, 192)


def slide_encoder(depth: int = 12, dim: int = 768, in_dim: int = 1536) -> dict[str, tuple[int, ...]]:
    """prov-gigapath slide_encoder.LongNetViT (gigapath_slide_enc12l768d): pos_embed is a
    non-persistent buffer, so not in the file."""
    return {"cls_token": (1, 1, dim), "patch_embed.proj.weight": (dim, in_dim), "patch_embed.proj.bias": (dim,)} | (
        _torchscale_layers("encoder.", depth, dim, 4 * dim)) | {
        "encoder.layer_norm.weight": (dim,), "encoder.layer_norm.bias": (dim,), "norm.weight": (dim,),
        "norm.bias": (dim,)}


def vim_ti() -> dict[str, tuple[int, ...]]:
    """hustvl/Vim models_mamba.py, vim_tiny_patch16_224_bimambav2_..._midclstok_div2: 192-d, 24
    layers, d_inner 384, dt_rank 12, d_state 16, RMSNorm (weight only), 1000-class head."""
    out = {"cls_token": (1, 1, 192), "pos_embed": (1, 197, 192), "patch_embed.proj.weight": (192, 3, 16, 16),
           "patch_embed.proj.bias": (192,), "head.weight": (1000, 192), "head.bias": (1000,),
           "norm_f.weight": (192,)}
    for i in range(24):
        m = f"layers.{i}.mixer."
        out |= {f"layers.{i}.norm.weight": (192,), m + "in_proj.weight": (768, 192), m + "out_proj.weight": (192, 384)}
        for s in ("", "_b"):
            out |= {f"{m}conv1d{s}.weight": (384, 1, 4), f"{m}conv1d{s}.bias": (384,),
                    f"{m}x_proj{s}.weight": (44, 384), f"{m}dt_proj{s}.weight": (384, 12),
                    f"{m}dt_proj{s}.bias": (384,), f"{m}A{s}_log": (384, 16), f"{m}D{s}": (384,)}
    return out


def longvit_teacher() -> dict[str, tuple[int, ...]]:
    """torchscale examples/longvit/pretraining/vision_transformer.vit_small at 1024² (patch 32, no
    CLS, normalize_output=False, then its own norm) under DINO."""
    backbone = {"patch_embed.proj.weight": (384, 3, 32, 32), "patch_embed.proj.bias": (384,),
                "pos_embed": (1, 1024, 384)} | _torchscale_layers("encoder.", 12, 384, 1536) | {
                "norm.weight": (384,), "norm.bias": (384,)}
    return _dino(backbone, 384)


# ------------------------------------------------------------------ loaders under test


def _load_encoder(name: str) -> Callable[[Path], WeightsProvenance]:
    def load(path: Path) -> WeightsProvenance:
        enc = E.get_encoder(name, weights=path)
        enc.model  # noqa: B018 -- builds: reads and matches the file
        return enc.weights_provenance[0]
    return load


def _load_vit4k(path: Path) -> WeightsProvenance:
    from baselines.hipt import HIPT

    return HIPT(4, weights_4k=path).weights_provenance[0]


def _load_slide(path: Path) -> WeightsProvenance:
    from baselines.prov_gigapath import ProvGigaPath

    cfg = dict(in_dim=16, embed_dim=32, depth=3, heads=4, feat_layers=(1, 2), segment_lengths=[8, 16, 32, 64, 128])
    return ProvGigaPath(4, **cfg, weights=path).weights_provenance[0]


def _load_init(builder: str) -> Callable[[Path], WeightsProvenance]:
    def load(path: Path) -> WeightsProvenance:
        from bench.engine.pretrain import load_init
        from bench.registry import build_model

        model = build_model(builder, 4)
        report = load_init(model, path)
        assert model.weights_provenance == [report.provenance]
        return report.provenance
    return load


# (component, release table, container, loader, a key to rename and one to reshape)
CASES = {
    "resnet50": (resnet50_torchvision, None, _load_encoder("resnet50"), "layer1.0.conv1.weight", "layer3.5.bn3.bias"),
    "hipt-vit256": (vit256_teacher, "dino", _load_encoder("hipt-vit256"), "backbone.blocks.3.attn.qkv.weight",
                    "backbone.pos_embed"),
    "hipt-vit4k": (vit4k_teacher, "dino", _load_vit4k, "backbone.phi.0.weight", "backbone.blocks.5.mlp.fc2.weight"),
    "gigapath-slide": (lambda: slide_encoder(depth=3, dim=32, in_dim=16), "model", _load_slide,
                       "encoder.layers.2.ffn.ffn_layernorm.weight", "cls_token"),
    "vim-ti": (vim_ti, "model", _load_init("vim-ti"), "layers.7.mixer.A_b_log", "patch_embed.proj.weight"),
    "longvit-s": (longvit_teacher, "dino", _load_init("longvit-s"), "backbone.encoder.layers.4.self_attn.q_proj.bias",
                  "backbone.pos_embed"),
}


def _write(name: str, tmp_path: Path, edit: Callable[[dict], None] | None = None) -> tuple[Path, dict]:
    table, container, *_ = CASES[name]
    sd = _fill(table())
    if edit is not None:
        edit(sd)
    obj = sd if container is None else _dino_file(sd) if container == "dino" else {container: sd}
    path = tmp_path / f"{name}.pth"
    torch.save(obj, path)
    return path, sd


@pytest.mark.parametrize("name", list(CASES))
def test_release_layout_loads(name: str, tmp_path: Path) -> None:
    path, sd = _write(name, tmp_path)
    prov = CASES[name][2](path)
    assert prov.source == "explicit" and prov.path == str(path) and len(prov.sha256) == 64
    assert prov.mapping and prov.n_keys and prov.n_keys > 0
    dropped = set(prov.dropped or ())
    if CASES[name][1] == "dino":  # DINO's projection head, never loaded
        assert {k for k in sd if k.startswith("head.")} == dropped
    if name == "resnet50":
        assert dropped == {k for k in sd if k.startswith(("layer4.", "fc."))}
    if name == "vim-ti":
        assert dropped == {"head.weight", "head.bias"}


def test_release_values_land_where_they_belong(tmp_path: Path) -> None:
    """Spot checks of the renames and the one layout transform, value for value."""
    from bench.engine.pretrain import load_init
    from bench.registry import build_model

    path, sd = _write("longvit-s", tmp_path)
    model = build_model("longvit-s", 4)
    load_init(model, path)
    pos = sd["backbone.pos_embed"]  # (1, 32·32, C) row-major -> ours (1, C, 32, 32)
    assert torch.equal(model.pos_embed[0, :, 3, 7], pos[0, 3 * 32 + 7])
    assert torch.equal(model.layers[4].fc1.weight, sd["backbone.encoder.layers.4.ffn.fc1.weight"])
    assert torch.equal(model.layer_norm.weight, sd["backbone.norm.weight"])
    path, sd = _write("vim-ti", tmp_path)
    vim = build_model("vim-ti", 4)
    head = vim.head.weight.detach().clone()
    load_init(vim, path)
    assert torch.equal(vim.patch_embed.weight, sd["patch_embed.proj.weight"])
    assert torch.equal(vim.layers[7].mixer.A_b_log, sd["layers.7.mixer.A_b_log"])
    assert torch.equal(vim.head.weight, head)  # the task head keeps its initialisation
    path, sd = _write("resnet50", tmp_path)
    enc = E.get_encoder("resnet50", weights=path)
    assert torch.equal(enc.model.state_dict()["body.layer2.1.conv2.weight"], sd["layer2.1.conv2.weight"])
    assert int(enc.model.state_dict()["body.bn1.num_batches_tracked"]) == 0  # absent from old files


@pytest.mark.parametrize("name", list(CASES))
def test_renamed_key_is_named(name: str, tmp_path: Path) -> None:
    key = CASES[name][3]
    path, _ = _write(name, tmp_path, lambda sd: sd.__setitem__(key.replace(".", "_", 1), sd.pop(key)))
    with pytest.raises(WeightsError) as err:
        CASES[name][2](path)
    msg = str(err.value)
    assert "missing keys" in msg and "unexpected keys" in msg and key.replace(".", "_", 1) in msg, msg
    assert str(path) in msg


@pytest.mark.parametrize("name", list(CASES))
def test_reshaped_key_is_named(name: str, tmp_path: Path) -> None:
    key = CASES[name][4]

    def reshape(sd: dict) -> None:
        t = sd[key]
        sd[key] = torch.zeros(*t.shape[:-1], t.shape[-1] + 1)

    path, sd = _write(name, tmp_path, reshape)
    with pytest.raises(WeightsError) as err:
        CASES[name][2](path)
    msg = str(err.value)
    shape = "(" + ", ".join(map(str, sd[key].shape)) + ")"
    assert "shape mismatches" in msg and key in msg and shape in msg, msg


def test_wrong_container_is_named(tmp_path: Path) -> None:
    """HIPT's loaders take the DINO teacher: a file without one says what it found."""
    torch.save({"student": _fill(vit4k_teacher())}, tmp_path / "student_only.pth")
    with pytest.raises(WeightsError, match=r"expected \{'teacher': state_dict\}.*found top-level \['student'\]"):
        _load_vit4k(tmp_path / "student_only.pth")


# ------------------------------------------------------------------ the two large encoders


def _conch_release(trunk: dict) -> dict[str, tuple[int, ...]]:
    """mahmoodlab/CONCH conch_ViT-B-16: CoCa(visual = VisualModel(timm ViT trunk, attentional
    poolers, proj_contrast), text = TextTransformer, text_decoder = MultimodalTransformer,
    logit_scale). The visual part from timm/open_clip modules built as CONCH builds them; the text
    side's keys (all dropped) from CONCH's transformer.py, for its first block."""
    from open_clip.transformer import AttentionalPooler
    from timm.models.vision_transformer import VisionTransformer

    cfg = dict(embed_dim=768, depth=12, num_heads=12) | trunk
    with torch.device("meta"):
        vit = VisionTransformer(mlp_ratio=4, img_size=448, patch_size=16, num_classes=0, dynamic_img_size=True, **cfg)
        pool_c = AttentionalPooler(d_model=512, context_dim=cfg["embed_dim"], n_head=8, n_queries=1)
        pool_t = AttentionalPooler(d_model=768, context_dim=cfg["embed_dim"], n_head=8, n_queries=256)
    out = _shapes(vit, "visual.trunk.") | _shapes(pool_c, "visual.attn_pool_contrast.") | {
        "visual.ln_contrast.weight": (512,), "visual.ln_contrast.bias": (512,), "visual.proj_contrast": (512, 512)}
    out |= _shapes(pool_t, "visual.attn_pool_caption.") | {"visual.ln_caption.weight": (768,),
                                                            "visual.ln_caption.bias": (768,)}
    out |= {"text.cls_emb": (768,), "text.token_embedding.weight": (32007, 768),
            "text.positional_embedding": (128, 768), "text.transformer.resblocks.0.attn.in_proj_weight": (2304, 768),
            "text.ln_final.weight": (768,), "text.text_projection": (768, 512),
            "text_decoder.resblocks.0.ln_1.weight": (768,), "text_decoder.cross_attn.0.attn.in_proj_weight": (2304, 768),
            "text_decoder.text_projection": (768, 32007), "logit_scale": ()}
    return out


def _gigapath_release(**overrides) -> dict[str, tuple[int, ...]]:
    """prov-gigapath/prov-gigapath config.json: timm vit_giant_patch14_dinov2 with img 224, patch 16,
    1536-d, 40 blocks, 24 heads, init_values 1e-5, mlp_ratio 5.33334, num_classes 0."""
    args = {**E.GIGAPATH_TIMM, **overrides}
    with torch.device("meta"):
        return _shapes(timm.create_model("vit_giant_patch14_dinov2", pretrained=False, **args))


def _meta(shapes: dict[str, tuple[int, ...]]) -> dict[str, "torch.Tensor"]:
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


def test_full_size_release_key_sets_match_on_meta() -> None:
    """The real key sets and shapes, at full size, without allocating: GigaPath's ViT-g (1.1B
    parameters; also in DINOv2's original layout, which timm converts by renaming), CONCH's
    ViT-B/16 at 448 px with its text tower, and the full-size slide encoder."""
    for name, release, n_dropped in (("gigapath", _gigapath_release(), 0), ("conch", _conch_release({}), None)):
        own = E.build_module(name, device="meta").state_dict()
        m = match_state_dict(own, _meta(release), E.encoder_spec(name).keymaps, what=name)
        assert set(m.state) == set(own) and (n_dropped is None or len(m.dropped) == n_dropped)
    conch_dropped = set(m.dropped)
    assert {"logit_scale", "visual.proj_contrast", "text.token_embedding.weight"} <= conch_dropped
    assert not any(k.startswith(("visual.trunk.", "visual.attn_pool_contrast.")) for k in conch_dropped)
    dinov2 = {k.replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3."): v for k, v in _gigapath_release().items()}
    dinov2["mask_token"] = (1, 1536)
    own = E.build_module("gigapath", device="meta").state_dict()
    m = match_state_dict(own, _meta(dinov2), E.encoder_spec("gigapath").keymaps, what="gigapath")
    assert m.keymap.name == "gigapath dinov2 original" and m.dropped == ["mask_token"]
    assert own["blocks.0.mlp.fc1.weight"].shape == (8192, 1536)  # SwiGLU packed: 2 x 4096

    from baselines.prov_gigapath import ProvGigaPath
    from baselines.weights import GIGAPATH_SLIDE

    with torch.device("meta"):
        slide = ProvGigaPath(4).slide_encoder_modules()
    own = slide.state_dict()
    m = match_state_dict(own, {"model": _meta(slide_encoder())}, GIGAPATH_SLIDE.keymaps, what="slide")
    assert set(m.state) == set(own) and sum(math.prod(v.shape) for v in own.values()) == 86_330_880


@pytest.mark.parametrize("name", ["conch", "gigapath"])
def test_large_encoders_load_from_a_tiny_release(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same key names at a 1-block, 48-wide trunk (the loader supports the width through the
    spec's builder): loads, and a renamed / reshaped key fails naming it."""
    import dataclasses
    from functools import partial

    small = dict(embed_dim=48, depth=1, num_heads=2)
    build = partial(E.build_gigapath, **small) if name == "gigapath" else partial(E.build_conch_visual, **small)
    spec = dataclasses.replace(E.encoder_spec(name), name=f"tiny-{name}", build=build, weights_env="BENCH_WEIGHTS_TINY")
    monkeypatch.setitem(E.REGISTRY, spec.name, spec)
    release = _gigapath_release(**small) if name == "gigapath" else _conch_release(small)
    sd = _fill(release)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    prov = _load_encoder(spec.name)(tmp_path / "pytorch_model.bin")
    assert prov.n_keys == len(E.build_module(spec.name).state_dict()) and prov.source == "explicit"
    key = "blocks.0.attn.qkv.weight" if name == "gigapath" else "visual.trunk.blocks.0.attn.qkv.weight"
    sd[key.replace("qkv", "qkv_")] = sd.pop(key)
    torch.save(sd, tmp_path / "renamed.bin")
    with pytest.raises(E.EncoderWeightsError, match=key.replace("qkv", "qkv_").replace(".", r"\.")):
        _load_encoder(spec.name)(tmp_path / "renamed.bin")
    sd[key] = torch.zeros(3, 3)
    del sd[key.replace("qkv", "qkv_")]
    torch.save(sd, tmp_path / "reshaped.bin")
    with pytest.raises(E.EncoderWeightsError, match=r"shape mismatches.*<- " + key.replace(".", r"\.") + r" \(3, 3\)"):
        _load_encoder(spec.name)(tmp_path / "reshaped.bin")


def test_timm_resnet_layout_is_torchvisions() -> None:
    """timm's resnet50 (the layout of timm/resnet50.tv_in1k) has torchvision's key set and shapes,
    BatchNorm counters included: one key map serves both."""
    with torch.device("meta"):
        t = _shapes(timm.create_model("resnet50", pretrained=False))
    tv = resnet50_torchvision()
    assert {k: v for k, v in t.items() if not k.endswith("num_batches_tracked")} == tv
    own = E.build_module("resnet50").state_dict()
    m = match_state_dict(own, _meta(t), E.encoder_spec("resnet50").keymaps, what="resnet50")
    assert not m.defaulted and len(m.dropped) == sum(k.startswith(("layer4.", "fc.")) for k in t)
