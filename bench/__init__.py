"""wsi-bench: end-to-end whole-slide models vs two-stage pipelines, under one protocol."""
