"""Earlier sessions' detectors that a new edit tipped into leaking.

A detector can sit just below tipping a question it was never taught ("How old is my
niece?" beside the daughter's "How old is my daughter? → 9": the base model has no age in
mind there, so a fifth of the detector's strength decides it). Any later edit can tip it over,
and the gate then sees the earlier answer leak with none of the new session's neurons behind
it. Refusing the new session cannot help (the next one tips it again); the fewest of the
earlier session's neurons whose absence stops the leak in llama.cpp are taken out of it
instead, and the trim is recorded with the version so ``memory show`` says what it cost."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from engine.derive import QA
from engine.overlay import NeuronBlock, SparseOverlay

if TYPE_CHECKING:  # torch is imported only when something is learned
    from engine.twin import Twin

Leak = tuple[str, str, str]  # the gate's (question, reply, the taught answer it says)


@dataclass(frozen=True)
class Trim:
    """Neurons to take out (per layer) and the leaks they stop, as (session, question,
    answer)."""

    neurons: dict[int, set[int]]
    leaks: list[tuple[int, str, str]]


def trim(twin: Twin, base: SparseOverlay, blocks: list[NeuronBlock],
         leaks: list[tuple[Leak, tuple[list[int], int]]], earlier: list[tuple[int, QA]],
         stops: Callable[[SparseOverlay], bool], most: int) -> Trim | None:
    """The fewest (at most ``most``) of the neurons of the earlier sessions in ``base`` that
    taught the ``leaks``' answers, likeliest makers first (``learner.undoing_neurons`` at
    each leak's ``Gate.leak_place``), without which the memory with the new ``blocks``
    ``stops`` leaking; None where none do. The twin must compute with the new edit applied."""
    from engine.learner import undoing_neurons

    answers = {answer.lower() for (_, _, answer), _ in leaks}
    sessions = {sid for sid, qa in earlier if qa.answer.lower() in answers}
    theirs = [b for b in base.blocks if b.session_id in sessions]
    owner = {(b.layer, int(n)): sid for sid in sessions for b in theirs if b.session_id == sid
             for n in b.neurons}
    makers = undoing_neurons(twin, theirs, [place for _, place in leaks])
    for n in range(1, min(most, len(makers)) + 1):
        neurons: dict[int, set[int]] = {}
        for layer, neuron in makers[:n]:
            neurons.setdefault(layer, set()).add(neuron)
        trimmed = base.without_neurons(neurons)
        if stops(trimmed.merge(replace(trimmed, blocks=blocks))):
            cut = {owner[m] for m in makers[:n]}
            return Trim(neurons, [(sid, question, answer) for sid in sorted(cut)
                                  for (question, _, answer), _ in leaks
                                  if any(s == sid and qa.answer.lower() == answer.lower()
                                         for s, qa in earlier)])
    return None


def trimmed_record(trims: list[tuple[int, str, str]]) -> dict[str, list[list[str]]]:
    """Per earlier session (its id as a JSON key), the questions and answers of the leaks
    its trimmed neurons gave: kept in the version's metrics."""
    out: dict[str, list[list[str]]] = {}
    for sid, question, answer in trims:
        out.setdefault(str(sid), []).append([question, answer])
    return out
