"""Public name kept stable (DESIGN §8): tasks live in :mod:`bench.engine.tasks`."""

from .engine.tasks import *  # noqa: F401,F403
from .engine.tasks import nll_survival_loss  # noqa: F401
