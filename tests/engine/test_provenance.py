"""Every number traceable and never stale: a unit's identity covers its labels, slides, mpp, split
set, options and pretrained parts; bad options or checkpoints fail before finished work is touched;
a row is one configuration; records and predictions are verified when read. Fast: fake feature
inputs (tests/helpers/fake_inputs.py) stand in for the HDF5 cache, and MeanMIL trains in a blink."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

import bench.engine.inputs as inputs_mod
import bench.engine.unit as unit_step
from bench.engine import runner
from bench.engine.config import OptionError
from bench.engine.runner import run, unit_variant
from bench.engine.train import Sample
from bench.registry import get_method
from bench.results.records import RecordError
from bench.results.store import ResultsStore
from fake_inputs import FakeFeatureInputs, write_toy_cohort

N_CASES = 20


class StageInputs(FakeFeatureInputs):
    """Bags whose mean carries the stage read from the slide file, so a changed label changes nothing
    the inputs see — only the identity can tell."""

    def sample(self, case_id, labels):
        g = torch.Generator().manual_seed(int(case_id[-3:]))
        x = torch.randn(6, 1024, generator=g)
        return Sample(case_id, lambda: x, labels)


@pytest.fixture()
def cohort(tmp_path, monkeypatch):
    spec, data = write_toy_cohort(tmp_path, N_CASES, slide_bytes=lambda i: b"II*\x00" + bytes([i]) * 100)
    monkeypatch.setitem(inputs_mod.FEATURE_INPUTS, "features", StageInputs)
    return spec, tmp_path / "results", data


def _run(spec, results, **kw):
    kw.setdefault("train_overrides", {"epochs": 1})
    return run([get_method("meanmil.resnet50")], str(spec), results=results, progress=False, **kw)


def _mtimes(results):
    return {p: p.stat().st_mtime_ns for p in (results / "runs").glob("*/*/*/fold*/metrics.json")}


def test_corrected_label_reruns_exactly_the_affected_units(cohort):
    spec, results, data = cohort
    first = _run(spec, results, tasks=["staging"])
    assert len(first.ran) == 5
    before = _mtimes(results)
    clin = pd.read_csv(data / "clinical.csv")
    clin.loc[clin.case_id == "CASE-004", "stage"] = 3  # I -> IV, as a new GDC release corrects it
    clin.to_csv(data / "clinical.csv", index=False)
    again = _run(spec, results, tasks=["staging"])
    # every staging unit reads the case (as a training or test case), so all five are redone, and say why
    assert len(again.ran) == 5 and set(again.redone) == set(first.ran)
    why = "; ".join(again.redone[first.ran[0]])
    assert "labels of 1 case(s) changed" in why and "CASE-004: [0.0] -> [3.0]" in why
    assert all(_mtimes(results)[p] != t for p, t in before.items())
    store = ResultsStore(results)
    pred = store.predictions("toy", "staging", "meanmil.resnet50")
    assert int(pred.loc[pred.case_id == "CASE-004", "stage"].iloc[0]) == 3  # the new label
    # the old results are kept aside, not deleted
    assert len(list((results / "runs/toy/staging/meanmil.resnet50").glob("fold*.superseded-*"))) == 5


def test_follow_up_change_reruns_survival_only(cohort):
    spec, results, data = cohort
    _run(spec, results)
    clin = pd.read_csv(data / "clinical.csv")
    clin.loc[clin.case_id == "CASE-002", "time"] = 0.66  # 1220 -> 20 days
    clin.to_csv(data / "clinical.csv", index=False)
    again = _run(spec, results)
    assert {u.task for u in again.ran} == {"survival"} and len(again.ran) == 5
    assert len(again.done_before) == 5  # staging untouched


def test_rescanned_slide_under_the_same_name_is_seen(cohort):
    spec, results, data = cohort
    _run(spec, results, tasks=["staging"])
    (data / "slides" / "CASE-007.tiff").write_bytes(b"II*\x00" + b"\x07" * 99 + b"\x08")  # same size
    again = _run(spec, results, tasks=["staging"])
    assert len(again.ran) == 5
    assert "the slide files of 1 case(s) changed on disk" in "; ".join(next(iter(again.redone.values())))
    assert "CASE-007" in "; ".join(next(iter(again.redone.values())))


def test_mpp_override_added_later_is_part_of_the_identity(cohort):
    spec, results, data = cohort
    _run(spec, results, tasks=["staging"], folds=[0])
    spec.write_text(spec.read_text() + "mpp_override: 0.25\n")
    plan = _run(spec, results, tasks=["staging"], folds=[0], dry_run=True)
    assert len(plan.todo) == 1 and "mpp_override" in "; ".join(plan.redone[plan.todo[0].unit])


@pytest.mark.parametrize("sets, option", [({"epochs": 0}, "epochs"), ({"epochs": -1}, "epochs"),
                                          ({"epochs": 2.5}, "epochs"), ({"grad_accum": 0}, "grad_accum"),
                                          ({"lr": -1}, "lr"), ({"patience": 0}, "patience")])
def test_bad_set_fails_before_any_finished_unit_moves(cohort, sets, option):
    spec, results, _ = cohort
    _run(spec, results, tasks=["staging"])
    before = {p: p.read_text() for p in _mtimes(results)}
    with pytest.raises(OptionError, match=rf"training option {option}="):
        _run(spec, results, tasks=["staging"], train_overrides={"epochs": 1, **sets})
    assert {p: p.read_text() for p in _mtimes(results)} == before
    assert not list(results.glob("runs/*/*/*/fold*.superseded-*")) and not list(results.glob("runs/*/*/*/*.next"))
    assert len(ResultsStore(results).summarize("toy")) > 0  # the table still has its rows


def test_bad_init_fails_before_any_finished_unit_moves(cohort, tmp_path):
    spec, results, _ = cohort
    _run(spec, results, tasks=["staging"])
    before = {p: p.read_text() for p in _mtimes(results)}
    wrong = tmp_path / "wrong_architecture.pt"
    torch.save({"model": {"some.other.weight": torch.zeros(3, 3)}}, wrong)
    with pytest.raises(OptionError, match="cannot start meanmil.resnet50.*no tensor"):
        _run(spec, results, tasks=["staging"], init=wrong)
    payload = tmp_path / "payload.pt"
    import pickle

    payload.write_bytes(pickle.dumps(object()))
    with pytest.raises(OptionError, match="cannot read checkpoint"):
        _run(spec, results, tasks=["staging"], init=payload)
    assert {p: p.read_text() for p in _mtimes(results)} == before


def test_a_failed_replacement_leaves_the_previous_result_live(cohort, monkeypatch):
    spec, results, _ = cohort
    _run(spec, results, tasks=["staging"], folds=[0])
    before = {p: p.read_text() for p in _mtimes(results)}

    def boom(*a, **k):
        raise RuntimeError("killed mid-training")

    monkeypatch.setattr(unit_step, "fit_and_score", boom)
    rep = _run(spec, results, tasks=["staging"], folds=[0], train_overrides={"epochs": 2}, variant=None)
    assert rep.failed and not rep.ran
    assert {p: p.read_text() for p in _mtimes(results)} == before  # still the finished result


def test_some_folds_with_other_settings_are_refused_or_a_variant(cohort):
    spec, results, _ = cohort
    _run(spec, results, tasks=["staging"], train_overrides={"epochs": 2})
    before = ResultsStore(results).summarize("toy")
    with pytest.raises(OptionError, match=r"would mix configurations.*epochs.*--variant NAME"):
        _run(spec, results, tasks=["staging"], folds=[0], train_overrides={"epochs": 1})
    after = ResultsStore(results).summarize("toy")
    pd.testing.assert_frame_equal(before, after)
    rep = _run(spec, results, tasks=["staging"], folds=[0], train_overrides={"epochs": 1}, variant="e1")
    assert [u.variant for u in rep.ran] == ["e1"]
    rows = ResultsStore(results).summarize("toy")
    prim = rows[rows.primary]
    assert set(prim.variant) == {"", "e1"} and int(prim.loc[prim.variant == "e1", "n_folds"].iloc[0]) == 1


def test_a_mixed_row_is_refused_when_read(cohort):
    spec, results, _ = cohort
    _run(spec, results, tasks=["staging"], folds=[0, 1])
    # force fold 1 to another configuration by hand, as a pre-provenance run would have
    _run(spec, results, tasks=["staging"], folds=[1], train_overrides={"epochs": 2}, row_check=False)
    with pytest.raises(RecordError, match=r"fold 1 differs from fold 0 in train.*a row is one configuration"):
        ResultsStore(results).summarize("toy")


def test_another_seed_or_fold_count_is_another_split_set(cohort):
    spec, results, _ = cohort
    _run(spec, results, tasks=["staging"])
    before = _mtimes(results)
    rep = _run(spec, results, tasks=["staging"], seed=1)
    assert len(rep.ran) == 5 and {u.variant for u in rep.ran} == {"seed1-k5"}
    rep3 = _run(spec, results, tasks=["staging"], n_folds=3)
    assert len(rep3.ran) == 3 and {u.variant for u in rep3.ran} == {"seed0-k3"}
    assert {p: t for p, t in _mtimes(results).items() if p in before} == before  # default set untouched
    s1 = pd.read_csv(results / "splits/toy/seed1-k5/staging.csv")
    s0 = pd.read_csv(results / "splits/toy/staging.csv")
    assert not s0.sort_values("case_id")["fold"].equals(s1.sort_values("case_id")["fold"])
    assert (results / "splits/toy/seed0-k3/staging.csv").is_file()


def test_unit_variant_names():
    assert unit_variant(None, False, 0, 5) is None
    assert unit_variant("alpha=0.4", True, 0, 5) == "alpha=0.4+tuned"
    assert unit_variant(None, True, 0, 5) == "tuned"
    assert unit_variant("e1", False, 2, 3) == "e1+seed2-k3"


def test_truncated_predictions_are_redone_and_refused_when_read(cohort):
    spec, results, _ = cohort
    _run(spec, results, tasks=["staging"], folds=[0, 1])
    p = results / "runs/toy/staging/meanmil.resnet50/fold1/predictions.csv"
    p.write_text("\n".join(p.read_text().splitlines()[:-2]) + "\n")
    with pytest.raises(RecordError, match=r"fold1/predictions.csv does not match its record.*--folds 1"):
        ResultsStore(results).predictions("toy", "staging", "meanmil.resnet50")
    rep = _run(spec, results, tasks=["staging"], folds=[0, 1])
    assert [u.fold for u in rep.ran] == [1] and "damaged" in "; ".join(rep.redone[rep.ran[0]])
    assert len(ResultsStore(results).predictions("toy", "staging", "meanmil.resnet50")) > 0


def test_records_carry_weights_provenance(cohort):
    spec, results, _ = cohort
    _run(spec, results, tasks=["staging"], folds=[0])
    rec = next(ResultsStore(results).records("toy"))
    assert rec.random_weights and rec.weights[0].part == "encoder resnet50"
    assert rec.input.label() == "features:resnet50" and rec.split.seed == 0 and rec.split.n_folds == 5
    cfg = json.loads((results / "runs/toy/staging/meanmil.resnet50/fold0/config.json").read_text())
    assert cfg["labels"]["CASE-004"] == [0.0] and len(cfg["slides"]["CASE-004"]) == 1


def test_end_to_end_from_scratch_needs_saying_so(cohort):
    spec, results, _ = cohort
    spec.write_text(spec.read_text().replace("allow_random_weights: true", "allow_random_weights: false"))
    e2e = [get_method("vim-ti")]
    with pytest.raises(OptionError, match="random initialisation.*--init CHECKPOINT.*--from-scratch"):
        run(e2e, str(spec), results=results, tasks=["staging"], folds=[0], dry_run=True, progress=False)
    plan = run(e2e, str(spec), results=results, tasks=["staging"], folds=[0], dry_run=True, progress=False,
               from_scratch=True)
    (p,) = plan.todo
    assert p.config["weights"] == [{"part": "model", "source": "scratch", "label": "random initialisation "
                                    "(--from-scratch)", "path": None, "sha256": None, "mapping": None}]


def _fake_encoder():
    from types import SimpleNamespace

    return SimpleNamespace(name="resnet50", fingerprint="f" * 16, random_weights=True, patch_size=256,
                           magnification=20.0, weights_source="test")


def test_mpp_override_keys_the_feature_cache_directory(tmp_path):
    from feature_cache import FeatureCache

    enc = _fake_encoder()
    plain, over = FeatureCache(tmp_path).dir_for(enc), FeatureCache(tmp_path, mpp=0.25).dir_for(enc)
    assert plain != over and FeatureCache(tmp_path, mpp=0.5).dir_for(enc) not in (plain, over)
    assert FeatureCache(tmp_path).key(enc).get("mpp_override") is None  # existing caches keep their key


def test_zeroed_feature_file_is_refused_on_read(tmp_path):
    import h5py

    from feature_cache import FeatureCache, FeatureFileCorrupt
    from feature_cache.cache import write_h5

    cache, enc = FeatureCache(tmp_path), _fake_encoder()
    out = cache.path_for("S1", enc)
    out.parent.mkdir(parents=True)
    write_h5(out, np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32),
              np.arange(8).reshape(4, 2), {"slide_id": "S1"}, {})
    assert cache.load("S1", enc)[0].shape == (4, 8)
    with h5py.File(out, "r+") as f:
        f["features"][...] = 0.0  # as a buggy copy or a tool "cleaning" the file would leave it
    with pytest.raises(FeatureFileCorrupt, match="do not match the checksum"):
        cache.load("S1", enc)


# --- one unit executor: `tune` builds exactly the network `run` builds -------------------------------
class _Recorded(Exception):
    pass


class _SecondStageInputs(StageInputs):
    """Tiles with a second stage's weights decided by the inputs (as TileInputs does)."""

    model_kwargs = {"weights": "/weights/slide_encoder.pth"}

    def provenance(self):
        return super().provenance() + [
            __import__("bench.results.records", fromlist=["WeightsProvenance"]).WeightsProvenance(
                "slide_encoder", "pretrained", "slide_encoder.pth", "/weights/slide_encoder.pth", "ab")]


class _FakeSlides(StageInputs):
    def __init__(self, cohort, magnification, cache_root, progress, raw_rgb=False, settings=None):
        super().__init__(cohort, "slide", cache_root, False, progress)


@pytest.mark.parametrize("method", ["abmil.resnet50", "prov-gigapath-cls", "pixelmamba-6m"])
def test_tune_builds_the_network_run_builds(cohort, monkeypatch, tmp_path, method):
    pytest.importorskip("optuna")
    import bench.engine.tuning as tuning_mod
    from bench.engine.tuning import tune, split_params

    spec, results, _ = cohort
    monkeypatch.setitem(inputs_mod.FEATURE_INPUTS, "tiles", _SecondStageInputs)
    monkeypatch.setattr(inputs_mod, "SlideInputs", _FakeSlides)
    init = tmp_path / "init.pt"
    if get_method(method).family == "end-to-end":  # a checkpoint that fits (the network's backbone)
        from bench.registry import build_model

        sd = build_model(method, 4, scan_window=64).state_dict()
        torch.save({"model": {k: v for k, v in sd.items() if not k.startswith("head.")}}, init)
    seen = {}

    def record(where):
        def fake(recipe, task, train, test, cfg, **kw):
            seen[where] = recipe
            raise _Recorded(where)
        return fake

    monkeypatch.setattr(unit_step, "fit_and_score", record("run"))
    monkeypatch.setattr(tuning_mod, "fit_and_score", record("tune"))
    m = get_method(method)
    e2e = m.family == "end-to-end"
    rep = run([m], str(spec), results=results, tasks=["staging"], folds=[0], progress=False,
              train_overrides={"epochs": 1}, init=init if e2e else None)
    assert "_Recorded" in next(iter(rep.failed.values()))
    with pytest.raises(_Recorded):
        tune(m, str(spec), n_trials=1, tasks=["staging"], folds=[0], results=results, progress=False,
             train_overrides={"epochs": 1}, init=init if e2e else None)
    r, t = seen["run"], seen["tune"]
    _, searched = split_params(tuning_mod.load_space(m)["space"])
    assert t.spec == r.spec and t.n_out == r.n_out
    assert {k: v for k, v in t.options.items() if k not in searched} == \
        {k: v for k, v in r.options.items() if k not in searched}
    assert t.input_kwargs == r.input_kwargs  # e.g. the second stage's pretrained weights
    assert (t.init, t.init_sha256) == (r.init, r.init_sha256)  # --init reaches tuning too
    if method == "prov-gigapath-cls":
        assert r.input_kwargs == {"weights": "/weights/slide_encoder.pth"}
    if e2e:
        assert r.init == init


def test_run_on_an_unwritable_results_root_names_it(cohort, tmp_path, capsys):
    from bench.cli import main

    spec, _, _ = cohort
    (tmp_path / "a-file").write_text("")
    code = main(["run", "--methods", "meanmil.resnet50", "--dataset", str(spec), "--results",
                 str(tmp_path / "a-file" / "results"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "results directory" in err and "a-file is not a directory" in err and "--results" in err


def test_a_row_never_mixes_protocols(tmp_path):
    from bench.results.store import Unit
    from record_factory import make_record

    store = ResultsStore(tmp_path)
    for k, proto in enumerate(("wsi-bench", "paper")):
        u = Unit("demo", "staging", "abmil.resnet50", k)
        store.prepare(u, {"fold": k, "protocol": proto}, "h")  # the unit's identity, as the planner writes it
        store.finish(u, pd.DataFrame({"case_id": ["a"], "stage": [1], "pred": [1]}), pd.DataFrame(),
                     make_record(fold=k, protocol=proto))
    with pytest.raises(RecordError, match=r"fold 1 differs from fold 0 in protocol"):
        store.summarize("demo")


def test_one_weights_provenance_from_load_to_record(tmp_path):
    """The provenance a weights load records is the class the unit record holds; a record written
    before the class gained ``dropped``/``n_keys`` reads unchanged, and so does an encoder load
    remembered with the ``component`` spelling."""
    import feature_cache.weights as fw
    from bench.results import records
    from record_factory import make_record

    assert records.WeightsProvenance is fw.WeightsProvenance
    old = make_record().to_dict()
    assert old["weights"] == [{"part": "encoder resnet50", "source": "pretrained", "label": "pretrained (hub)",
                               "path": None, "sha256": "abc", "mapping": None}]  # the schema-2 entry, as written
    assert records.UnitRecord.from_dict(json.loads(json.dumps(old))).to_dict() == old
    loaded = fw.WeightsProvenance("--init", "explicit", path="a.pt", sha256="ff", mapping="name-for-name",
                                  dropped=("head.weight",), n_keys=411)
    rec = make_record(weights=[loaded])
    back = records.UnitRecord.from_json(json.dumps(rec.to_dict()))
    assert back.weights == [loaded] and not back.random_weights
    remembered = {"component": "encoder conch", "source": "hub", "path": "/h/conch.bin", "sha256": "01",
                  "mapping": "open_clip", "dropped": ["text.x"], "n_keys": 3}
    assert fw.WeightsProvenance.from_dict(remembered) == fw.WeightsProvenance(
        "encoder conch", "hub", "", "/h/conch.bin", "01", "open_clip", ("text.x",), 3)


def _finished_row(store, configs):
    """One row's finished folds, each with its identity (``configs[k]``) and one identical record."""
    from bench.results.store import Unit
    from record_factory import make_record

    for k, config in enumerate(configs):
        u = Unit("demo", "staging", "abmil.resnet50", k)
        store.prepare(u, config, f"h{k}")
        store.finish(u, pd.DataFrame({"case_id": ["a"], "stage": [1], "pred": [1]}), pd.DataFrame(),
                     make_record(fold=k))


IDENTITY = {"dataset": "demo", "task": "staging", "method": "abmil.resnet50", "variant": None,
            "inputs": {"kind": "features", "encoder": "resnet50", "max_instances": None},
            "model": {"dropout": 0.25}, "train": {"epochs": 20, "lr": 2e-4}, "protocol": "wsi-bench",
            "split": {"hash": "s", "seed": 0, "n_folds": 2}}


def test_the_summary_and_the_pre_run_check_compare_one_row_signature(tmp_path):
    """Folds whose identities differ only in an input option (which the record's own fields do not
    show) are refused by both checks: before a run that would finish the row so, and when it is read."""
    from types import SimpleNamespace

    from bench.engine.status import check_rows
    from bench.results.store import Unit
    from bench.results.store import MixedRowError
    from bench.results.identity import digest, row_signature

    other = {**IDENTITY, "inputs": {**IDENTITY["inputs"], "max_instances": 512}}
    assert digest(row_signature({**IDENTITY, "fold": 0, "train": {**IDENTITY["train"], "seed": 7}})) == \
        digest(row_signature({**IDENTITY, "fold": 3, "train": {**IDENTITY["train"], "seed": 9}}))
    assert digest(row_signature(IDENTITY)) != digest(row_signature(other))
    store = ResultsStore(tmp_path)
    _finished_row(store, [{**IDENTITY, "fold": 0}])
    plan = SimpleNamespace(unit=Unit("demo", "staging", "abmil.resnet50", 1), config={**other, "fold": 1})
    with pytest.raises(OptionError, match=r"fold 0 is finished with others \(inputs: max_instances None -> 512\)"):
        check_rows([plan], store, {plan.unit: "run"})
    same = SimpleNamespace(unit=plan.unit, config={**IDENTITY, "fold": 1, "train": {**IDENTITY["train"], "seed": 3}})
    check_rows([same], store, {same.unit: "run"})  # only the fold and its seed differ: one row
    _finished_row(store, [{**IDENTITY, "fold": 0}, {**other, "fold": 1}])
    with pytest.raises(MixedRowError, match=r"fold 1 differs from fold 0 in inputs: max_instances None -> 512"):
        store.summarize("demo")


def test_the_mixed_row_message_names_only_real_differences(tmp_path):
    """Two folds run on the same commit at different times (another start time, host, config hash)
    are one configuration; a real change is named, and nothing else."""
    store = ResultsStore(tmp_path)
    _finished_row(store, [{**IDENTITY, "fold": 0}, {**IDENTITY, "fold": 1}])
    assert not store.summarize("demo").empty  # started/environment/config_hash differ: still one row
    store2 = ResultsStore(tmp_path / "b")
    _finished_row(store2, [{**IDENTITY, "fold": 0}, {**IDENTITY, "fold": 1, "train": {"epochs": 5, "lr": 2e-4}}])
    with pytest.raises(RecordError) as err:
        store2.summarize("demo")
    msg = str(err.value)
    assert "train: epochs 20 -> 5" in msg
    for noise in ("code_version", "environment", "started", "config_hash", "lr"):
        assert noise not in msg, noise


def test_a_variant_named_like_a_setting_is_a_row_of_the_table(cohort, tmp_path):
    """``bench run --variant 'lr=1e-3'`` is a user's variant, not an ablation value: Table 2 shows
    it. Which rows are ablation values is the records' typed variant settings, not a name's '='."""
    from bench.report.write import write_tables

    spec, results, _ = cohort
    _run(spec, results, tasks=["staging"], variant="lr=1e-3", train_overrides={"epochs": 1, "lr": 1e-3})
    printed = write_tables(ResultsStore(results), ["toy"], tmp_path / "t.tex", figures=False)
    assert "MeanMIL (lr=1e-3)" in printed[0]
    summary = ResultsStore(results).summarize("toy")
    assert set(summary["variant"]) == {"lr=1e-3"} and not summary["ablation"].any()
    assert isinstance(summary["folds"].iloc[0], list) and len(summary["folds"].iloc[0]) == 5
    csv = pd.read_csv(results / "toy" / "summary.csv")  # the output for people: folds ';'-joined, JSON
    assert csv["folds"].iloc[0].count(";") == 4 and json.loads(csv["provenance"].iloc[0])[0]["part"]
