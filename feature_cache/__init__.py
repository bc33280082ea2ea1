"""Slides -> tissue -> patch grid -> encoder -> HDF5 feature cache. Knows no models (DESIGN §1).

Importing this package is cheap: the encoder registry (torch, timm) loads on first use.
"""

from __future__ import annotations

from typing import Any

from feature_cache.slide import (Slide, SlideError, mag_to_mpp, mpp_to_mag, open_slide, slide_files,
                                 slide_fingerprint)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "SlideError",
    "Slide",
    "open_slide",
    "mag_to_mpp",
    "mpp_to_mag",
    "slide_files",
    "slide_fingerprint",
    "segment_tissue",
    "patch_grid",
    "get_encoder",
    "list_encoders",
    "Encoder",
    "EncoderWeightsError",
    "FeatureCache",
    "ExtractReport",
    "CacheMissError",
    "FeatureFileCorrupt",
    "RegionFeatureCache",
    "import_features",
    "ImportReport",
    "write_overview",
]

_LAZY = {
    "segment_tissue": "feature_cache.tissue",
    "patch_grid": "feature_cache.tissue",
    "get_encoder": "feature_cache.encoders",
    "list_encoders": "feature_cache.encoders",
    "Encoder": "feature_cache.encoders",
    "EncoderWeightsError": "feature_cache.encoders",
    "FeatureCache": "feature_cache.cache",
    "ExtractReport": "feature_cache.cache",
    "CacheMissError": "feature_cache.cache",
    "FeatureFileCorrupt": "feature_cache.cache",
    "RegionFeatureCache": "feature_cache.region_features",
    "import_features": "feature_cache.importer",
    "ImportReport": "feature_cache.importer",
    "write_overview": "feature_cache.visualize",
}


def __getattr__(name: str) -> Any:
    """Load torch-dependent parts on first access, so `import feature_cache` stays light."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'feature_cache' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
