"""Units run fold by fold by default, and the run says when every (task, method) has finished
another round of folds (``bench.engine.runner.Rounds``): from then on every row is in the table.
Fast: fake bags (tests/helpers/fake_inputs.py), MeanMIL."""

import json
import logging

import bench.engine.inputs as inputs_mod
from bench.engine import runner
from bench.registry import get_method
from bench.results.store import ResultsStore, Unit
from fake_inputs import BagInputs, write_toy_cohort


def test_every_row_line_after_each_round_of_folds_but_the_last(tmp_path, monkeypatch, caplog):
    """Right after the last unit of fold k (2 tasks x 1 method: units 2, 4, ... of 10) the run says
    that every row is in the table, from k + 1 of 5 folds, once per round, and not after the last
    round (the run's end says that)."""
    spec, _ = write_toy_cohort(tmp_path, 20, slide_bytes=lambda i: b"II*\x00" + bytes([i]) * 100)
    monkeypatch.setitem(inputs_mod.FEATURE_INPUTS, "features", BagInputs)
    with caplog.at_level(logging.INFO, logger="bench"):
        report = runner.run([get_method("meanmil.resnet50")], str(spec), results=str(tmp_path / "r"),
                            tasks=["staging", "survival"], train_overrides={"epochs": 1}, progress=False)
    assert len(report.ran) == 10 and not report.failed
    msgs = [r.getMessage() for r in caplog.records]
    rows = [m for m in msgs if "shows every row now" in m]
    assert [m.split(" of every")[0] for m in rows] == ["fold(s) 0", "fold(s) 0, 1", "fold(s) 0, 1, 2",
                                                      "fold(s) 0, 1, 2, 3"], rows
    assert rows[0].endswith("from 1 of 5 folds") and f"--results {tmp_path / 'r'}" in rows[0]
    units = [m for m in msgs if m.startswith("[")]
    assert [int(m[1:].split("/")[0]) for m in units] == list(range(1, 11))
    assert all("/fold0 " in m for m in units[:2]) and all("/fold1 " in m for m in units[2:4])  # fold order
    for k, row in enumerate(rows):
        at = msgs.index(row)
        assert msgs[at - 1].startswith(f"[{2 * (k + 1)}/10]") and msgs[at + 1].startswith(f"[{2 * (k + 1) + 1}/10]")


def test_rounds_count_only_units_finished_with_this_runs_identity(tmp_path):
    """A fold's round is done when every unit of it holds a record with the unit's config hash: a
    stale record (another hash) or a missing one keeps it open."""
    from types import SimpleNamespace

    store = ResultsStore(tmp_path)
    plans = [SimpleNamespace(unit=Unit("toy", t, "meanmil.resnet50", k), chash=f"h{t}{k}")
             for k in (0, 1, 2) for t in ("staging", "survival")]
    rounds = runner.Rounds(plans, store)

    def finish(p, chash=None):
        d = store.unit_dir(p.unit)
        d.mkdir(parents=True, exist_ok=True)
        (d / "metrics.json").write_text(json.dumps({"config_hash": chash or p.chash}))

    assert rounds.check() is None
    finish(plans[0])
    finish(plans[1], chash="stale")
    assert rounds.check() is None
    finish(plans[1])
    assert rounds.check() == ("fold(s) 0 of every (task, method) of this run done: `python -m bench table "
                              f"--dataset toy --results {tmp_path}` shows every row now, from 1 of 3 folds")
    assert rounds.check() is None  # said once
    for p in plans[2:4]:
        finish(p)
    assert rounds.check().startswith("fold(s) 0, 1 of every")
    for p in plans[4:]:
        finish(p)
    assert rounds.check() is None  # the last round is the run's end, not announced
    late = runner.Rounds(plans, store)  # a process that finds the whole run done says nothing either
    assert late.check() is None
