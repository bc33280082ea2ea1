"""A stand-in for ``bench.engine.inputs.FeatureInputs`` in fast tests: synthetic bags instead of the
HDF5 feature cache, with the same face (identity, spec, provenance, ensure, has, sample)."""

from bench.results.records import InputSpec, WeightsProvenance


class FakeFeatureInputs:
    encoder_name = "fake"

    def __init__(self, cohort, encoder_name, cache_root, allow_random, progress, standin=False, settings=None):
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


def write_cached_cohort(root, n_cases, yaml_extra=""):
    """A cohort of ``n_cases`` empty slide files whose ResNet-50 features (random, 6 patches, the
    stage planted in 8 dimensions) are already in ``<root>/cache``; its YAML is ``<root>/toy.yaml``
    (``yaml_extra``: more lines, e.g. ``protocol: paper``). Returns the YAML's path."""
    import h5py
    import numpy as np
    import pandas as pd
    from feature_cache import FeatureCache, get_encoder

    data = root / "data"
    (data / "slides").mkdir(parents=True)
    enc = get_encoder("resnet50", allow_random=True)
    cache = FeatureCache(root / "cache")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_cases):
        cid = f"CASE-{i:03d}"
        (data / "slides" / f"{cid}.tiff").write_bytes(b"")
        p = cache.path_for(cid, enc)
        p.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(p, "w") as f:
            x = rng.normal(size=(6, enc.dim)).astype(np.float32)
            x[:, :8] += i % 4
            f["features"] = x
            f["coords"] = np.stack([np.arange(6) * 256, np.zeros(6)], 1).astype(np.int64)
            f.attrs["patch_size_level0"] = 256  # as the cache writes it
        rows.append({"case_id": cid, "stage": i % 4, "time": 10.0 + i, "event": i % 2})
    pd.DataFrame(rows).to_csv(data / "clinical.csv", index=False)
    spec = root / "toy.yaml"
    spec.write_text(f"root: {data}\nslides: slides\nslide_glob: '*.tiff'\nclinical: clinical.csv\n"
                    "clinical_format: normalized\ncase_id: stem\ntasks: [staging, survival]\n"
                    f"allow_random_weights: true\n{yaml_extra}")
    return spec


def run_bench(*args, env=None, timeout=600, check=True):
    """``python -m bench ARGS`` from the repository root; a failure raises with its output."""
    import subprocess
    import sys
    from pathlib import Path

    p = subprocess.run([sys.executable, "-m", "bench", *map(str, args)], cwd=Path(__file__).resolve().parents[2],
                       env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"bench {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def write_demo_spec(root, *, n_cases, name="tiny", extra=""):
    """A dataset YAML ``root/<name>.yaml`` of the demo generator at ``n_cases`` cases (seed 1, data
    under ``root/data``), both tasks, random weights allowed; ``extra``: more YAML appended."""
    from pathlib import Path

    spec = Path(root) / f"{name}.yaml"
    spec.write_text(f"""description: {name} demo for tests
generator: demo
generator_args: {{n_cases: {n_cases}, seed: 1}}
root: {Path(root) / 'data'}
slides: slides
slide_glob: "*.tiff"
clinical: clinical.csv
clinical_format: normalized
tasks: [staging, survival]
allow_random_weights: true
""" + extra)
    return spec


def write_tiny_demo_spec(root, *, epochs, magnification, extra=""):
    """:func:`write_demo_spec` at 8 cases with end-to-end units trained ``epochs`` with 2 slides per
    step at ``magnification``."""
    return write_demo_spec(root, n_cases=8, extra=f"""train:
  end-to-end: {{epochs: {epochs}, grad_accum: 2}}
inputs:
  end-to-end: {{magnification: {magnification}}}
""" + extra)
