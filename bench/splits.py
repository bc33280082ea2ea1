"""Public name kept stable (DESIGN §8): the split manager lives in :mod:`bench.data.splits`."""

from .data.splits import *  # noqa: F401,F403
from .data.splits import make_folds  # noqa: F401
