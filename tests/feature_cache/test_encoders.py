"""Encoders: registry facts, full-size shapes on the meta device, weight resolution order,
loading real-format checkpoints into tiny stand-ins, preprocessing against torchvision, and
fingerprints that never re-hash a large weight file."""

from __future__ import annotations

import dataclasses
import hashlib
from functools import partial
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("open_clip")

import bench.registry  # noqa: E402,F401 -- registers the declared encoders (configs/encoders)
import feature_cache.encoders as E  # noqa: E402


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Register stand-ins with the real specs' preprocessing, key names and fingerprint rules but
    a 1-block, 64-wide trunk, so loading code runs on real checkpoint layouts in milliseconds."""
    made = {}
    small_vit = dict(embed_dim=48, depth=1, num_heads=2)
    for name, build in (("gigapath", partial(E.build_gigapath, **small_vit)),
                        ("conch", partial(E.build_conch_visual, **small_vit))):
        spec = dataclasses.replace(E.REGISTRY[name], name=f"tiny-{name}", build=build,
                                   weights_env=f"BENCH_WEIGHTS_TINY_{name.upper()}",
                                   dim=48 if name == "gigapath" else 512)
        monkeypatch.setitem(E.REGISTRY, spec.name, spec)
        made[name] = spec
    monkeypatch.setenv("BENCH_STATE_DIR", str(tmp_path / "state"))  # remembered weight hashes
    return made


def test_registry_facts() -> None:
    assert {"resnet50", "conch", "gigapath"} <= set(E.list_encoders())
    facts = {n: (E.encoder_spec(n).dim, E.encoder_spec(n).patch_size, E.encoder_spec(n).magnification,
                 E.encoder_spec(n).input_size) for n in ("resnet50", "conch", "gigapath")}
    assert facts == {"resnet50": (1024, 256, 20.0, 224), "conch": (512, 256, 20.0, 448),
                     "gigapath": (1536, 256, 20.0, 224)}
    assert {n: (E.encoder_spec(n).precision_cuda, E.encoder_spec(n).precision_cuda_fallback)
            for n in ("resnet50", "conch", "gigapath")} == {
        "resnet50": ("bf16", "fp32"), "conch": ("bf16", "fp32"), "gigapath": ("bf16", "fp16")}
    assert E.encoder_spec("gigapath").fingerprint_by == "file"


def test_full_size_shapes_on_meta() -> None:
    giga = E.build_module("gigapath", device="meta")
    # REFERENCE.md: ViT-g/14 as GigaPath configures it has 1,134,953,984 parameters
    assert sum(p.numel() for p in giga.parameters()) == 1_134_953_984
    from bench.registry import SOURCE_PARAMS

    assert SOURCE_PARAMS["gigapath"] == 1_134_953_984  # what the tables' Params column adds for Prov-GigaPath
    assert tuple(giga(torch.empty(2, 3, 224, 224, device="meta")).shape) == (2, 1536)
    conch = E.build_module("conch", device="meta")
    assert tuple(conch(torch.empty(2, 3, 448, 448, device="meta")).shape) == (2, 512)
    # the trunk is a plain ViT-B/16: 12 blocks of 768
    assert len(conch.trunk.blocks) == 12 and conch.trunk.embed_dim == 768
    res = E.build_module("resnet50", device="meta")
    assert tuple(res(torch.empty(2, 3, 224, 224, device="meta")).shape) == (2, 1024)


def _save(sd: dict, path: Path) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    return path


@pytest.mark.parametrize("fmt", [".bin", ".safetensors"])
def test_checkpoint_layouts_load_and_reproduce(tiny, tmp_path: Path, fmt: str) -> None:
    x = torch.randint(0, 256, (3, 256, 256, 3), dtype=torch.uint8)
    for name, prefix, extra in (("gigapath", "", {}),
                                ("conch", "visual.", {"text.token_embedding.weight": torch.ones(4, 8),
                                                      "visual.proj_contrast": torch.ones(512, 512)})):
        spec = tiny[name]
        torch.manual_seed(123)
        src = spec.build().eval()  # "released" weights: a different init than the seeded one
        sd = {prefix + k: v for k, v in src.state_dict().items()} | extra
        path = _save(sd, tmp_path / f"{name}{fmt}")
        enc = E.get_encoder(spec.name, weights=path)
        assert not enc.random_weights and "explicit path" in enc.weights_source
        with torch.no_grad():
            want = src(enc.prepare_batch(x))
        got = enc(x)
        assert got.shape == (3, spec.dim) and got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_wrong_checkpoint_names_the_problem(tiny, tmp_path: Path) -> None:
    path = _save({"blocks.0.norm1.weight": torch.ones(3)}, tmp_path / "bad.bin")
    with pytest.raises(E.EncoderWeightsError, match="does not fit encoder 'tiny-gigapath'.*missing"):
        E.get_encoder("tiny-gigapath", weights=path)


def test_file_fingerprint_hashes_identity_once(tiny, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BENCH_STATE_DIR", str(tmp_path / "state"))
    spec = tiny["gigapath"]
    path = _save(spec.build().state_dict(), tmp_path / "w.bin")
    truth = hashlib.sha256(path.read_bytes()).hexdigest()
    assert E.file_sha256(path) == truth
    calls = []
    real_open = open
    with monkeypatch.context() as m:
        m.setattr("builtins.open", lambda p, *a, **k: (calls.append(str(p)), real_open(p, *a, **k))[1])
        assert E.file_sha256(path) == truth  # remembered: the weights are not read again
    assert str(path.resolve()) not in calls
    # an HF cache blob is named by its SHA-256: no read at all
    blob = tmp_path / "hub" / "blobs" / ("ab" * 32)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"x")
    link = tmp_path / "hub" / "snap.bin"
    link.symlink_to(blob)
    assert E.file_sha256(link) == "ab" * 32
    # two different weight files never share a fingerprint; the same file always does
    a = E.get_encoder(spec.name, weights=path).fingerprint
    assert E.get_encoder(spec.name, weights=path).fingerprint == a
    torch.manual_seed(7)
    other = _save(spec.build().state_dict(), tmp_path / "w2.bin")
    assert E.get_encoder(spec.name, weights=other).fingerprint != a


def test_resolution_order_env_cache_download(tiny, tmp_path: Path, monkeypatch) -> None:
    spec = tiny["gigapath"]
    monkeypatch.setitem(E.REGISTRY, spec.name, dataclasses.replace(
        spec, hub_files=(("tiny/repo", "pytorch_model.bin"),), download=("tiny/repo", "pytorch_model.bin")))
    w_env = _save(spec.build().state_dict(), tmp_path / "env.bin")
    w_hub = _save(spec.build().state_dict(), tmp_path / "hub.bin")
    w_dl = _save(spec.build().state_dict(), tmp_path / "dl.bin")
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo_id, filename: str(w_hub))
    downloads = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo_id, filename: (downloads.append(repo_id), str(w_dl))[1])
    monkeypatch.setenv(spec.weights_env, str(w_env))
    assert E.get_encoder(spec.name).weights_source.startswith(f"${spec.weights_env}")
    monkeypatch.delenv(spec.weights_env)
    assert E.get_encoder(spec.name).weights_source.startswith("local hub cache")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo_id, filename: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(E.EncoderWeightsError) as err:
        E.get_encoder(spec.name)
    assert downloads == []  # offline: never tried
    msg = str(err.value)
    assert "HF_HUB_OFFLINE" in msg and spec.weights_env in msg and "huggingface-cli download tiny/repo" in msg
    assert "HF_TOKEN" in msg  # gated repositories need an accepted licence
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(E.resolve, "hub_unreachable", lambda: "")  # pretend the hub answers the probe
    enc = E.get_encoder(spec.name)
    assert downloads == ["tiny/repo"] and enc.weights_source.startswith("hub download")


def test_random_weights_are_marked_seeded_and_cheap_to_fingerprint(tiny) -> None:
    a = E.get_encoder("tiny-gigapath", allow_random=True)
    b = E.get_encoder("tiny-gigapath", allow_random=True)
    assert a.random_weights and a.weights_source == "random"
    assert a.fingerprint == b.fingerprint
    x = torch.randint(0, 256, (2, 256, 256, 3), dtype=torch.uint8)
    torch.testing.assert_close(a(x), b(x))  # seeded: every worker computes the same numbers


def test_real_names_fail_clearly_offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("BENCH_WEIGHTS_GIGAPATH", raising=False)
    monkeypatch.setattr("feature_cache.weights.hub_cache_file", lambda repo_id, filename: None)
    monkeypatch.setattr("feature_cache.weights.torch_hub_dir", lambda: Path("/nonexistent-torch-hub"))
    with pytest.raises(E.EncoderWeightsError, match="BENCH_WEIGHTS_GIGAPATH.*prov-gigapath/prov-gigapath"):
        E.get_encoder("gigapath")  # fails before building anything


@pytest.mark.parametrize("name", ["resnet50", "conch", "gigapath", "hipt-vit256"])
def test_encoders_find_weights_as_every_component_does(name, tmp_path, monkeypatch) -> None:
    """An encoder resolves its file by the one finder (feature_cache.weights.find_weights): the same
    file, origin and error text for an explicit path, the env var and the hub / torch hub caches."""
    from feature_cache import weights as W

    spec = E.encoder_spec(name)
    source = spec.weights_source()
    monkeypatch.delenv(spec.weights_env, raising=False)
    monkeypatch.setattr(W, "hub_cache_file", lambda repo_id, filename: None)
    monkeypatch.setattr(W, "torch_hub_dir", lambda: tmp_path / "torch-hub")
    cases = {"explicit": (tmp_path / "missing.pth", None), "env": (None, tmp_path / "also-missing.pth")}
    for kind, (explicit, env) in cases.items():
        if env is not None:
            monkeypatch.setenv(spec.weights_env, str(env))
        with pytest.raises(W.WeightsError) as generic:
            W.find_weights(explicit, source)
        with pytest.raises(E.EncoderWeightsError) as encoder:
            E.resolve.resolve_weights(spec, explicit)
        assert str(encoder.value) == str(generic.value), kind
        monkeypatch.delenv(spec.weights_env, raising=False)
    blob = tmp_path / "hub" / "blob.bin"
    blob.parent.mkdir()
    blob.write_bytes(b"x")
    if source.hub:
        repo_id, filename = source.hub[0]
        monkeypatch.setattr(W, "hub_cache_file", lambda r, f: blob if (r, f) == (repo_id, filename) else None)
        path, how, _ = E.resolve.resolve_weights(spec, None)
        assert (path, how) == (blob, f"local hub cache {repo_id}") == W.find_weights(None, source)[::2]
    if source.torch_hub:
        monkeypatch.setattr(W, "hub_cache_file", lambda r, f: None)
        (tmp_path / "torch-hub").mkdir()
        hit = tmp_path / "torch-hub" / source.torch_hub[0]
        hit.write_bytes(b"x")
        assert E.resolve.resolve_weights(spec, None)[:2] == (hit, "torch hub cache")


def test_preprocessing_matches_the_authors_transforms(tiny) -> None:
    tv = pytest.importorskip("torchvision.transforms")
    from PIL import Image

    rng = np.random.default_rng(0)
    patch = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    enc = E.get_encoder("tiny-gigapath", allow_random=True)
    want = tv.Compose([tv.Resize(256, interpolation=tv.InterpolationMode.BICUBIC),
                       tv.CenterCrop(224), tv.ToTensor(),
                       tv.Normalize(E.IMAGENET_MEAN, E.IMAGENET_STD)])(Image.fromarray(patch))
    torch.testing.assert_close(enc.transform(patch), want, rtol=0, atol=1e-5)
    conch = E.get_encoder("tiny-conch", allow_random=True)
    want = tv.Compose([tv.Resize(448, interpolation=tv.InterpolationMode.BICUBIC),
                       tv.CenterCrop(448), tv.ToTensor(),
                       tv.Normalize(E.OPENAI_CLIP_MEAN, E.OPENAI_CLIP_STD)])(Image.fromarray(patch))
    # upsampling 256 -> 448: PIL's and torch's bicubic kernels differ (a = -0.5 vs -0.75), so
    # compare on a smooth, tissue-like patch where the kernels agree closely
    yy, xx = np.mgrid[0:256, 0:256] / 256.0
    smooth = np.stack([128 + 100 * np.sin(6 * xx + c) * np.cos(4 * yy) for c in (0, 1, 2)], -1)
    patch = smooth.astype(np.uint8)
    want = tv.Compose([tv.Resize(448, interpolation=tv.InterpolationMode.BICUBIC),
                       tv.CenterCrop(448), tv.ToTensor(),
                       tv.Normalize(E.OPENAI_CLIP_MEAN, E.OPENAI_CLIP_STD)])(Image.fromarray(patch))
    got = conch.transform(patch)
    assert got.shape == want.shape == (3, 448, 448)
    # PIL also rounds to uint8: agreement within ~2/255 of the [0, 1] range
    assert float((got - want).abs().max()) < 0.03


def test_extract_with_a_vit_encoder_end_to_end(tiny, tmp_path: Path) -> None:
    """The cache drives a ViT spec (resize 256 -> crop 224, bicubic) like ResNet: features of the
    encoder's dim for every tissue patch, equal to encoding the same patches directly."""
    import feature_cache as fc
    from bench.data.demo import write_pyramid_tiff

    rgb = np.full((1024, 1280, 3), 235, np.uint8)
    rgb[200:800, 300:1000] = (200, 120, 170)  # one block of "tissue"
    slide = tmp_path / "V.tiff"
    write_pyramid_tiff(slide, rgb, mpp=0.5)
    enc = E.get_encoder("tiny-gigapath", allow_random=True)
    cache = fc.FeatureCache(tmp_path / "cache")
    rep = cache.extract({"V": slide}, enc, progress=False, batch_size=4, num_workers=2)
    feats, coords = cache.load("V", enc)
    assert rep.done == ["V"] and feats.shape == (len(coords), 48) and len(coords) >= 4
    with fc.open_slide(slide) as s:
        patches = np.stack([np.asarray(s.read_region((int(x), int(y)), 0, (256, 256)))
                            for x, y in coords])
    torch.testing.assert_close(torch.from_numpy(feats), enc(patches), rtol=1e-4, atol=1e-4)


def test_torchvision_style_resnet_checkpoint_without_bn_counters(tmp_path: Path) -> None:
    """torchvision's ResNet-50 files (what CLAM loads) carry no ``num_batches_tracked`` and do
    carry layer4/fc: both must be accepted, and the numbers must be the file's."""
    src = E.get_encoder("resnet50", allow_random=True)
    sd = {k.split("body.", 1)[-1]: v.clone() for k, v in src.model.state_dict().items()
          if not k.endswith("num_batches_tracked")}
    sd["conv1.weight"] = sd["conv1.weight"] * 0.5  # different numbers than the seeded init
    sd["fc.weight"] = torch.zeros(1000, 2048)
    path = _save(sd, tmp_path / "resnet50-0676ba61.pth")
    enc = E.get_encoder("resnet50", weights=path)
    torch.testing.assert_close(enc.model.state_dict()["body.conv1.weight"], sd["conv1.weight"])
    assert enc.fingerprint != src.fingerprint


def test_unreachable_hub_is_reported_without_downloading(monkeypatch) -> None:
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(E.resolve, "hub_unreachable", lambda: "huggingface.co unreachable (test)")
    tried = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda **kw: tried.append(kw))
    path, why = E.download_weights(E.encoder_spec("resnet50"))
    assert path is None and "unreachable" in why and tried == []


# ------------------------------------------------------------------ stand-ins (random weights only)


@pytest.fixture
def with_standin(tiny, monkeypatch: pytest.MonkeyPatch):
    """tiny-gigapath whose "full" network is 2 blocks of 48 and whose stand-in is 1 block of 32,
    with a fake hub repository to find weights in; counts builds of each."""
    builds = {"full": 0, "standin": 0}

    def full():
        builds["full"] += 1
        return E.build_gigapath(embed_dim=48, depth=2, num_heads=2)

    def standin():
        builds["standin"] += 1
        return E.build_gigapath(embed_dim=32, depth=1, num_heads=2, num_classes=48, global_pool="avg",
                                 init_values=None)

    spec = dataclasses.replace(tiny["gigapath"], build=full, standin_build=standin,
                               standin_arch="ViT/16 1x32", hub_files=(("tiny/giga", "pytorch_model.bin"),),
                               download=("tiny/giga", "pytorch_model.bin"))
    monkeypatch.setitem(E.REGISTRY, spec.name, spec)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(spec.weights_env, raising=False)
    return spec, builds


def _fake_hub(root: Path, repo: str, filename: str, sd: dict) -> Path:
    """The Hugging Face cache layout: blobs/<sha256>, snapshots/<rev>/<file> -> blob, refs/main."""
    base = root / f"models--{repo.replace('/', '--')}"
    root.mkdir(parents=True, exist_ok=True)
    tmp = _save(sd, root / "tmp.bin")
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    (base / "blobs").mkdir(parents=True)
    tmp.rename(base / "blobs" / digest)
    snap = base / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap / filename).symlink_to(base / "blobs" / digest)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text("0" * 40)
    return snap / filename


def test_standin_only_with_random_weights_and_opt_in(with_standin) -> None:
    spec, builds = with_standin
    x = torch.randint(0, 256, (2, 256, 256, 3), dtype=torch.uint8)
    full = E.get_encoder(spec.name, allow_random=True)  # no opt-in: the real architecture
    assert builds == {"full": 1, "standin": 0} and not full.standin
    assert full.weights_label == "random"
    sub = E.get_encoder(spec.name, allow_random=True, standin=True)
    assert builds["standin"] == 1 and sub.standin == "ViT/16 1x32"
    assert sub.weights_label == "random (stand-in ViT/16 1x32)" and sub.random_weights
    assert sub(x).shape == (2, spec.dim) == full(x).shape  # same output dim and transform
    assert sum(p.numel() for p in sub.model.parameters()) < sum(p.numel() for p in full.model.parameters())
    assert sub.fingerprint != full.fingerprint
    with pytest.raises(E.EncoderWeightsError):  # opting in never allows random weights by itself
        E.get_encoder(spec.name, standin=True)


def test_weights_in_the_hub_cache_beat_the_standin(with_standin, tmp_path: Path, monkeypatch) -> None:
    spec, builds = with_standin
    torch.manual_seed(5)
    released = spec.build().eval()
    _fake_hub(tmp_path / "hub", "tiny/giga", "pytorch_model.bin", released.state_dict())
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    enc = E.get_encoder(spec.name, allow_random=True, standin=True)
    assert not enc.random_weights and not enc.standin and builds["standin"] == 0
    assert enc.weights_source.startswith("local hub cache") and enc.weights_label.startswith("pretrained")
    x = torch.randint(0, 256, (2, 256, 256, 3), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), released(enc.prepare_batch(x)))


def test_real_standins_keep_the_encoders_interface() -> None:
    """The registered stand-ins: same output dims as CONCH (512) and GigaPath (1536) at their
    own input sizes, a few million parameters instead of 90M / 1.1B."""
    for name, side, dim in (("conch", 448, 512), ("gigapath", 224, 1536), ("hipt-vit256", 256, 384)):
        spec = E.encoder_spec(name)
        with torch.device("meta"):
            m = spec.standin_build()
        assert tuple(m(torch.empty(2, 3, side, side, device="meta")).shape) == (2, dim)
        assert sum(p.numel() for p in m.parameters()) < 3_000_000
        assert spec.standin_arch


def test_remembered_fingerprint_skips_the_build(with_standin, tmp_path: Path) -> None:
    spec, builds = with_standin
    first = E.get_encoder(spec.name, allow_random=True)
    assert builds["full"] == 1
    again = E.get_encoder(spec.name, allow_random=True)  # a rerun: named without building
    assert builds["full"] == 1 and again.fingerprint == first.fingerprint
    x = torch.randint(0, 256, (2, 256, 256, 3), dtype=torch.uint8)
    torch.testing.assert_close(again(x), first(x))  # built on first use, checked, same numbers
    assert builds["full"] == 2
    # a weights file is remembered by identity: a replaced file is fingerprinted afresh
    w = _save(spec.build().state_dict(), tmp_path / "w.bin")
    a = E.get_encoder(spec.name, weights=w).fingerprint
    n = builds["full"]
    assert E.get_encoder(spec.name, weights=w).fingerprint == a and builds["full"] == n
    torch.manual_seed(9)
    _save(spec.build().state_dict(), w)
    assert E.get_encoder(spec.name, weights=w).fingerprint != a


def test_stale_remembered_fingerprint_is_caught(with_standin) -> None:
    spec, _ = with_standin
    good = E.get_encoder(spec.name, allow_random=True).fingerprint
    store = E.fingerprint_store()
    store.write_text(store.read_text().replace(good, "0" * 16))
    stale = E.get_encoder(spec.name, allow_random=True)
    assert stale.fingerprint == "0" * 16
    with pytest.raises(RuntimeError, match="remembered fingerprint 0000000000000000 does not match"):
        stale(torch.zeros(1, 256, 256, 3, dtype=torch.uint8))
    assert E.get_encoder(spec.name, allow_random=True).fingerprint == good  # corrected


def test_cuda_precision_is_bf16_only_where_the_gpu_has_it(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert [E.cuda_precision(E.encoder_spec(n)) for n in ("resnet50", "conch", "gigapath")] == ["bf16"] * 3
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100
    assert [E.cuda_precision(E.encoder_spec(n)) for n in ("resnet50", "conch", "gigapath")] == [
        "fp32", "fp32", "fp16"]
    enc = E.get_encoder("gigapath", allow_random=True, standin=True)  # on the CPU: never autocast
    assert enc.precision == "fp32"


@pytest.mark.parametrize("name", ["conch", "gigapath"])
def test_bf16_autocast_keeps_the_features(name: str) -> None:
    """What makes bf16 safe for these families: the same network under bf16 autocast (on the CPU,
    which rounds matmul inputs to bf16 as CUDA does) changes each feature by < 2 % of its norm,
    while different patches differ by far more. Small stand-ins of the ViT families, seeded."""
    torch.manual_seed(0)
    model = E.encoder_spec(name).standin_build().eval()
    side = E.encoder_spec(name).input_size
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, side, side, generator=gen) * 2 - 1
    x[1:] = x[1:] * 0.5 + x[:1] * 0.5  # patches that share half their content
    with torch.inference_mode():
        a = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            b = model(x).float()
    rel = ((a - b).norm(dim=1) / a.norm(dim=1)).max().item()
    between = ((a[1:] - a[:1]).norm(dim=1) / a[:1].norm(dim=1)).min().item()
    assert rel < 0.02 and between > 10 * rel


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_encoder_runs_bf16_and_matches_fp32() -> None:
    import feature_cache as fc

    enc = fc.get_encoder("resnet50", allow_random=True, device="cuda")
    cpu = fc.get_encoder("resnet50", allow_random=True)
    assert enc.precision == E.cuda_precision(E.encoder_spec("resnet50"))
    x = np.random.default_rng(0).integers(0, 255, (4, 256, 256, 3), dtype=np.uint8)
    got, want = enc(x), cpu(x)
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    assert torch.nn.functional.cosine_similarity(got, want).min() > 0.999
    assert enc.fingerprint != cpu.fingerprint or enc.precision == "fp32"
