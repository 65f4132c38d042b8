"""Which of a session's facts its new neurons stand for, which of them changed an unrelated
answer, and the edit without some of them.

Where the gate sees an unrelated answer change, the facts whose detectors fire there are
what changed it: a leak found in the weights rather than in a reply. Where none fires there
(a change carried from earlier positions, or made by many neurons at a fraction of their
strength each), the facts whose neurons, taken out, most give the answer back are the
suspects (``undoing``); an earlier session's neurons are ranked so one at a time
(``undoing_neurons``). Each new neuron is the detector of one fact
(``keys.keyed_facts``), so that fact's neurons can be taken out of the edit and the
session's other facts stay exactly as learned."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from engine.learner.capture import activation, passes
from engine.learner.keys import keyed_facts
from engine.learner.train import Example
from engine.overlay import NeuronBlock, SparseOverlay, blocks_without
from engine.twin import Twin

Fact = tuple[int, ...]  # a fact, as learn() keys it: its answer's tokens


def owners(blocks: list[NeuronBlock], examples: list[Example]) -> dict[int, list[Fact]]:
    """Per edited layer, the fact each of ``blocks``' neurons there detects (as ``learn``
    keyed them from these ``examples``)."""
    facts = sorted({tuple(e.answer) for e in examples})
    layers = sorted({b.layer for b in blocks})
    sizes = {b.layer: b.neurons.size for b in blocks}
    return {l: [facts[f] for f in keyed_facts(len(facts), depth, sizes[l])]
            for depth, l in enumerate(layers)}


@torch.no_grad()
def firing_facts(twin: Twin, blocks: list[NeuronBlock], examples: list[Example],
                 places: list[tuple[list[int], int]], tail: int, share: float) -> set[Fact]:
    """The facts of the ``examples`` an edit was trained on whose neurons in ``blocks`` fire
    at ``places`` (tokens, the position looked at) with at least ``share`` of their mean
    strength on their own fact's questions (``Example.question``'s rows, ``tail`` as in
    training). The twin must compute with the edit applied."""
    owner = owners(blocks, examples)
    keyed = {b.layer: torch.as_tensor(b.neurons, device=twin.device)
             for b in blocks if b.matrix == "ffn_gate"}
    layers = tuple(sorted(keyed))
    if not layers or not places:
        return set()
    total = {l: torch.zeros(len(keyed[l]), device=twin.device) for l in layers}
    count = {l: torch.zeros(len(keyed[l]), device=twin.device) for l in layers}
    for start, chunk, seen in passes(twin, [e.tokens for e in examples], layers):
        for i, e in enumerate(examples[start:start + len(chunk)]):
            for l in layers:
                mine = torch.tensor([fact == tuple(e.answer) for fact in owner[l]],
                                    dtype=torch.float32, device=twin.device)
                rows = activation(twin, l, e.question(seen[l][i], tail))[:, keyed[l]]
                total[l] += mine * rows.mean(0)
                count[l] += mine
    strength = {l: total[l] / count[l].clamp_min(1) for l in layers}
    blamed: set[Fact] = set()
    for start, chunk, seen in passes(twin, [tokens for tokens, _ in places], layers):
        for i, (_, at) in enumerate(places[start:start + len(chunk)]):
            for l in layers:
                fired = activation(twin, l, seen[l][i, at])[keyed[l]]
                hit = (strength[l] > 0) & (fired >= share * strength[l])
                blamed |= {owner[l][j] for j in np.flatnonzero(hit.cpu().numpy())}
    return blamed


@torch.no_grad()
def undoing(twin: Twin, blocks: list[NeuronBlock], examples: list[Example],
            places: Sequence[tuple[list[int], int]],
            leaked: Sequence[tuple[list[int], int]] = ()) -> list[Fact]:
    """The facts of the ``examples`` in the order their neurons in ``blocks``, taken out one
    fact at a time, most raise the next token of each of ``places`` (tokens, the position
    that predicts it) over the best other one, and most lower that of each of ``leaked``,
    at the place where it is worst: the likeliest makers of a change first. The twin's
    estimate (llama.cpp's rounding can tip an answer the twin keeps by a logit or two): what
    is blamed is checked in llama.cpp. The twin must compute with the edit applied."""
    if not places and not leaked:
        return []
    facts = sorted({tuple(e.answer) for e in examples})
    raised = {fact: _lead_without(twin, without(blocks, examples, set(facts) - {fact}),
                                  places, leaked) for fact in facts}
    return sorted(facts, key=lambda f: -raised[f])


@torch.no_grad()
def undoing_neurons(twin: Twin, blocks: list[NeuronBlock],
                    leaked: Sequence[tuple[list[int], int]]) -> list[tuple[int, int]]:
    """The neurons of ``blocks`` (an earlier session's edit, which keeps no map from neuron
    to fact once facts were taken out of it), as (layer, index), in the order that taking
    each out most lowers the next token of each of ``leaked``: as ``undoing``, one neuron at
    a time. A detector firing at a fifth of its strength tips a reply the base model has
    not decided ("My niece is" → the daughter's "9"), so what fires is not the test; what
    taking it out does is. The twin must compute with the edit applied."""
    if not leaked:
        return []
    everything: dict[int, set[int]] = {}
    for b in blocks:
        everything.setdefault(b.layer, set()).update(b.neurons.tolist())
    neurons = sorted((layer, n) for layer, found in everything.items() for n in found)
    # each neuron's blocks alone: all the others are what is left out
    raised = {(layer, n): _lead_without(
        twin, blocks_without(blocks, {**everything, layer: everything[layer] - {n}}),
        (), leaked) for layer, n in neurons}
    return sorted(neurons, key=lambda n: -raised[n])


def _lead_without(twin: Twin, out: list[NeuronBlock], places: Sequence[tuple[list[int], int]],
                  leaked: Sequence[tuple[list[int], int]]) -> float:
    """Without the neurons of ``out`` (they are added negated to the edit the twin computes
    with), the next token's lead over the best other one (at a leak: the other one's over
    it), at the place it is lowest."""
    d_model, d_ff = twin.config.hidden_size, int(twin.config.intermediate_size)
    removed = [replace(b, delta=-b.delta) for b in out]
    looked_at = [*places, *leaked]
    with twin.overlaid(SparseOverlay(removed, "", d_model=d_model, d_ff=d_ff)):
        logits = twin.full_logits([tokens for tokens, _ in looked_at])
    leads = []
    for row, (tokens, at) in zip(logits, looked_at, strict=True):
        others = row[at].clone()
        others[tokens[at + 1]] = float("-inf")
        leads.append(row[at, tokens[at + 1]].item() - others.max().item())
    return min(leads[:len(places)] + [-lead for lead in leads[len(places):]])


def without(blocks: list[NeuronBlock], examples: list[Example],
            facts: set[Fact]) -> list[NeuronBlock]:
    """``blocks`` without the neurons that detect ``facts``: the rest of the edit unchanged."""
    owner = owners(blocks, examples)
    return blocks_without(blocks, {b.layer: {n for n, fact in zip(b.neurons.tolist(),
                                                                   owner[b.layer], strict=True)
                                             if fact in facts} for b in blocks})
