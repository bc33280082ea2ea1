"""Selective-scan ops that Pixel-Mamba, Vim and MambaMIL stand on (see docs/scan.md)."""

from .torch_scan import linear_scan, linear_scan_strategy
from .selective_scan import BACKENDS, resolve_backend, selective_scan

__all__ = ["BACKENDS", "linear_scan", "linear_scan_strategy", "resolve_backend", "selective_scan"]
