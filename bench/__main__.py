import os
import sys

# before torch loads libgomp (the CLI's imports may load it); see bench.cli.passive_openmp
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .cli import main  # noqa: E402

sys.exit(main())
