"""Tasks as objects: specs without torch, task behaviour only in the task module, fitted objects."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.tasks import TASKS, get_task

ROOT = Path(__file__).resolve().parents[2]


def test_specs_import_without_torch_or_sklearn():
    code = ("import sys, bench.tasks as T; names = list(T.TASKS); "
            "t = T.get_task('survival'); _ = (t.metric, t.title, t.n_out(), t.higher_is_better); "
            "heavy = [m for m in ('torch', 'sklearn', 'sksurv') if m in sys.modules]; "
            "assert not heavy, heavy; print(','.join(names))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "staging,survival,classification"


def test_no_task_string_branches_outside_the_task_module():
    # behaviour keyed on a task's name: `task == "survival"`, `task in ("staging", ...)`; selecting
    # records of a task (`rec.task == task`) is not a branch on what the task is
    pattern = re.compile(r"""\btask\s*(?:==|!=)\s*["']|\btask\s*(?:not\s+)?in\s*[(\[{]\s*["']""")
    hits = []
    for pkg in ("bench", "baselines", "pixelmamba", "feature_cache"):
        for path in (ROOT / pkg).rglob("*.py"):
            if path == ROOT / "bench" / "tasks.py":
                continue
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_spec_fields():
    assert [t.n_out() for t in TASKS.values()] == [4, 4, 2]
    assert get_task("survival").n_out(6) == 6
    assert {t.metric for t in TASKS.values()} == {"macro_f1", "c_index", "auc"}
    assert all(t.higher_is_better for t in TASKS.values())
    with pytest.raises(KeyError, match="unknown task"):
        get_task("grading")


def test_fit_returns_what_the_training_fold_gives():
    staging = get_task("staging").fit([{"stage": s} for s in (0, 1, 1, 1)], 4)
    # 4 cases over 2 classes present: n / (C * n_c) = 4/(2*1), 4/(2*3); absent classes get 1
    np.testing.assert_allclose(staging.weights_np, [2.0, 2 / 3, 1.0, 1.0])
    assert staging.target({"stage": 3.0})["stage"].tolist() == [3]
    surv = get_task("survival").fit([{"time": float(t), "event": 1.0} for t in (1, 2, 3, 4, 5)])
    assert surv.info()["bin_edges"][0] == -np.inf and surv.info()["bin_edges"][-1] == np.inf
    assert get_task("survival").unfitted().info() == {"bin_edges": None}


def test_strata_and_fold_summaries():
    cases = pd.DataFrame({"case_id": list("abcdefgh"), "stage": [0, 1, 2, 3] * 2,
                          "time": np.arange(8.0), "event": [1, 0] * 4, "label": [0, 1] * 4})
    assert get_task("staging").strata(cases, 2).tolist() == [0, 1, 2, 3] * 2
    assert get_task("classification").strata(cases, 2).tolist() == [0, 1] * 4
    s = get_task("survival").strata(cases, 2)
    assert len(s) == 8 and set(np.bincount(s)[np.bincount(s) > 0]) >= {2}
    assert get_task("staging").fold_summary(cases.iloc[:3]) == {"stage_I": 1, "stage_II": 1, "stage_III": 1,
                                                                "stage_IV": 0}
    assert get_task("staging").fold_note(cases.iloc[:3], cases) == "has no stage IV"
    assert get_task("survival").fold_note(cases.iloc[[1, 3]], cases).startswith("has no observed event")
