"""The run's ETA: training still to do at the rate measured so far, plus the extraction still to come.

A run's elapsed time holds two kinds of work: feature extraction (once per input: an encoder's
features, a magnification's slide images) and unit training. Dividing the whole elapsed time by
the units done, as a plain ETA does, charges every later unit a share of the extraction already
paid (on the demo, the first units after minutes of extraction predicted twice the run), and
nothing for the extraction still to come. So the two are measured apart: the training rate is
(elapsed - extraction) per finished unit, and each input not yet prepared costs the mean of
those prepared so far. Under ``--jobs`` the finished units are every process's, so the rate is
the pool's, not one process's.

With a cost predicted for every unit before training (``bench.engine.cost``), the ETA exists from
the start: the predicted seconds of the units still to do, on the run's processes. Once units have
finished, those predictions are scaled by the measured training time over what was predicted for
the finished units, so units of very different cost (an ablation's settings) are not charged the
same rate.
"""

from __future__ import annotations

from typing import Iterable, Sequence

__all__ = ["Eta", "clock"]


class Eta:
    """``keys``: the inputs key of every unit of the run (repeats allowed), in the run's order.
    ``predicted``: every unit's predicted seconds, in the same order (None: no prediction);
    ``processes``: how many processes train the units."""

    def __init__(self, keys: Iterable[str], predicted: Sequence[float] | None = None, processes: int = 1) -> None:
        self.pending = list(dict.fromkeys(keys))
        self.extract_seconds = 0.0
        self.prepared = 0
        self.predicted = list(predicted) if predicted is not None else None
        self.processes = max(1, processes)

    def ensured(self, key: str, seconds: float) -> None:
        """This process prepared ``key``'s inputs (extracted, or found them cached) in ``seconds``."""
        if key in self.pending:
            self.pending.remove(key)
            self.extract_seconds += seconds
            self.prepared += 1

    def left(self, elapsed: float, done: int, remaining: int) -> float | None:
        """Seconds left after ``done`` units finished in ``elapsed`` seconds with ``remaining`` to go;
        None before any unit has finished (no rate yet) unless every unit's cost was predicted."""
        trained = max(elapsed - self.extract_seconds, 0.0)
        if self.predicted is not None:
            ahead = sum(self.predicted[len(self.predicted) - remaining:]) if remaining > 0 else 0.0
            before = sum(self.predicted[:done])
            training = ahead / self.processes if done <= 0 or before <= 0 else ahead * trained / before
        elif done <= 0:
            return None
        else:
            training = trained / done * remaining
        per_input = self.extract_seconds / self.prepared if self.prepared else 0.0
        return training + per_input * len(self.pending)

    def text(self, elapsed: float, done: int, remaining: int) -> str:
        """``left`` as the progress line prints it: ``clock``, or "?" before the first unit."""
        left = self.left(elapsed, done, remaining)
        return "?" if left is None else clock(left)


def clock(seconds: float) -> str:
    """4m09s, 1h05m."""
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
