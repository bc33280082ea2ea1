"""Clinical tables: a fix the harness prints is right when applied; a task whose labels cannot be
scored (one class, no event, no survival data) is refused before any compute, suggesting the other
tasks."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bench.data.clinical import DatasetError, load_clinical


def test_printed_stage_map_fix_reads_the_stages_right(tmp_path: Path) -> None:
    truth = [0, 1, 2, 3, 0, 1, 2, 3]  # AJCC I..IV, written 1-based as 1..4
    p = tmp_path / "c.csv"
    pd.DataFrame({"case_id": [f"TCGA-FA-{i:04d}" for i in range(8)], "stage": [s + 1 for s in truth],
                  "time": 10.0, "event": 1}).to_csv(p, index=False)
    with pytest.raises(DatasetError) as exc:
        load_clinical(p, "normalized")
    fix = yaml.safe_load(re.search(r"`stage_map: (\{[^}]*\})`", str(exc.value)).group(1))
    assert fix == {1: "I", 2: "II", 3: "III", 4: "IV"}, exc.value  # every digit, not only the 4
    got = load_clinical(p, "normalized", stage_map=fix).sort_values("case_id")["stage"].tolist()
    assert got == truth
    # a partial map would read 1..3 as 0-based stages (I -> II): refused, with the full map
    with pytest.raises(DatasetError, match=r"maps the digit\(s\) 4 but column 'stage' also holds 1, 2, 3"):
        load_clinical(p, "normalized", stage_map={4: "IV"})


def test_unscorable_tasks_are_refused_before_compute(cohort) -> None:
    t = cohort.table()
    t["stage"] = "1"
    t.to_csv(cohort.clinical, index=False)
    r = cohort.run("--tasks", "staging")
    assert r.code == 2 and "staging: every one of its 12 cases has stage = 1 (one class)" in r.err, r.text
    assert "--tasks survival" in r.err and not (cohort.results / "runs").exists()
    t["stage"] = [str(i % 4) for i in range(12)]
    t["event"] = "0"
    t.to_csv(cohort.clinical, index=False)
    r = cohort.run()
    assert r.code == 2 and "survival: none of its 12 cases has an observed event" in r.err, r.text
    assert "--tasks staging" in r.err
    t["time"], t["event"] = "", ""  # no survival data at all
    t.to_csv(cohort.clinical, index=False)
    r = cohort.run()
    assert r.code == 2 and "survival: 0 of 12 joined cases have its labels" in r.err and "--tasks staging" in r.err
    d = cohort.run(command="doctor")
    assert d.code != 0 and "run would fail: survival" in d.text, d.text
