"""What a task is called and how it is scored, as plain data: the torch-free table ``bench ls``
and ``--help`` read. The executable tasks (losses, scoring) live in :mod:`bench.engine.tasks`;
``tests/test_cli_startup.py`` checks that both name the same tasks with the same metrics.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    name: str
    metric: str  # the primary metric reported in the tables
    labels: tuple[str, ...]  # cohort columns a case needs to be part of the task
    description: str


TASK_SPECS: dict[str, TaskSpec] = {s.name: s for s in (
    TaskSpec("staging", "macro_f1", ("stage",), "4 AJCC stages (I-IV), cross-entropy"),
    TaskSpec("survival", "c_index", ("time", "event"), "discrete-time hazards over 4 bins (Eq. 2 NLL)"),
    TaskSpec("classification", "auc", ("label",), "binary label, cross-entropy"),
)}
