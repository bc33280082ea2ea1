"""The worker command of tests/engine/test_jobs.py: ``bench run`` over the fake cohort with fake bags, as
``bench run --jobs N`` starts its workers (the worker marker in the environment), recording which
process trained which unit."""

import json
import bench.engine.inputs as inputs_mod
import bench.engine.unit as unit_step
import os
import sys
import time

from bench.engine import runner
from bench.registry import get_method
from fake_inputs import BagInputs


class SlowBags(BagInputs):
    """Bags that take a moment to load, so a unit lasts long enough for two processes to share the grid."""

    def sample(self, case_id, labels):
        s = super().sample(case_id, labels)
        load = s.load

        def slow():
            time.sleep(0.01)
            return load()

        s.load = slow
        return s


def record_training(trained_log, wait_for_another=False):
    """Wrap the unit executor: one line per unit trained (pid, unit), appended atomically.
    ``wait_for_another``: the first unit waits (up to 3 min) until another process has started one,
    so both processes train whatever their start-up times (a worker imports torch afresh)."""
    real = unit_step.fit_and_score
    first = [wait_for_another]

    def wrapper(recipe, task, train, test, cfg, **kw):
        with open(trained_log, "a") as f:
            f.write(f"{os.getpid()}\t{kw.get('desc')}\n")
        deadline = time.time() + 180
        while first[0] and time.time() < deadline:
            if any(not line.startswith(f"{os.getpid()}\t") for line in open(trained_log)):
                break
            time.sleep(0.2)
        first[0] = False
        return real(recipe, task, train, test, cfg, **kw)

    unit_step.fit_and_score = wrapper


def main() -> None:
    kw = json.loads(sys.argv[1])
    inputs_mod.FEATURE_INPUTS["features"] = SlowBags
    record_training(kw.pop("trained_log"))
    from bench.engine.jobs import worker_of

    methods = [get_method(m) for m in kw.pop("methods")]
    if kw.get("tracker") is not None:  # the parent's tracker settings, as RunOptions carries them
        from bench.engine.tracking import TrackerSettings

        kw["tracker"] = TrackerSettings(**kw["tracker"])
    runner.run(methods, kw.pop("dataset"), worker_of=worker_of(), progress=False, **kw)


if __name__ == "__main__":
    main()
