"""wsi-bench: end-to-end whole-slide models vs two-stage pipelines, under one protocol."""

import os as _os

# OpenMP threads that wait for work by spinning (libgomp's default) are ruinous when the cores are
# shared — a cluster node running other jobs, a laptop, CI. Measured on the 2-core development VM at
# load ~20: one Vim-Ti training step on a 64x80 image took 83 s wall / 13 s CPU with 2 spinning
# threads, 4.7 s with 1 thread, and 1.4 s / 0.5 s CPU with 2 passive threads. The variable must be
# set before torch loads libgomp, hence here; a value the user set wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
