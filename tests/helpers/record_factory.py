"""Unit records for tests of the readers (tables, stats, ablation tables): every field filled with a
plausible default, any of them overridden by keyword."""

from bench.results.records import InputSpec, SplitIdentity, UnitRecord, WeightsProvenance


def make_record(**kw) -> UnitRecord:
    base = dict(
        dataset="demo", task="staging", method="abmil.resnet50", fold=0, variant=None, variant_settings={},
        tuned=None, family="two-stage", label="ABMIL", group="Two-stage MIL; patch features: ResNet-50 (ImageNet)",
        backbone="ResNet-50", encoder="resnet50", encoder_label="ResNet-50", frozen_params_text="25M",
        default_input=InputSpec("features", encoder="resnet50", magnification=20.0),
        input=InputSpec("features", encoder="resnet50", magnification=20.0), model={}, train={"epochs": 20},
        protocol="wsi-bench", split=SplitIdentity("h", 0, 5), identity={"labels": "l", "slides": "s"},
        weights=[WeightsProvenance("encoder resnet50", "pretrained", "pretrained (hub)", sha256="abc")],
        config_hash="c", code_version="test", numerics_version=1, primary_metric="macro_f1",
        higher_is_better=True, metrics={"macro_f1": 0.5}, params=1000, trainable_params=1000, n_train=8, n_test=2,
        cases_without_input=[], predictions_sha256="", train_seconds=1.0, train_seconds_per_slide=0.1,
        peak_rss_mb=100.0, peak_cuda_mb=None, finished=0.0, info={})
    base.update(kw)
    return UnitRecord(**base)


def staging_predictions(n: int = 2):
    """A staging ``predictions.csv`` frame as the executor writes it: the label, the predicted class
    and each class's probability (the chance test and the KM figures read these columns)."""
    import pandas as pd

    stage = [k % 4 for k in range(n)]
    out = pd.DataFrame({"case_id": [f"CASE-{k:03d}" for k in range(n)], "stage": stage, "pred": stage})
    for c in range(4):
        out[f"prob{c}"] = [1.0 if s == c else 0.0 for s in stage]
    return out
