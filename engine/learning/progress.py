"""How far a learning job is: the whole job's fraction for a single bar, and the phase it is
in with that phase's own fraction and an estimate, so a UI can give each phase a bar of its own
("dequantising the model" and "building the anchors" take minutes the first time on a machine;
training takes most of every other run).

A step is a ``str`` (what to show on one line) that also carries its phase, so every progress
callback keeps the plain ``(fraction, message)`` form and code that only prints still can."""

from __future__ import annotations

import time
from collections.abc import Callable

# The phases of learning a session, in order; cells learning has one of its own.
PHASES = ("loading the training model", "dequantising the model", "building the anchors",
          "deriving", "training", "gate", "learning the cells' read")
Progress = Callable[[float, str], None]


class Step(str):
    """A progress message in a named phase: ``done`` of that phase (0..1), ``left_s`` an
    estimate of the seconds it still needs (None: no estimate yet)."""

    phase: str
    done: float
    left_s: float | None

    def __new__(cls, message: str, phase: str, done: float,
                left_s: float | None = None) -> Step:
        if phase not in PHASES:
            raise ValueError(f"unknown learning phase {phase!r}")
        step = super().__new__(cls, message)
        step.phase, step.done, step.left_s = phase, min(max(done, 0.0), 1.0), left_s
        return step


def quiet(fraction: float, message: str) -> None:
    """A progress callback for callers that do not show progress."""


class Phase:
    """Reports one phase: its own 0..1 mapped onto ``[low, high]`` of the job's bar, with an
    estimate of what is left from the pace so far."""

    def __init__(self, progress: Progress, phase: str, low: float, high: float):
        self.progress, self.phase, self.low, self.high = progress, phase, low, high
        self.started = time.monotonic()

    def __call__(self, done: float, message: str = "") -> None:
        elapsed = time.monotonic() - self.started
        left = elapsed * (1 - done) / done if 0.02 < done < 1 else None
        self.progress(self.low + (self.high - self.low) * done,
                      Step(message or self.phase, self.phase, done, left))


def scaled(progress: Progress, low: float, high: float, prefix: str = "") -> Progress:
    """``progress`` for a part of the job: its 0..1 onto ``[low, high]``, its messages
    prefixed (a step keeps its phase)."""

    def report(fraction: float, message: str) -> None:
        text = f"{prefix}{message}"
        if isinstance(message, Step):
            text = Step(text, message.phase, message.done, message.left_s)
        progress(low + (high - low) * fraction, text)

    return report
