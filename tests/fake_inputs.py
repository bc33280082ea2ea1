"""A stand-in for ``bench.engine.inputs.FeatureInputs`` in fast tests: synthetic bags instead of the
HDF5 feature cache, with the same face (identity, spec, provenance, ensure, has, sample)."""

from bench.report.records import InputSpec, WeightsProvenance


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
