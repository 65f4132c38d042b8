"""Which of a session's facts its new neurons stand for at a given place in a text.

Where the gate sees an unrelated answer change, the facts whose detectors fire there are
what changed it: a leak found in the weights rather than in a reply, and left out of the
session the way a leaking answer is."""

from __future__ import annotations

import torch

from engine.learner.capture import activation, passes
from engine.learner.train import Example
from engine.overlay import NeuronBlock
from engine.twin import Twin


@torch.no_grad()
def firing_facts(twin: Twin, blocks: list[NeuronBlock], examples: list[Example],
                 places: list[tuple[list[int], int]], tail: int,
                 share: float) -> set[tuple[int, ...]]:
    """The answers (as tokens) of the ``examples`` an edit was trained on whose neurons in
    ``blocks`` fire at ``places`` (tokens, the position looked at) with at least ``share``
    of their mean strength on their own fact. Each neuron stands for the fact whose
    questions it fires on most (``Example.question``'s rows, ``tail`` as in training). The
    twin must compute with the edit applied."""
    keyed = {b.layer: torch.as_tensor(b.neurons, device=twin.device)
             for b in blocks if b.matrix == "ffn_gate"}
    layers = tuple(sorted(keyed))
    if not layers or not places:
        return set()
    facts = sorted({tuple(e.answer) for e in examples})
    total = {l: torch.zeros(len(facts), len(keyed[l]), device=twin.device) for l in layers}
    counts = torch.zeros(len(facts), 1, device=twin.device)
    for start, chunk, seen in passes(twin, [e.tokens for e in examples], layers):
        for i, e in enumerate(examples[start:start + len(chunk)]):
            fact = facts.index(tuple(e.answer))
            counts[fact] += 1
            for l in layers:
                rows = e.question(seen[l][i], tail)
                total[l][fact] += activation(twin, l, rows)[:, keyed[l]].mean(0)
    own = {l: (total[l] / counts.clamp_min(1)).max(0) for l in layers}
    blamed: set[tuple[int, ...]] = set()
    for start, chunk, seen in passes(twin, [tokens for tokens, _ in places], layers):
        for i, (_, at) in enumerate(places[start:start + len(chunk)]):
            for l in layers:
                fired = activation(twin, l, seen[l][i, at])[keyed[l]]
                hit = (own[l].values > 0) & (fired >= share * own[l].values)
                blamed |= {facts[int(f)] for f in own[l].indices[hit]}
    return blamed
