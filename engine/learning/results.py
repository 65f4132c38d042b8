"""What a learning run and a version diff report."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.derive import QA
from engine.learning.gate import Locality
from store.records import OverlayVersion


@dataclass(frozen=True)
class CellsLearned:
    """A version that learned the cells' read: from how many exchanges, in how long."""

    version: OverlayVersion
    own_cases: int  # exchanges of the profile's own long sessions
    seconds: float

    @classmethod
    def of(cls, version: OverlayVersion | None) -> CellsLearned | None:
        if version is None or version.metrics.get("event") != "cells":
            return None
        record = version.metrics["cells"]
        return cls(version, int(record["own_cases"]), float(record["seconds"]))


@dataclass
class LearnResult:
    """One session's run. ``version`` is None when nothing was found worth learning."""

    session_id: int
    version: OverlayVersion | None
    facts: list[QA]
    corrections: list[QA]
    locality: Locality | None
    threshold: float
    seconds: float  # deriving, training and gating
    candidates: int = 0  # pairs derived from what the user said, before the check
    checked: int = 0  # of those, the ones that passed it (``facts`` and ``set_aside``)
    set_aside: list[QA] = field(default_factory=list)  # left out: leaked, looped or changed
    # an unrelated answer
    written: int = 0  # pairs the model wrote itself (a model with a chat template)
    written_checked: int = 0  # of those, the ones that passed the check (in ``checked``)
    # the answers of ``facts`` not given back when asked their own questions (in training's
    # twin, or by the served weights in the gate): kept, never counted as learned
    unrecalled: list[str] = field(default_factory=list)
    # earlier sessions' leaks this run stopped by taking some of their neurons out
    # (``learning.trims``): (session, question, answer, whether the session's own question
    # still gets that answer)
    trimmed: list[tuple[int, str, str, bool]] = field(default_factory=list)

    def recalled(self, qa: QA) -> bool:
        return qa.answer not in self.unrecalled

    def counted(self) -> tuple[int, int]:
        """How many facts were learned and are recalled, and how many are not recalled yet:
        a fact is its answer, however many questions ask it ("9 facts, 19 not recalled yet"
        counted questions)."""
        answers = {qa.answer for qa in self.facts}
        missed = len(answers & set(self.unrecalled))
        return len(answers) - missed, missed

    @property
    def accepted(self) -> bool:
        return self.version is not None and self.version.status != "rejected"

    def summary(self) -> str:
        if self.version is None:
            return f"session {self.session_id}: nothing to learn"
        if not self.accepted:
            return (f"session {self.session_id} not learned: {self.version.reason} "
                    f"(v{self.version.id} rejected)")
        n, missed = self.counted()
        assert self.locality is not None  # every version learned was gated
        return (f"memory updated: v{self.version.id} learned session {self.session_id} "
                f"({n} fact{'s' * (n != 1)}"
                f"{f', {missed} not recalled yet' if missed else ''}, "
                f"locality {self.locality.locality:.3f}, "
                f"{self.locality.decided:.3f} on decided answers)")


@dataclass
class Probe:
    session_id: int
    question: str
    expected: str  # the answer derived from what the user said
    before: str  # the model's answer with the parent version (or the base model)
    after: str  # … and with this version


@dataclass
class VersionDiff:
    version: OverlayVersion
    parent: OverlayVersion | None
    added: list[int]  # sessions this version learned (or relearned)
    removed: list[int]  # sessions it dropped (forget, reset)
    layers: dict[int, tuple[float, float]]  # layer → change magnitude in parent, in version
    params: tuple[int, int]  # parameters touched by parent, by version
    probes: list[Probe]
