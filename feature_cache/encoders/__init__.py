"""Patch encoders: a registry of specs, each carrying its own transform, output dim, precision and
weights sources, so the cache key and the numbers always come from the same place.

Encoders are declared as data (``declared``: a YAML declaration -> :class:`EncoderSpec`; the
harness ships its declarations in ``bench/configs/encoders/`` and registers them). The networks
no library builds by name have a builder here, one module per family -- ``resnet`` (ImageNet
ResNet-50 truncated), ``conch`` (CONCH v1's tower), ``gigapath`` (Prov-GigaPath's tile encoder),
``hipt`` (HIPT's ViT-256), ``towers`` (CONCH v1.5, CTransPath) -- which declarations name as
``builder: {kind: python, target: "module:function"}``. ``base`` holds the spec, the registry and the ready
:class:`Encoder`; ``resolve`` finds, reads and strictly matches weights (through
``feature_cache.weights``) and names the numbers (see its docstring for the resolution order).

Importing this package does not import torch; building an encoder does.
"""

from __future__ import annotations

from feature_cache.encoders.base import (ENCODER_CODE_VERSION, IMAGENET_MEAN, IMAGENET_STD, OPENAI_CLIP_MEAN,
                                         OPENAI_CLIP_STD, RANDOM_INIT_SEED, REGISTRY, STANDIN_VIT, Encoder,
                                         EncoderSpec, EncoderWeightsError, build_module, cuda_precision,
                                         encoder_spec, fingerprint_store, list_encoders, register_encoder,
                                         registered_spec)
from feature_cache.encoders.resolve import download_weights, get_encoder
from feature_cache.encoders.declared import DeclarationError, load_declaration, spec_from_declaration
from feature_cache.encoders.resnet import build_resnet50_trunc
from feature_cache.encoders.conch import build_conch_standin, build_conch_visual
from feature_cache.encoders.gigapath import GIGAPATH_TIMM, build_gigapath, build_gigapath_standin
from feature_cache.encoders.hipt import build_hipt_vit256, build_hipt_vit256_standin
from feature_cache.weights import file_sha256

__all__ = [
    "EncoderSpec",
    "Encoder",
    "EncoderWeightsError",
    "register_encoder",
    "load_declaration",
    "spec_from_declaration",
    "DeclarationError",
    "list_encoders",
    "get_encoder",
    "build_module",
    "file_sha256",
    "cuda_precision",
]
