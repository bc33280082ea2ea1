import os

# never wait on a hub that cannot be reached (REFERENCE.md: 23–47 s of retries otherwise)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# as `import bench` does, before anything loads torch (bench/__init__.py says why)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
