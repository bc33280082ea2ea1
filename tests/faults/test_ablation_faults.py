"""Ablation values are validated per ablation before anything is built, and the paper's column
shows only figures the paper published."""

from __future__ import annotations

import pandas as pd

from bench.ablations import GridItem, get_ablation
from bench.report.ablation_tables import build_rows


def test_paper_column_only_for_values_of_the_papers_grid() -> None:
    alpha = get_ablation("alpha")
    items = [GridItem("pixelmamba-6m", f"alpha={v}", v, v) for v in (0.5, 0.0, 0.8)]
    rows = build_rows(alpha, items, pd.DataFrame(), "survival")
    # 0.5 and 0 are not in the paper's grid: no figure (before, the setting was printed as the C-index)
    assert [r.published for r in rows] == [None, None, 0.6507]


def test_ablation_values_are_validated_before_anything_is_built(tmp_path) -> None:
    import contextlib
    import io

    from bench.cli import main

    cases = {("alpha", "1e9"): "alpha=1000000000.0 cannot run: alpha must be a number in [0.0, 1.0]",
             ("alpha", "nan"): "alpha=nan cannot run", ("alpha", "0.5,abc"): "alpha='abc' cannot run",
             ("scan-window", "0"): "scan_window=0 cannot run: scan_window must be an integer in [32, 1024], a "
                                   "multiple of 32",
             ("scan-window", "-32"): "scan_window=-32 cannot run", ("scan-window", "100000"): "scan_window=100000"}
    for (name, values), msg in cases.items():
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["ablate", name, "--values", values, "--dataset", "demo", "--results", str(tmp_path / "r"),
                         "--cache", str(tmp_path / "c"), "-q"])
        assert code == 2 and msg in err.getvalue() and err.getvalue().count("\n") == 1, (values, err.getvalue())
    assert not (tmp_path / "r" / "runs").exists() and not (tmp_path / "c").exists()
