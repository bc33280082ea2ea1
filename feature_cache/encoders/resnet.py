"""ImageNet ResNet-50 truncated after layer3 (CLAM's patch features): 1024-d, 256-px patches at 20x.

The released weights: torchvision's ``resnet50-0676ba61.pth`` / ``resnet50-19c8e357.pth``
(IMAGENET1K_V1) and timm's re-save ``timm/resnet50.tv_in1k``. Both use the same key names
(``conv1``, ``bn1``, ``layer1``..``layer4``, ``fc``); torchvision's older file has no BatchNorm
``num_batches_tracked`` counters. layer4 and the classifier are dropped on purpose.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from feature_cache.encoders.base import IMAGENET_MEAN, IMAGENET_STD, EncoderSpec, _pooled, register_encoder
from feature_cache.weights import KeyMap

if TYPE_CHECKING:
    import torch

RESNET50_LAYOUT = KeyMap(
    name="resnet50 torchvision/timm",
    container=("", "state_dict"),
    renames=((r"^(conv1|bn1|layer1|layer2|layer3)\.", r"body.\1."),),
    drop=(r"^layer4\.", r"^fc\."),
    defaults=((r"\.num_batches_tracked$", 0),),  # BatchNorm's step counter: unused in eval mode
)


def _build_resnet50_trunc() -> "torch.nn.Module":
    import timm

    # features_only + out_indices=(3,) keeps the network up to layer3: 1024 channels, stride 16
    return _pooled(timm.create_model("resnet50", pretrained=False, features_only=True,
                                     out_indices=(3,)))


register_encoder(EncoderSpec(
    name="resnet50",
    dim=1024,
    patch_size=256,
    magnification=20.0,
    input_size=224,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    build=_build_resnet50_trunc,
    weights_env="BENCH_WEIGHTS_RESNET50",
    hub_files=(("timm/resnet50.tv_in1k", "model.safetensors"),
               ("timm/resnet50.tv_in1k", "pytorch_model.bin")),
    torch_hub_files=("resnet50-0676ba61.pth", "resnet50-19c8e357.pth"),
    download=("timm/resnet50.tv_in1k", "model.safetensors"),
    description="ImageNet ResNet-50 (torchvision IMAGENET1K_V1, as CLAM) truncated after layer3",
    keymaps=(RESNET50_LAYOUT,),
    official="torchvision ResNet50_Weights.IMAGENET1K_V1 (download.pytorch.org/models/resnet50-0676ba61.pth); "
             "timm re-save: hf timm/resnet50.tv_in1k",
    # torch.hub's convention: the digits in a file name are the start of its SHA-256 (check_hash)
    published_sha256={"resnet50-0676ba61.pth": "0676ba61…", "resnet50-19c8e357.pth": "19c8e357…"},
))
