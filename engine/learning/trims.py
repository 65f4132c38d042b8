"""Earlier sessions' detectors that a new edit tipped into leaking.

A detector can sit just below tipping a question it was never taught ("Who is my niece?
My niece is" beside the daughter's "How old is my daughter? → 9": the base model has no age
in mind there, so a fifth of the detector's strength decides it). Any later edit can tip it
over, and the gate then sees the earlier answer leak with none of the new session's neurons
behind it. Refusing the new session cannot help (the next one tips it again), nor can
training it again (its neurons are not the ones that fire); the fewest of the earlier
session's neurons whose absence stops the leak in llama.cpp are taken out of it instead, at
once. Whether the earlier fact is still recalled without them is asked and recorded with the
version, so ``memory show`` says what the trim cost."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from engine.derive import QA
from engine.overlay import NeuronBlock, SparseOverlay

if TYPE_CHECKING:  # torch is imported only when something is learned
    from engine.twin import Twin

Leak = tuple[str, str, str]  # the gate's (question, reply, the taught answer it says)
Maker = tuple[int, int, tuple[int, ...]]  # (layer, neuron, the sessions that change it)


@dataclass(frozen=True)
class Trim:
    """Neurons to take out (per session, per layer) and the leaks they stop, as (session,
    question, answer, whether the session's own question still gets that answer)."""

    neurons: dict[int, dict[int, set[int]]]
    leaks: list[tuple[int, str, str, bool]]

    def applied(self, overlay: SparseOverlay) -> SparseOverlay:
        for sid, neurons in self.neurons.items():
            overlay = overlay.without_neurons(sid, neurons)
        return overlay


def makers(twin: Twin, base: SparseOverlay, leaks: list[tuple[Leak, tuple[list[int], int]]],
           earlier: list[tuple[int, QA]]) -> list[Maker]:
    """The neurons of the earlier sessions in ``base`` that taught the ``leaks``' answers,
    each with the sessions whose blocks change it, likeliest makers of the leaks first
    (``learner.undoing_neurons`` at each leak's ``Gate.leak_place``). The twin must compute
    with the new edit applied."""
    from engine.learner import undoing_neurons

    answers = {answer.lower() for (_, _, answer), _ in leaks}
    sessions = {sid for sid, qa in earlier if qa.answer.lower() in answers}
    theirs = [b for b in base.blocks if b.session_id in sessions]
    owners: dict[tuple[int, int], set[int]] = {}
    for b in theirs:
        for n in b.neurons.tolist():
            owners.setdefault((b.layer, n), set()).add(b.session_id)  # type: ignore[arg-type]
    return [(layer, n, tuple(sorted(owners[layer, n])))
            for layer, n in undoing_neurons(twin, theirs, [place for _, place in leaks])]


def fewest(base: SparseOverlay, blocks: list[NeuronBlock], ranked: list[Maker],
           leaks: list[Leak], earlier: list[tuple[int, QA]],
           stops: Callable[[SparseOverlay], bool],
           says: Callable[[SparseOverlay, list[tuple[str, str]]], list[bool]],
           most: int) -> Trim | None:
    """The fewest (at most ``most``) of the ``ranked`` makers without which the memory with
    the new ``blocks`` ``stops`` leaking; None where none do. ``says`` asks whether the
    trimmed memory still gives each cut session's fact its answer, to its own question."""
    own: dict[tuple[int, str], str] = {}  # each earlier fact's first recorded question
    for sid, qa in earlier:
        own.setdefault((sid, qa.answer.lower()), qa.question)
    for n in range(1, min(most, len(ranked)) + 1):
        neurons: dict[int, dict[int, set[int]]] = {}
        for layer, neuron, sessions in ranked[:n]:
            for sid in sessions:
                neurons.setdefault(sid, {}).setdefault(layer, set()).add(neuron)
        trimmed = Trim(neurons, []).applied(base)
        candidate = trimmed.merge(replace(trimmed, blocks=blocks))
        if not stops(candidate):
            continue
        stopped = list(dict.fromkeys((sid, question, answer) for sid in sorted(neurons)
                                     for question, _, answer in leaks
                                     if (sid, answer.lower()) in own))
        kept = says(candidate, [(own[sid, answer.lower()], answer) for sid, _, answer in stopped])
        return Trim(neurons, [(*leak, still) for leak, still in zip(stopped, kept, strict=True)])
    return None


def trimmed_record(trims: list[tuple[int, str, str, bool]]) -> dict[str, list[list]]:
    """Per earlier session (its id as a JSON key), the leaks its trimmed neurons gave, as
    [question, answer, whether its own question still gets the answer]: kept in the
    version's metrics."""
    out: dict[str, list[list]] = {}
    for sid, question, answer, recalled in dict.fromkeys(trims):
        out.setdefault(str(sid), []).append([question, answer, recalled])
    return out
