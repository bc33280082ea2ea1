"""The run's ETA counts the extraction still to come and leaves out the extraction already paid."""

from bench.engine.eta import Eta


def test_eta_by_hand_separates_training_from_extraction() -> None:
    # six units over three inputs (two units each), e.g. two encoders' features and the slide images
    eta = Eta(["resnet50", "resnet50", "conch", "conch", "slides", "slides"])
    assert eta.left(elapsed=5.0, done=0, remaining=6) is None  # no rate before a unit finished
    eta.ensured("resnet50", 120.0)
    # first unit done 130 s in: 10 s of training per unit x 5 units + 2 inputs to come x 120 s
    assert eta.left(elapsed=130.0, done=1, remaining=5) == 10.0 * 5 + 120.0 * 2
    # (elapsed / done x remaining would say 650 s here)
    eta.ensured("resnet50", 99.0)  # a key is counted once
    eta.ensured("conch", 60.0)
    # 3 units in 210 s, of which 180 s extraction: 10 s per unit x 3 + 1 input x (180 / 2)
    assert eta.left(elapsed=210.0, done=3, remaining=3) == 10.0 * 3 + 90.0
    eta.ensured("slides", 0.0)  # found cached
    assert eta.left(elapsed=230.0, done=5, remaining=1) == 10.0  # (230 - 180) / 5 x 1, nothing to extract


def test_eta_under_jobs_uses_the_pools_units() -> None:
    """With two processes, ``done`` counts both processes' units over the same wall time: the rate halves."""
    eta = Eta(["a"] * 8)
    eta.ensured("a", 20.0)
    one, two = eta.left(120.0, 2, 6), eta.left(120.0, 4, 4)
    assert (one, two) == (50.0 * 6, 25.0 * 4)


def test_eta_text_as_the_progress_line_prints_it() -> None:
    from bench.engine.eta import clock

    eta = Eta(["a", "a"])
    assert eta.text(3.0, 0, 2) == "?"
    assert eta.text(249.0, 1, 1) == clock(249.0) == "4m09s"
    assert clock(3900.0) == "1h05m"
