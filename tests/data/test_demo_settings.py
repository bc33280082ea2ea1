"""The two shipped demo settings: `demo` (the 15-minute first run) and `demo-long` (end-to-end rows
trained long enough for the long-range signal). Cheap: specs and labels, no pixels."""

from collections import Counter

from bench.data.datasets import load_spec
from bench.data.demo import demo_specs


def test_demo_and_demo_long_generate_different_cohorts_in_different_folders() -> None:
    demo, long = load_spec("demo"), load_spec("demo-long")
    # different roots: running one never regenerates (or invalidates the splits of) the other
    assert demo.root != long.root and demo.generator == long.generator == "demo"
    assert demo.generator_args["n_cases"] == 28 and long.generator_args["n_cases"] == 48
    assert demo.tasks == ["staging", "survival"] and long.tasks == ["survival"]
    assert demo.allow_random_weights and long.allow_random_weights
    assert demo.train["end-to-end"]["epochs"] == 1 and long.train["end-to-end"]["epochs"] == 16


def test_the_demo_has_every_stage_seven_times_and_events_to_score() -> None:
    cases = demo_specs(seed=0, n_cases=load_spec("demo").generator_args["n_cases"])
    assert Counter(c.stage for c in cases) == {0: 7, 1: 7, 2: 7, 3: 7}
    assert sum(c.event for c in cases) == round(0.45 * 28) == 13
    assert sum(len(c.slide_ids) for c in cases) == 28 + round(0.2 * 28) == 34
