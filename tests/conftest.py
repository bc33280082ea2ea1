import os
import tempfile

# never wait on a hub that cannot be reached (REFERENCE.md: 23–47 s of retries otherwise)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# as `import bench` does, before anything loads torch (bench/__init__.py says why)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# remembered encoder fingerprints go to a throwaway directory, never the user's ~/.cache/wsi-bench
os.environ.setdefault("BENCH_STATE_DIR", tempfile.mkdtemp(prefix="wsi-bench-test-state-"))
# tests read the shipped configs: a user's overlay ($BENCH_CONFIG, ./configs) must not change them
os.environ["BENCH_CONFIG"] = tempfile.mkdtemp(prefix="wsi-bench-test-configs-")
# `bench run` subprocesses of the tests train on one process (the CLI's default is --jobs auto, one
# process per core); tests/engine/test_jobs.py runs --jobs 2 and tests the auto choice
os.environ.setdefault("BENCH_JOBS", "1")

# the shipped encoder declarations (bench/configs/encoders) enter feature_cache's registry when the
# harness's registry is imported, as every `bench` command does; library-level tests need them too
import bench.registry  # noqa: E402,F401
