"""The learner: turns Q/A pairs about what the user said into new FFN neurons.

For each session, k quiet neurons in each of a few mid layers are re-purposed as memory
cells: ``keys`` makes each the detector of one fact's questions, ``train`` teaches its value
what to write, under a locality term read from ``anchors``; ``edit`` holds the deltas and
exports them as whole neuron vectors (an exact LoRA); ``firing`` finds which fact's neurons
fire where an unrelated answer changed (or, taken out, undo it), and takes them out;
``capture`` is the one hook helper. Every number is in ``recipe``.
"""

from engine.learner.anchors import Anchors, anchors_for
from engine.learner.edit import NeuronEdit
from engine.learner.firing import firing_facts, owners, undoing, undoing_neurons, without
from engine.learner.keys import keyed_facts, per_layer
from engine.learner.recipe import Recipe
from engine.learner.train import (
    Example,
    Progress,
    learn,
    recalled,
    stop_rows,
    worst_fact,
)

__all__ = ["Anchors", "Example", "NeuronEdit", "Progress", "Recipe", "anchors_for",
           "firing_facts", "keyed_facts", "learn", "owners", "per_layer", "recalled",
           "stop_rows", "undoing", "undoing_neurons", "without", "worst_fact"]
