"""Selective-scan ops that Pixel-Mamba, Vim and MambaMIL stand on (see docs/scan.md)."""

from .selective_scan import BACKENDS, resolve_backend, selective_scan

__all__ = ["BACKENDS", "resolve_backend", "selective_scan"]
