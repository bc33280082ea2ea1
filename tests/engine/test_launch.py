"""``bench run --launcher submitit``: the unit grid as submitit jobs sharing one results store.

The cohort's features are written straight into the feature cache (random-weight ResNet-50 key), so
the jobs train real MeanMIL units without extracting anything."""

import json
import sys

import pytest

submitit = pytest.importorskip("submitit")

import bench.engine.inputs as inputs_mod
from bench.cli import main as cli  # noqa: E402
from bench.engine.launch import ClusterOptions, LaunchError, submit  # noqa: E402
from bench.registry import get_method  # noqa: E402
from fake_inputs import FakeFeatureInputs, write_cached_cohort, write_toy_cohort  # noqa: E402

N_CASES = 20


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("launch")
    return write_cached_cohort(root, N_CASES, ""), root


def _metrics(results, fold):
    return results / "runs" / "toy" / "staging" / "meanmil.resnet50" / f"fold{fold}" / "metrics.json"


def _submit(spec, root, results, cluster):
    return submit([get_method("meanmil.resnet50")], str(spec), ClusterOptions(cluster=cluster, time_min=10),
                  results=results, cache=root / "cache", tasks=["staging"], folds=[0, 1],
                  train_overrides={"epochs": 1}, progress=False)


@pytest.mark.slow  # real worker processes each import torch and build ResNet-50: ~1 min quiet, 6 min at load 16
def test_local_executor_completes_a_two_unit_grid_and_resumes(cohort):
    spec, root = cohort
    results = root / "results-local"
    rep = _submit(spec, root, results, "local")
    assert [u.fold for u in rep.submitted] == [0, 1] and not rep.failed, rep.failed
    assert {o["status"] for o in rep.outcomes.values()} == {"ran"}
    assert len(set(rep.job_ids)) == 2 and all(j.isdigit() for j in rep.job_ids)  # local executor: pids
    m0 = json.loads(_metrics(results, 0).read_text())
    assert m0["fold"] == 0 and m0["params"] > 0 and _metrics(results, 1).is_file()

    # resume: fold 1 "was killed" (no metrics.json) -> only it is resubmitted; fold 0 untouched
    stamp = _metrics(results, 0).stat().st_mtime_ns
    _metrics(results, 1).unlink()
    rep = _submit(spec, root, results, "local")
    assert [u.fold for u in rep.submitted] == [1] and [u.fold for u in rep.done_before] == [0]
    assert _metrics(results, 1).is_file() and _metrics(results, 0).stat().st_mtime_ns == stamp

    # everything done: nothing is submitted
    rep = _submit(spec, root, results, "local")
    assert not rep.submitted and len(rep.done_before) == 2 and rep.folder is None


@pytest.mark.slow  # submitit's SLURM executor against stand-in sbatch/sacct (~50 s); the debug executor runs in the fast suite
def test_slurm_executor_against_a_stand_in_slurm(cohort, tmp_path, monkeypatch, capsys):
    """The SLURM path end to end: submitit's real SlurmExecutor writes the sbatch file from our
    options, submits it with ``sbatch`` and polls ``sacct``; only the scheduler is a stand-in
    (tests/helpers/fake_slurm.py), which runs the array's tasks here with SLURM's variables. ~30 s on a
    quiet machine (four job processes import torch), kept in the fast suite so that CI covers
    the SLURM path."""
    import os

    import fake_slurm

    spec, root = cohort
    bin_dir = fake_slurm.install(tmp_path / "slurm")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    results = tmp_path / "results-slurm"
    args = ["run", "--methods", "meanmil.resnet50,maxmil.resnet50", "--dataset", str(spec),
            "--results", str(results), "--cache", str(root / "cache"), "--tasks", "staging", "--folds", "0,1",
            "--set", "epochs=1", "--launcher", "submitit", "--cluster", "slurm", "--partition", "gpu",
            "--gpus", "1", "--time", "30", "--cpus", "2", "--mem", "8", "--array-parallelism", "1",
            "--order", "fold", "-q"]
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert "submitted 4 job(s)" in out and "4 unit(s) run by the jobs" in out, out
    sbatch = (tmp_path / "slurm" / "state" / "sbatch-4200.sh").read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=30",
                 "#SBATCH --cpus-per-task=2", "#SBATCH --mem=8GB", "#SBATCH --array=0-3%1",
                 "#SBATCH --job-name=wsi-bench"):
        assert line in sbatch, (line, sbatch)
    for method in ("meanmil.resnet50", "maxmil.resnet50"):
        for fold in (0, 1):
            m = results / "runs" / "toy" / "staging" / method / f"fold{fold}" / "metrics.json"
            assert json.loads(m.read_text())["fold"] == fold
    # --order fold: array task i is the i-th unit of fold 0 of every method, then fold 1; the
    # tasks ran one at a time (array parallelism 1), so their finishing order is that order
    done = sorted(results.glob("runs/toy/staging/*/fold*/metrics.json"), key=lambda p: p.stat().st_mtime_ns)
    assert [(p.parent.parent.name, p.parent.name) for p in done] == [
        ("meanmil.resnet50", "fold0"), ("maxmil.resnet50", "fold0"),
        ("meanmil.resnet50", "fold1"), ("maxmil.resnet50", "fold1")]
    assert cli(args) == 0  # everything done: nothing goes to the queue
    assert "nothing to submit: 4 unit(s) already done" in capsys.readouterr().out
    assert not (tmp_path / "slurm" / "state" / "sbatch-4201.sh").exists()


class FakeInputs(FakeFeatureInputs):
    """In-process stand-in for FeatureInputs (the debug executor runs jobs in this process)."""

    def __init__(self, cohort, encoder_name, cache_root, allow_random, progress, standin=False, settings=None):
        super().__init__(cohort, encoder_name, cache_root, allow_random, progress, standin)
        self.stage = dict(zip(cohort.table["case_id"], cohort.table["stage"]))

    def sample(self, case_id, labels):
        import torch

        from bench.engine.train import Sample

        x = torch.randn(4, 1024, generator=torch.Generator().manual_seed(len(case_id)))
        return Sample(case_id, lambda: x + float(self.stage[case_id]), labels)


@pytest.fixture()
def fake_cohort(tmp_path, monkeypatch):
    from bench.engine import runner

    spec, _ = write_toy_cohort(tmp_path, N_CASES, rows=lambda i: {"stage": i % 4, "time": 10.0 + i, "event": i % 2})
    monkeypatch.setitem(inputs_mod.FEATURE_INPUTS, "features", FakeInputs)  # what make_inputs builds
    return spec, tmp_path


def test_debug_executor_through_the_cli(fake_cohort, capsys):
    spec, root = fake_cohort
    results = root / "results"
    args = ["run", "--methods", "meanmil.resnet50", "--dataset", str(spec), "--results", str(results),
            "--tasks", "staging", "--folds", "0,1", "--set", "epochs=1",
            "--launcher", "submitit", "--cluster", "debug", "-q"]
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert "submitted 2 job(s)" in out and "2 unit(s) run by the jobs" in out
    assert _metrics(results, 0).is_file() and _metrics(results, 1).is_file()
    assert (results / "toy" / "summary.csv").is_file()
    stamp = _metrics(results, 0).stat().st_mtime_ns
    _metrics(results, 1).unlink()  # fold 1 unfinished: only it is submitted again
    assert cli(args) == 0
    assert "submitted 1 job(s) (1 unit(s) already done)" in capsys.readouterr().out
    assert _metrics(results, 1).is_file() and _metrics(results, 0).stat().st_mtime_ns == stamp
    assert cli(args) == 0
    assert "nothing to submit: 2 unit(s) already done" in capsys.readouterr().out


def test_ablation_variants_through_submitit_and_its_table(fake_cohort, capsys):
    """`bench ablate --launcher submitit`: every (variant, fold) unit is a job (here the debug
    executor's, in this process), stored as the variant; the table follows; a rerun submits nothing."""
    spec, root = fake_cohort
    grid = root / "hidden.yaml"
    grid.write_text("description: ABMIL hidden size (test)\ncaption: Ablation of the hidden size\n"
                    "method: abmil.resnet50\noverride: hidden\nvalues: [16, 32]\ntask: staging\n"
                    "table: {columns: [hidden, metric], headers: {hidden: Hidden}}\n")
    results = root / "results-ablate"
    args = ["ablate", str(grid), "--dataset", str(spec), "--results", str(results), "--folds", "0,1",
            "--set", "epochs=1", "--launcher", "submitit", "--cluster", "debug", "--order", "fold", "-q"]
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert "submitted 4 job(s) (0 unit(s) already done)" in out and "4 unit(s) run by the jobs" in out, out
    for v in ("hidden_16", "hidden_32"):
        for k in (0, 1):
            m = json.loads((results / "runs" / "toy" / "staging" / "abmil.resnet50" / v / f"fold{k}"
                            / "metrics.json").read_text())
            assert m["fold"] == k
    config = json.loads((results / "runs" / "toy" / "staging" / "abmil.resnet50" / "hidden_32" / "fold0"
                         / "config.json").read_text())
    assert config["variant"] == "hidden=32" and config["model"]["hidden"] == 32
    table = (results / "toy" / "tables" / "hidden_staging.md").read_text()
    assert "| 16 †§¹ |" in table and "| 32 †§¹ |" in table and table.count("(2/5 folds)") == 2, table
    assert cli(args) == 0
    assert "nothing to submit: 4 unit(s) already done" in capsys.readouterr().out


def test_missing_submitit_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    with pytest.raises(LaunchError, match=r"pip install 'wsi-bench\[cluster\]'"):
        submit([get_method("meanmil.resnet50")], "demo", ClusterOptions(cluster="local"), results=tmp_path)



def test_grid_order_hand_written():
    from bench.engine.runner import grid_order

    class Method:  # a method defined for every task (linear.* / coxnet.* are defined for some only)
        def defined_for(self, task: str) -> bool:
            return True

    a, b = Method(), Method()
    names = {id(a): "A", id(b): "B"}

    def show(order, folds=None):
        units = grid_order(["staging", "survival"], [a, b], {"staging": 2, "survival": 3}, folds, order)
        return [f"{t[:2]}{names[id(v)]}{k}" for t, v, k in units]

    assert show("task") == ["stA0", "stA1", "stB0", "stB1", "suA0", "suA1", "suA2", "suB0", "suB1", "suB2"]
    assert show("method") == ["stA0", "stA1", "suA0", "suA1", "suA2", "stB0", "stB1", "suB0", "suB1", "suB2"]
    assert show("fold") == ["stA0", "stB0", "suA0", "suB0", "stA1", "stB1", "suA1", "suB1", "suA2", "suB2"]
    assert show("fold", folds=[2, 0]) == ["stA0", "stB0", "suA0", "suB0", "suA2", "suB2"]
    assert [f"{t[:2]}{names[id(v)]}{k}" for t, v, k in grid_order(["staging", "survival"], [a, b], {
        "staging": 2, "survival": 3}, None)] == show("fold")  # the default
    with pytest.raises(ValueError, match="unknown order 'random'; choose one of task, method, fold"):
        show("random")


def test_run_plans_units_in_the_requested_order(cohort):
    """The order reaches the runner's plan (and so the submitted job array) through the real grid."""
    from bench.engine.runner import run

    spec, root = cohort
    methods = [get_method("meanmil.resnet50"), get_method("maxmil.resnet50")]
    plan = run(methods, str(spec), results=root / "order-results", cache=root / "cache", folds=[0, 1],
               progress=False, dry_run=True, order="fold")
    got = [(p.unit.fold, p.unit.task, p.unit.method) for p in plan.todo]
    assert got == [(k, t, m) for k in (0, 1) for t in ("staging", "survival")
                   for m in ("meanmil.resnet50", "maxmil.resnet50")]


@pytest.mark.slow  # a job process imports torch: ~1 min quiet
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_device_reaches_the_slurm_job(cohort, tmp_path, monkeypatch, capsys):
    """``--device`` travels to the job with the rest of the options: ``--device cuda`` on a machine
    without CUDA fails in the job, naming the option (a dropped option would train on the CPU)."""
    import os

    import fake_slurm

    spec, root = cohort
    bin_dir = fake_slurm.install(tmp_path / "slurm")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    results = tmp_path / "results-device"
    args = ["run", "--methods", "meanmil.resnet50", "--dataset", str(spec), "--results", str(results),
            "--cache", str(root / "cache"), "--tasks", "staging", "--folds", "0", "--set", "epochs=1",
            "--launcher", "submitit", "--cluster", "slurm", "--time", "30", "--device", "cuda", "-q"]
    assert cli(args) == 1
    out = capsys.readouterr().out
    assert "submitted 1 job(s)" in out and "--device cuda: no CUDA device is visible" in out, out
    assert not (results / "runs" / "toy" / "staging" / "meanmil.resnet50" / "fold0" / "metrics.json").exists()


def _import_split_set(spec, results, name="pub"):
    """A published-style split set (``case_id, fold``: fold k tests the cases i % 5 == k), imported
    with the CLI; returns each fold's test cases."""
    import pandas as pd

    f = spec.parent / f"{name}.csv"
    pd.DataFrame({"case_id": [f"CASE-{i:03d}" for i in range(N_CASES)], "fold": [i % 5 for i in range(N_CASES)]}
                 ).to_csv(f, index=False)
    assert cli(["splits", "--dataset", str(spec), "--task", "staging", "--results", str(results), "--import", str(f),
                "--format", "csv", "--name", name]) == 0
    return {k: sorted(f"CASE-{i:03d}" for i in range(N_CASES) if i % 5 == k) for k in range(5)}


def test_imported_split_set_through_submitit_and_table_splits(fake_cohort, capsys):
    """`run --splits NAME --launcher submitit`: each job trains its unit on the imported set (the
    options travel whole), stored as splits-NAME; `table --splits NAME` lists only that set's rows,
    and an unknown set is an error naming the sets that have rows."""
    import pandas as pd

    spec, root = fake_cohort
    results = root / "results-splits"
    tests = _import_split_set(spec, results)
    base = ["run", "--methods", "meanmil.resnet50", "--dataset", str(spec), "--results", str(results),
            "--tasks", "staging", "--folds", "0,1", "--set", "epochs=1", "-q"]
    assert cli([*base, "--splits", "pub", "--launcher", "submitit", "--cluster", "debug"]) == 0
    assert "submitted 2 job(s)" in capsys.readouterr().out
    for k in (0, 1):
        d = results / "runs" / "toy" / "staging" / "meanmil.resnet50" / "splits-pub" / f"fold{k}"
        assert json.loads((d / "metrics.json").read_text())["split"]["name"] == "pub"
        assert sorted(pd.read_csv(d / "predictions.csv")["case_id"]) == tests[k]
    assert cli([*base, "--splits", "pub", "--launcher", "submitit", "--cluster", "debug"]) == 0
    assert "nothing to submit: 2 unit(s) already done" in capsys.readouterr().out
    assert cli(base) == 0  # the seeded folds: a row of their own
    capsys.readouterr()
    table = ["table", "--dataset", str(spec), "--results", str(results), "--no-figures", "--n-perm", "20"]
    assert cli(table) == 0
    out = capsys.readouterr().out
    assert "| MeanMIL (splits-pub) " in out and "| MeanMIL \u2020" in out
    assert cli([*table, "--splits", "pub"]) == 0
    out = capsys.readouterr().out
    assert "| MeanMIL (splits-pub) " in out and "| MeanMIL \u2020" not in out, out
    assert cli([*table, "--splits", "other"]) == 2
    err = capsys.readouterr().err
    assert "no results on split set 'other' (splits-other)" in err and "splits-pub" in err, err


def test_ablation_on_an_imported_split_set(fake_cohort, capsys):
    """`ablate --splits NAME`: every value is trained on the imported set, stored as
    <value>+splits-NAME, and its table has a file and a caption of its own."""
    spec, root = fake_cohort
    results = root / "results-ablate-splits"
    _import_split_set(spec, results)
    grid = root / "hidden.yaml"
    grid.write_text("description: ABMIL hidden size (test)\ncaption: Ablation of the hidden size\n"
                    "method: abmil.resnet50\noverride: hidden\nvalues: [16, 32]\ntask: staging\n"
                    "table: {columns: [hidden, metric], headers: {hidden: Hidden}}\n")
    args = ["ablate", str(grid), "--dataset", str(spec), "--results", str(results), "--folds", "0",
            "--set", "epochs=1", "--splits", "pub", "--launcher", "submitit", "--cluster", "debug", "-q"]
    assert cli(args) == 0
    capsys.readouterr()
    for v in ("hidden_16+splits-pub", "hidden_32+splits-pub"):
        m = json.loads((results / "runs" / "toy" / "staging" / "abmil.resnet50" / v / "fold0" / "metrics.json"
                        ).read_text())
        assert m["split"]["name"] == "pub"
    assert not (results / "toy" / "tables" / "hidden_staging.md").exists()
    table = (results / "toy" / "tables" / "hidden_staging_splits-pub.md").read_text()
    assert "| 16 " in table and "| 32 " in table and "Split set 'pub' (imported" in table, table


@pytest.mark.slow  # a SLURM job process imports torch and trains one unit (~30 s quiet)
def test_imported_split_set_reaches_the_slurm_job(cohort, tmp_path, monkeypatch, capsys):
    """`run --splits NAME --launcher submitit --cluster slurm`: the job, started by the stand-in
    scheduler in a process of its own, trains its unit on the imported set (read from the options
    serialised to it), and tests exactly that set's test cases of the fold."""
    import os

    import fake_slurm
    import pandas as pd

    spec, root = cohort
    bin_dir = fake_slurm.install(tmp_path / "slurm")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    results = tmp_path / "results-slurm-splits"
    tests = _import_split_set(spec, results)
    args = ["run", "--methods", "meanmil.resnet50", "--dataset", str(spec), "--results", str(results),
            "--cache", str(root / "cache"), "--tasks", "staging", "--folds", "1", "--set", "epochs=1",
            "--splits", "pub", "--launcher", "submitit", "--cluster", "slurm", "--time", "30", "-q"]
    assert cli(args) == 0
    out = capsys.readouterr().out
    assert "submitted 1 job(s)" in out and "1 unit(s) run by the jobs" in out, out
    d = results / "runs" / "toy" / "staging" / "meanmil.resnet50" / "splits-pub" / "fold1"
    rec = json.loads((d / "metrics.json").read_text())
    assert rec["split"]["name"] == "pub" and rec["fold"] == 1
    assert sorted(pd.read_csv(d / "predictions.csv")["case_id"]) == tests[1]
