"""A stand-in for ``bench.engine.inputs.FeatureInputs`` in fast tests: synthetic bags instead of the
HDF5 feature cache, with the same face (identity, spec, provenance, ensure, has, sample)."""

from bench.results.records import InputSpec, WeightsProvenance


class FakeFeatureInputs:
    encoder_name = "fake"

    def __init__(self, cohort, encoder_name, cache_root, allow_random, progress, standin=False):
        self.cohort = cohort
        self.encoder_name = encoder_name

    @property
    def identity(self):
        return {"kind": "features", "encoder": "fake", "fingerprint": "fake"}

    @property
    def spec(self):
        return InputSpec("features", encoder=self.encoder_name, magnification=20.0)

    def provenance(self):
        return [WeightsProvenance(f"encoder {self.encoder_name}", "random", "random initialisation (fake)")]

    def ensure(self, cases=None):
        pass

    def has(self, case_id):
        return True


def write_toy_cohort(root, n_cases, slide_bytes=lambda i: b"", rows=None):
    """A dataset of ``n_cases`` cases, one (fake) slide file each, a normalized clinical CSV and its
    YAML (``<root>/toy.yaml``); ``rows(i)`` gives a case's labels (default: stages cycling, survival
    times drawn from a seeded generator, two thirds of the cases with an event)."""
    import numpy as np
    import pandas as pd

    data = root / "data"
    (data / "slides").mkdir(parents=True)
    rng = np.random.default_rng(0)
    table = []
    for i in range(n_cases):
        cid = f"CASE-{i:03d}"
        (data / "slides" / f"{cid}.tiff").write_bytes(slide_bytes(i))
        labels = rows(i) if rows else {"stage": i % 4, "time": float(rng.uniform(1, 60)), "event": int(i % 3 != 0)}
        table.append({"case_id": cid, **labels})
    pd.DataFrame(table).to_csv(data / "clinical.csv", index=False)
    spec = root / "toy.yaml"
    spec.write_text(f"root: {data}\nslides: slides\nslide_glob: '*.tiff'\nclinical: clinical.csv\n"
                    "clinical_format: normalized\ncase_id: stem\ntasks: [staging, survival]\n"
                    "allow_random_weights: true\n")
    return spec, data


class BagInputs(FakeFeatureInputs):
    """Seeded random bags of 6 x 1024 features per case (the same in every process)."""

    def sample(self, case_id, labels):
        import torch

        from bench.engine.train import Sample

        g = torch.Generator().manual_seed(int(case_id[-3:]))
        x = torch.randn(6, 1024, generator=g)
        return Sample(case_id, lambda: x, labels)
