"""Every table cell against chance: the permutation test on hand-made predictions, the ∘ mark and
its footnote in the written table, the p-values in the CSVs; and the Kaplan–Meier figures and
file modes that `bench table` writes beside them."""

import os
import stat

import numpy as np
import pandas as pd
import pytest
from record_factory import make_record

from bench.metrics import c_index, macro_f1
from bench.results.store import ResultsStore, Unit
from bench.report.stats import chance_test
from bench.report.write import write_tables

N = 40  # cases, 8 per fold
RNG = np.random.default_rng(7)
STAGE = np.arange(N) % 4
TIME = RNG.uniform(1, 100, N).round(1)
EVENT = (np.arange(N) % 3 != 0).astype(int)


def frame(task: str, how: str) -> pd.DataFrame:
    base = pd.DataFrame({"case_id": [f"C{i:02d}" for i in range(N)], "fold": np.arange(N) % 5})
    if task == "staging":
        pred = {"perfect": STAGE, "constant": np.zeros(N, int)}[how]
        return base.assign(stage=STAGE, pred=pred)
    risk = {"perfect": -TIME, "constant": np.zeros(N)}[how]
    return base.assign(time=TIME, event=EVENT, risk=risk)


@pytest.mark.parametrize("task", ["staging", "survival"])
def test_constant_predictions_are_at_chance_and_perfect_ones_are_not(task):
    const, perfect = chance_test(frame(task, "constant"), task), chance_test(frame(task, "perfect"), task)
    # every shuffle of the labels scores a constant prediction exactly as the real labels do: p = 1
    assert const.p == 1.0 and const.at_chance
    # a perfect prediction: no shuffle of 1000 reaches it, p = 1 / 1001
    assert perfect.p == pytest.approx(1 / 1001) and not perfect.at_chance
    # the observed value is the library's metric on the pooled predictions
    f = frame(task, "perfect")
    want = macro_f1(f["stage"], f["pred"]) if task == "staging" else c_index(f["time"], f["event"], f["risk"])
    assert perfect.observed == pytest.approx(want)


def test_a_random_row_gets_a_uniform_p_value():
    """Under the null (predictions independent of labels) p is uniform: about 5% of rows are below 0.05."""
    ps = []
    for seed in range(40):
        r = np.random.default_rng(seed)
        f = frame("staging", "perfect").assign(pred=r.integers(0, 4, N))
        ps.append(chance_test(f, "staging", n_perm=200, seed=seed).p)
    assert 0.25 < np.mean(ps) < 0.75 and np.mean(np.array(ps) < 0.05) <= 0.15


def put_row(store: ResultsStore, method: str, label: str, task: str, how: str, folds=range(5)) -> None:
    pred = frame(task, how)
    metric = "macro_f1" if task == "staging" else "c_index"
    for k in folds:
        p = pred[pred["fold"] == k].drop(columns="fold")
        value = macro_f1(p["stage"], p["pred"]) if task == "staging" else c_index(p["time"], p["event"], p["risk"])
        rec = make_record(dataset="hand", task=task, method=method, label=label, fold=k, primary_metric=metric,
                          metrics={metric: value})
        u = Unit("hand", task, method, k)
        store.prepare(u, {}, "h")
        store.finish(u, p, pd.DataFrame(), rec)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    old = os.umask(0o022)
    try:
        store = ResultsStore(tmp_path_factory.mktemp("chance") / "results")
        for task in ("staging", "survival"):
            put_row(store, "abmil.resnet50", "Perfect", task, "perfect")
            put_row(store, "meanmil.resnet50", "Constant", task, "constant")
        out = store.root / "tables" / "table2_hand.tex"
        printed = write_tables(store, ["hand"], out, stats=True, n_boot=50, km_panel=["abmil.resnet50",
                                                                                     "meanmil.resnet50"])
    finally:
        os.umask(old)
    return store, out, printed


def test_the_table_marks_the_constant_row_and_states_the_test(written):
    store, out, printed = written
    md = out.with_suffix(".md").read_text()
    rows = {ln.split(" | ")[0].lstrip("| ").split(" ")[0]: ln for ln in md.splitlines() if ln.startswith("| ")}
    assert rows["Constant"].count("∘") == 2 and "∘" not in rows["Perfect"]
    assert "∘ Not distinguishable from chance: a permutation test of the row's out-of-fold predictions against " \
           "labels shuffled within each fold (1000 permutations, same metric; survival pairs within one fold) " \
           "gives p ≥ 0.05." in md
    assert r"^{\circ}" in out.read_text()
    chance = pd.read_csv(out.with_name("table2_hand_chance.csv"))
    assert set(chance.columns) >= {"row", "task", "dataset", "pooled_metric", "p_chance", "at_chance"}
    got = chance.set_index(["row", "task"])["p_chance"]
    assert got[("meanmil.resnet50", "staging")] == 1.0 and got[("abmil.resnet50", "survival")] < 0.01
    stats = pd.read_csv(out.with_name("table2_hand_stats.csv"))  # --stats: p_chance beside each comparison
    assert stats.set_index(["row", "task"])["p_chance"][("meanmil.resnet50", "staging")] == 1.0
    assert any(line.startswith("chance: ") for line in printed)


def test_km_figures_and_panel_are_written(written):
    store, _, printed = written
    fig = store.root / "figures" / "hand"
    assert (fig / "km_abmil.resnet50.png").stat().st_size > 10_000 and (fig / "km_abmil.resnet50.pdf").is_file()
    assert (fig / "km_panel_abmil.resnet50_meanmil.resnet50.png").stat().st_size > 10_000
    assert any("log-rank p" in line for line in printed) and any("KM panel" in line for line in printed)


def test_a_km_panel_of_a_method_without_results_names_it(written):
    from bench.report.plots import km_figures

    store, _, _ = written
    summary = store.summarize("hand").assign(dataset="hand")
    with pytest.raises(ValueError, match="--km-panel: no survival results for transmil.resnet50 on dataset 'hand'"):
        km_figures(store, summary, ["hand"], ["abmil.resnet50", "transmil.resnet50"])


def test_written_files_are_readable_by_the_group_and_others(written):
    """Under umask 022 every file `bench table` and the results store write is -rw-r--r--."""
    store, out, _ = written
    files = [store.summary_path("hand"), out, out.with_suffix(".md"), out.with_name("table2_hand_chance.csv"),
             *store.root.glob("runs/hand/*/*/fold0/*.json"), *store.root.glob("runs/hand/*/*/fold0/*.csv"),
             *store.root.glob("figures/hand/*.png")]
    assert len(files) > 8
    modes = {str(f.relative_to(store.root)): stat.filemode(f.stat().st_mode) for f in files}
    assert set(modes.values()) == {"-rw-r--r--"}, modes


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_the_atomic_writer_gives_the_mode_of_a_plain_open(tmp_path, mask, mode):
    from bench.io import atomic_write_text

    old = os.umask(mask)
    try:
        atomic_write_text(tmp_path / "sub" / "a.txt", "x")
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "sub" / "a.txt").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "sub").stat().st_mode) == 0o777 & ~mask


def test_the_fast_survival_null_equals_the_generic_one():
    """Survival moves the risks by the inverse permutation instead of the labels: the same values."""
    from bench.tasks import Task, get_task

    t = get_task("survival")
    f = frame("survival", "perfect").assign(risk=RNG.normal(size=N).round(1))  # with ties
    cols = t.columns(f)
    perms = np.random.default_rng(3).permuted(np.broadcast_to(np.arange(N), (50, N)), axis=1)
    fast = t.permuted_metric(cols, perms, chunk_cells=5000)
    generic = Task.permuted_metric(t, cols, perms)
    assert np.allclose(fast, generic)
    assert generic[0] == pytest.approx(c_index(f["time"], f["event"], f["risk"].to_numpy()[np.argsort(perms[0])]))


def test_fold_counts_in_figure_titles_are_grammatical():
    from bench.report.plots import folds_text

    assert (folds_text(1), folds_text(5)) == ("1 fold", "5 folds")


def test_a_survival_row_whose_every_fold_ranks_well_on_its_own_scale_is_not_at_chance():
    """Five folds' models each rank their test cases perfectly, but on scales that run against the
    folds' survival (fold k's risks shifted by +100·k while its cases live longest): Harrell's C of
    the pooled risks is near chance, yet every fold's model is right about every pair it compares.
    The test counts pairs within a fold and shuffles labels within folds: p = 1/1001."""
    f = frame("survival", "perfect")
    f = f.assign(time=f["time"] + 1000 * f["fold"], risk=-f["time"] + 100 * f["fold"])
    pooled = c_index(f["time"], f["event"], f["risk"].to_numpy())
    assert pooled < 0.6  # the construction: pooling across folds hides the ranking
    c = chance_test(f, "survival")
    assert c.observed == pytest.approx(1.0) and c.p == pytest.approx(1 / 1001) and not c.at_chance


def test_labels_are_shuffled_only_within_their_fold():
    from bench.report.stats import within_strata

    strata = np.array([0, 1, 0, 2, 1, 0, 2])
    perms = within_strata(strata, 200, np.random.default_rng(0))
    assert (strata[perms] == strata).all()  # every case takes a label of its own fold
    assert all(sorted(p) == list(range(7)) for p in perms)  # permutations
    assert len({tuple(p) for p in perms}) > 20  # and not the identity only


def test_the_fast_survival_null_equals_the_generic_one_within_folds():
    from bench.report.stats import within_strata
    from bench.tasks import Task, get_task

    t = get_task("survival")
    f = frame("survival", "perfect").assign(risk=RNG.normal(size=N).round(1))
    cols = {**t.columns(f), "stratum": f["fold"].to_numpy()}
    perms = within_strata(cols["stratum"], 50, np.random.default_rng(3))
    fast, generic = t.permuted_metric(cols, perms, chunk_cells=5000), Task.permuted_metric(t, cols, perms)
    assert np.allclose(fast, generic)
    # by hand: per fold, the pairs of that fold with the risks moved by the inverse permutation
    moved = f["risk"].to_numpy()[np.argsort(perms[0])]
    num = den = 0.0
    for k in range(5):
        s = (f["fold"] == k).to_numpy()
        tt, ee, rr = f["time"].to_numpy()[s], f["event"].to_numpy()[s], moved[s]
        for a in range(len(tt)):
            for b in range(len(tt)):
                if ee[a] and (tt[b] > tt[a] or (tt[b] == tt[a] and not ee[b])):
                    den += 1
                    num += 1.0 if rr[a] > rr[b] + 1e-8 else 0.5 if abs(rr[a] - rr[b]) <= 1e-8 else 0.0
    assert fast[0] == pytest.approx(num / den)


def test_km_risk_groups_split_each_fold_at_its_own_median():
    """Fold 1's model scores every risk 100 above fold 0's: one median over both folds would put all
    of fold 1 in the high-risk group. Split per fold, each fold gives half its cases to each group,
    the ones its own model ranks higher."""
    from bench.report.plots import risk_groups

    pred = pd.DataFrame({"fold": [0, 0, 0, 0, 1, 1, 1, 1], "risk": [0.1, 0.4, 0.2, 0.3, 100.4, 100.1, 100.3, 100.2]})
    assert risk_groups(pred).tolist() == [False, True, False, True, True, False, True, False]
    assert risk_groups(pred.drop(columns="fold")).tolist() == [False] * 4 + [True] * 4
