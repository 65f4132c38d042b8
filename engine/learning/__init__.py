"""Learning from the user's sessions into the overlay: ``service`` runs it (one profile's
jobs), ``gate`` judges a new version, ``anchors`` and ``texts`` hold what a memory must leave
alone, ``ledger`` what was decided about each session, ``corrections`` how a new statement
overrides an old one, ``results`` what a run reports, ``progress`` how far a run is."""

from engine.learning.progress import Progress, Step, quiet
from engine.learning.results import CellsLearned, LearnResult, Probe, VersionDiff
from engine.learning.service import CELLS_EVERY, Learning

__all__ = ["CELLS_EVERY", "CellsLearned", "LearnResult", "Learning", "Probe", "Progress", "Step",
           "VersionDiff", "quiet"]
