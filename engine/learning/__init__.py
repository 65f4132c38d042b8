"""Learning from the user's sessions into the overlay: ``service`` runs it (one profile's
jobs), ``gate`` judges a new version, ``anchors`` and ``texts`` hold what a memory must leave
alone, ``ledger`` what was decided about each session, ``corrections`` how a new statement
overrides an old one, ``results`` what a run reports."""

from engine.learning.results import LearnResult, Probe, VersionDiff
from engine.learning.service import CELLS_EVERY, Learning, Progress, quiet

__all__ = ["CELLS_EVERY", "LearnResult", "Learning", "Probe", "Progress", "VersionDiff", "quiet"]
