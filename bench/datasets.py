"""Public name kept stable (DESIGN §8): the dataset loaders live in :mod:`bench.data.datasets`."""

from .data.datasets import *  # noqa: F401,F403
from .data.datasets import load_clinical  # noqa: F401
