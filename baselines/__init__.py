"""Baselines the benchmark compares Pixel-Mamba against: MIL aggregators, Vim, LongViT."""
