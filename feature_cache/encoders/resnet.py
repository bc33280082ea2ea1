"""ImageNet ResNet-50 truncated after layer3 (CLAM's patch features): 1024-d, 256-px patches at 20x.

The released weights: torchvision's ``resnet50-0676ba61.pth`` / ``resnet50-19c8e357.pth``
(IMAGENET1K_V1) and timm's re-save ``timm/resnet50.tv_in1k``. Both use the same key names
(``conv1``, ``bn1``, ``layer1``..``layer4``, ``fc``); torchvision's older file has no BatchNorm
``num_batches_tracked`` counters. layer4 and the classifier are dropped on purpose.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from feature_cache.encoders.base import pooled

if TYPE_CHECKING:
    import torch


def build_resnet50_trunc() -> "torch.nn.Module":
    import timm

    # features_only + out_indices=(3,) keeps the network up to layer3: 1024 channels, stride 16
    return pooled(timm.create_model("resnet50", pretrained=False, features_only=True,
                                     out_indices=(3,)))
