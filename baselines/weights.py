"""The published weights of the baselines' pretrained parts, as data, loaded through the one
mechanism of ``feature_cache.weights`` (reader with ``weights_only=True``, strict key matcher,
provenance):

* HIPT's ViT-4K (``vit4k_xs_dino.pth``, a DINO training checkpoint: the ``teacher`` is loaded);
* Prov-GigaPath's slide encoder (``slide_encoder.pth``, ``{"model": state_dict}``);
* Vision Mamba's Vim-Ti (``vim_t_midclstok_76p1acc.pth``, ``{"model": state_dict}``);
* LongViT-S (``longvit_small_patch32_1024.pth``, a DINO checkpoint in torchscale's layout).

Each :class:`~feature_cache.weights.WeightsSource` names the official file, its environment
variable and hub cache entry, and the :class:`~feature_cache.weights.KeyMap` that maps the
release's keys onto our module. Finding a file never downloads: explicit path, then the
environment variable, then the local Hugging Face cache; otherwise ``None`` -- the caller decides
whether random weights are allowed (the bench runner allows them only on datasets that say so,
and marks the results).

Importing this module does not import torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from feature_cache.weights import (KeyMap, Matched, WeightsError, WeightsProvenance, WeightsSource,
                                   find_weights, load_release, read_checkpoint)

if TYPE_CHECKING:
    import torch

__all__ = ["WeightsError", "SOURCES", "HIPT_VIT4K", "GIGAPATH_SLIDE", "VIM_TI", "LONGVIT_S", "find",
           "load", "source_for_builder", "load_release_init", "read_checkpoint"]

# DINO (facebookresearch/dino main_dino.py, as HIPT and LongViT ran it) saves {"student", "teacher",
# "optimizer", "epoch", "args", "dino_loss"[, "fp16_scaler"]}; the teacher is not DDP-wrapped for a
# ViT (no BatchNorm), its keys are backbone.* and head.* (the projection head: mlp.0/2/4 and the
# weight-normed last_layer.weight_g/_v).
_DINO_HEAD = r"^(module\.)?head\."

HIPT_VIT4K = WeightsSource(
    component="HIPT ViT-4K",
    env="BENCH_WEIGHTS_HIPT_VIT4K",
    files=("vit4k_xs_dino.pth",),
    official="github mahmoodlab/HIPT, HIPT_4K/Checkpoints/vit4k_xs_dino.pth (git LFS, 395,710,078 bytes)",
    keymaps=(KeyMap(name="hipt dino teacher", container=("teacher",),
                    renames=((r"^(module\.)?backbone\.", ""),), drop=(_DINO_HEAD,)),),
    sha256={"vit4k_xs_dino.pth": "2b0bd9e9a602a35f2bb3f76da39d2b53a91f23fc3f115dc59a63267d95ad2b7b"},
    note="not on the hub: the file is in the HIPT GitHub repository",
)

GIGAPATH_SLIDE = WeightsSource(
    component="Prov-GigaPath slide encoder",
    env="BENCH_WEIGHTS_GIGAPATH_SLIDE",
    files=("slide_encoder.pth",),
    official="hf prov-gigapath/prov-gigapath (gated), slide_encoder.pth",
    # the release's modules have our names (patch_embed.proj, cls_token, encoder.layers.N.{self_attn.
    # {q,k,v,out}_proj, inner_attn_ln}, self_attn_layer_norm, ffn.{fc1,ffn_layernorm,fc2},
    # final_layer_norm}, encoder.layer_norm, norm); pos_embed is a non-persistent sin-cos buffer
    # there, computed from tile coordinates here, so a file that stored it has it dropped
    keymaps=(KeyMap(name="gigapath slide_encoder", container=("model",), drop=(r"^pos_embed$",)),),
    hub=(("prov-gigapath/prov-gigapath", "slide_encoder.pth"),),
    gated=True,
)

VIM_TI = WeightsSource(
    component="Vim-Ti (ImageNet)",
    env="BENCH_WEIGHTS_VIM_TI",
    files=("vim_t_midclstok_76p1acc.pth",),
    official="hf hustvl/Vim-tiny-midclstok, vim_t_midclstok_76p1acc.pth (model "
             "vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2)",
    # hustvl/Vim models_mamba.py: patch_embed.proj (a PatchEmbed module; ours is the Conv2d itself),
    # cls_token, pos_embed (1, 197, 192) with the CLS entry mid-table, layers.N.{norm, mixer.*},
    # norm_f, head (1000 ImageNet classes: dropped; our task head stays at its initialisation)
    keymaps=(KeyMap(name="vim models_mamba", container=("model",),
                    renames=((r"^patch_embed\.proj\.", "patch_embed."),),
                    drop=(r"^head\.",), init_only=(r"^head\.",)),),
    hub=(("hustvl/Vim-tiny-midclstok", "vim_t_midclstok_76p1acc.pth"),),
    note="patch 16 only (vim-ti); start a run from it with `bench run --init <file>`",
)

LONGVIT_S = WeightsSource(
    component="LongViT-S (TCGA DINO)",
    env="BENCH_WEIGHTS_LONGVIT_S",
    files=("longvit_small_patch32_1024.pth",),
    official="github wenhui0924/longvit_ckpts release 'longvit', longvit_small_patch32_1024.pth "
             "(linked from microsoft/torchscale examples/longvit)",
    # torchscale examples/longvit/pretraining/vision_transformer.py under DINO: backbone.patch_embed.
    # proj, backbone.pos_embed (1, 32*32, 384), backbone.encoder.layers.N.{self_attn.*,
    # self_attn_layer_norm, ffn.{fc1,ffn_layernorm,fc2}, final_layer_norm} (normalize_output=False:
    # no encoder.layer_norm), backbone.norm (applied before the mean pool, our layer_norm); fine-tuning
    # adds fc_norm and head, which the release does not have
    keymaps=(KeyMap(name="longvit torchscale dino teacher", container=("teacher",),
                    renames=((r"^(module\.)?backbone\.", ""), (r"^patch_embed\.proj\.", "patch_embed."),
                             (r"^encoder\.layers\.(\d+)\.ffn\.", r"layers.\1."),
                             (r"^encoder\.layers\.", "layers."), (r"^norm\.", "layer_norm.")),
                    drop=(_DINO_HEAD,), init_only=(r"^fc_norm\.", r"^head\."),
                    transforms=((r"^pos_embed$", "tokens_to_grid"),)),),
    note="start a run from it with `bench run --init <file>`",
)

SOURCES: dict[str, WeightsSource] = {"hipt-vit4k": HIPT_VIT4K, "gigapath-slide": GIGAPATH_SLIDE,
                                     "vim-ti": VIM_TI, "longvit-s": LONGVIT_S}

# registry builders ("module:attr") -> the published part they load (for `bench weights`); Vim's
# release fits only the patch-16 model, so that entry names the keyword it needs
_BY_BUILDER: dict[str, tuple[str, dict[str, Any]]] = {
    "baselines.hipt:HIPT": ("hipt-vit4k", {}),
    "baselines.prov_gigapath:ProvGigaPath": ("gigapath-slide", {}),
    "baselines.vim:vim_ti": ("vim-ti", {"patch_size": 16}),
    "baselines.longvit:longvit_s": ("longvit-s", {}),
}
# model classes whose published checkpoint `bench run --init` recognises
_BY_CLASS = {"VisionMamba": "vim-ti", "LongViT": "longvit-s"}


def source_for_builder(builder: str, kwargs: dict[str, Any]) -> WeightsSource | None:
    entry = _BY_BUILDER.get(builder)
    if entry is None or any(kwargs.get(k, v) != v for k, v in entry[1].items()):
        return None
    return SOURCES[entry[0]]


def find(source: WeightsSource, explicit: str | os.PathLike | None = None) -> tuple[Path | None, str]:
    """(path, provenance kind) of ``source``'s file, or (None, "") -- see the module docstring."""
    path, kind, _ = find_weights(explicit, source)
    return path, kind


def load(module: "torch.nn.Module", path: str | os.PathLike, source: WeightsSource,
         kind: str = "explicit") -> WeightsProvenance:
    """Load ``source``'s release into ``module`` strictly (its provenance is appended to
    ``module.weights_provenance``)."""
    return load_release(module, path, source, kind=kind)[0]


def load_release_init(model: "torch.nn.Module", path: str | os.PathLike, obj: Any
                      ) -> tuple[WeightsProvenance, Matched] | None:
    """For ``bench run --init``: load ``obj`` (read from ``path``) through the model's release key
    map when the model has one (Vim-Ti, LongViT-S). None when the file is in our own names (a
    re-saved ``model.state_dict()``): the caller's name-for-name loading applies. Any other file
    that does not fit the release is an error naming the keys."""
    name = _BY_CLASS.get(type(model).__name__)
    if name is None:
        return None
    try:
        return load_release(model, path, SOURCES[name], kind="explicit", obj=obj)
    except WeightsError:
        own = model.state_dict()
        inner = obj.get("model", obj.get("state_dict", obj)) if isinstance(obj, dict) else {}
        if isinstance(inner, dict) and inner and all(k.removeprefix("module.") in own for k in inner):
            return None
        raise
