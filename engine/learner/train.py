"""Training one session's edit: targets, neuron choice, key fit, loop (nanoGPT's order).

The signal is question/answer pairs about what the user said, asked in the app's own
dialogue format; the loss is on the answer tokens and the end of the turn only (FT-M).

Cost: the frozen prefix (layers below the first edited one) runs once, and so does the
system prompt every example starts with; each step runs only the layers above it on the
examples' own tokens, and the output head only at answer positions over a sampled
vocabulary. The frozen layers' states of each session's examples are kept
(``Twin.entering``): every later run asks them again as earlier questions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from engine.learner import keys
from engine.learner.anchors import Anchors
from engine.learner.capture import ffn_added, ffn_inputs, passes
from engine.learner.edit import NeuronEdit
from engine.learner.locality import Locality
from engine.learner.recipe import Recipe
from engine.overlay import NeuronBlock
from engine.twin import Batch, Prefix, Twin

Progress = Callable[[float, str], None]


@dataclass
class Example:
    """One training sequence: a prompt, the answer tokens the model must produce, and the
    tokens that end its turn (trained too, but there the new neurons must be silent again,
    or the answer runs on)."""

    prompt: list[int]
    answer: list[int]
    end: list[int] = field(default_factory=list)

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.answer + self.end

    def question(self, x: torch.Tensor, tail: int) -> torch.Tensor:
        """The rows of ``x`` where the question ends (its last ``tail`` + 1 prompt positions)
        and the answer is being written: where a detector of it must fire."""
        return x[len(self.prompt) - 1 - tail: len(self.prompt) + len(self.answer) - 1]

    def ending(self, x: torch.Tensor) -> torch.Tensor:
        """The rows of ``x`` (this sequence's FFN inputs) that predict the end tokens."""
        start = len(self.prompt) + len(self.answer) - 1
        return x[start: start + len(self.end)]


@dataclass
class Targets:
    """Where the answers are predicted and what must come out there."""

    rows: torch.Tensor  # example index of each answer token
    cols: torch.Tensor  # the position that predicts it
    tokens: torch.Tensor  # the token, as an index into ``vocab``
    vocab: torch.Tensor  # the output rows the loss runs over
    taught: list[tuple[int, ...]]  # which fact (its answer) each example teaches


def learn(twin: Twin, examples: list[Example], anchors: Anchors, recipe: Recipe,
          owned: dict[int, set[int]] | None = None, session_id: int | None = None,
          progress: Progress | None = None, cancel: threading.Event | None = None,
          earlier: list[Example] | None = None, contrasts: list[Example] | None = None,
          also_asked: list[Example] | None = None) -> tuple[list[NeuronBlock], dict]:
    """Train k neurons per layer for these examples; returns the blocks and training metrics
    (``unrecalled``: the facts, as answer tokens, that training did not bring out).

    ``earlier``: other sessions' questions and answers — the new neurons must stay silent
    on them too, or a later session's memory answers an earlier one's question.
    ``contrasts``: the same questions about other things (``derive.contrasts``): every
    detector is fitted silent there as on a rival fact's questions.
    ``also_asked``: other ways to ask the taught facts (``derive.asked_by_kind``; an
    example's answer says which fact): not trained, but its fact's detector fires there too."""
    progress = progress or (lambda f, m: None)
    started = time.perf_counter()
    layers = recipe.layers_for(twin.n_layer)
    first = min(layers)
    # The system prompt every example starts with runs once (the new neurons are trained
    # silent on generic text, which includes it): from here on the examples are what follows.
    prefix, examples = _after_shared(twin, examples, recipe.key_context)
    batch = twin.batch([e.tokens for e in examples], prefix)
    with torch.no_grad():
        h_frozen = pad_sequence(twin.entering([e.tokens for e in examples], first, prefix),
                                batch_first=True)
        with ffn_inputs(twin, layers) as seen:
            h = twin.run(h_frozen, batch, first)
        targets = _targets(twin, examples, h, recipe)
        held = _asked(twin, earlier or [], layers, recipe.key_context, recipe.batch)
        unlike = _asked(twin, contrasts or [], layers, recipe.key_context, recipe.batch)
        also = {fact: _asked(twin, [e for e in also_asked or [] if tuple(e.answer) == fact],
                             layers, recipe.key_context, recipe.batch)
                for fact in set(targets.taught)}
        unrelated = {l: torch.cat([anchors.answers[l], held[l]]) for l in layers}
    k = keys.per_layer(len(set(targets.taught)), len(layers), recipe.neurons)
    edits = [_keyed_edit(twin, layer, depth, k, examples, seen[layer], targets.taught, anchors,
                         unrelated[layer], unlike[layer],
                         {fact: rows[layer] for fact, rows in also.items()}, owned or {}, recipe)
             for depth, layer in enumerate(layers)]
    history, kept, stopped, recalled = _train(twin, edits, h_frozen, batch, targets, anchors,
                                        unrelated, recipe, progress, cancel)
    metrics = {"steps": len(history) - 1, "stopped": stopped, "kept_step": kept,
               "answer_loss": round(history[kept][0], 4),
               "locality_penalty": round(history[kept][1], 5),
               "train_seconds": round(time.perf_counter() - started, 2),
               "unrecalled": [list(f) for f in sorted(set(targets.taught) - recalled)]}
    return [b for e in edits for b in e.blocks(session_id)], metrics


def _targets(twin: Twin, examples: list[Example], h: torch.Tensor, recipe: Recipe) -> Targets:
    """The answer positions, and the vocabulary that competes with the answers there: the
    base model's top tokens, the answers and a fixed random sample (the full output head
    costs most of a step)."""
    rows, cols, tokens = [], [], []
    for i, e in enumerate(examples):
        for j, token in enumerate(e.answer + e.end):
            rows.append(i)
            cols.append(len(e.prompt) + j - 1)  # the position that predicts answer token j
            tokens.append(token)
    rows_t, cols_t = torch.tensor(rows), torch.tensor(cols)
    tokens_t = torch.tensor(tokens, device=twin.device)
    top = twin.logits(h[rows_t, cols_t]).topk(recipe.vocab_top, dim=-1).indices
    sample = torch.randperm(twin.config.vocab_size,
                           generator=torch.Generator().manual_seed(recipe.seed))
    vocab = torch.unique(torch.cat([tokens_t, top.flatten(),
                                    sample[: recipe.vocab_random].to(twin.device)]))
    return Targets(rows_t, cols_t, torch.searchsorted(vocab, tokens_t), vocab,
                   [tuple(e.answer) for e in examples])


def _quiet_neurons(twin: Twin, layer: int, anchors: Anchors, owned: set[int],
                   k: int) -> torch.Tensor:
    """The k neurons whose loss generic text feels least (RMS activation × output norm:
    re-purposing a neuron drops what it did), never one an earlier session owns."""
    score = -anchors.activity[layer] * twin.layers[layer].mlp.down_proj.weight.norm(dim=0)
    for n in owned:
        score[n] = float("-inf")
    return torch.topk(score, k).indices.sort().values


def _keyed_edit(twin: Twin, layer: int, depth: int, k: int, examples: list[Example],
                seen: torch.Tensor, taught: list[tuple[int, ...]], anchors: Anchors,
                unrelated: torch.Tensor, unlike: torch.Tensor,
                also: dict[tuple[int, ...], torch.Tensor], owned: dict[int, set[int]],
                recipe: Recipe) -> NeuronEdit:
    """``k`` quiet neurons of ``layer``, each keyed as the detector of one fact (its phrasings
    together, with the untrained ones in ``also``) and silent on everything else, values
    still zero."""
    edit = NeuronEdit(twin, layer, _quiet_neurons(twin, layer, anchors, owned.get(layer, set()),
                                                  k), recipe.max_norm)
    facts = sorted(set(taught))
    trained = [torch.cat([e.question(seen[i], recipe.key_context)
                          for i, e in enumerate(examples) if taught[i] == fact])
               for fact in facts]
    positives = [torch.cat([rows, also[fact]]) for fact, rows in zip(facts, trained, strict=True)]
    endings = [e.ending(seen[i]) for i, e in enumerate(examples)]
    keyed = keys.keyed_facts(len(facts), depth, k)
    rivals = ([torch.cat([positives[g] for g in range(len(facts)) if g != f] + [unlike])
               for f in keyed] if recipe.rivals else None)
    negatives = torch.cat([anchors.inputs[layer], anchors.prose[layer], unrelated, *endings])
    # the up rows are scaled on the trained questions: where the values learn what to write
    edit.key(keys.fit([positives[f] for f in keyed], negatives, anchors.start[layer], recipe,
                      rivals), [trained[f] for f in keyed])
    return edit


def _train(twin: Twin, edits: list[NeuronEdit], h_frozen: torch.Tensor, batch: Batch,
           targets: Targets, anchors: Anchors, unrelated: dict[int, torch.Tensor],
           recipe: Recipe, progress: Progress, cancel: threading.Event | None
           ) -> tuple[list[tuple[float, float]], int, str, set[tuple[int, ...]]]:
    """The loop: answer loss + locality (``Locality``: the edit's energy on generic text at
    each edited layer, from the anchors' cached FFN inputs), every delta capped. Returns the
    (answer loss, locality) of each state it weighed (the first before any update, the last
    after the last update), the index of the one kept (the lowest loss), why it stopped, and
    the facts it brought out (``recalled``)."""
    first = min(e.layer for e in edits)
    localities = [Locality(e, [(anchors.inputs[e.layer], 1.0),
                               (anchors.prose[e.layer], recipe.prose_weight),
                               (unrelated[e.layer], recipe.answer_weight),
                               (anchors.start[e.layer], recipe.answer_weight)],
                           anchors.out_energy[e.layer], recipe.prune_below) for e in edits]
    params = [p for e in edits for p in e.parameters()]
    optim = torch.optim.Adam(params, lr=recipe.lr)
    # Adam at this rate can jump from a learned state to a far worse one late in the loop
    # (answer loss 0.07 → 1.2 in the last steps before the cap, every fact of the session
    # lost): the state of the lowest loss is the one kept.
    best, best_step, best_state = float("inf"), 0, [p.detach().clone() for p in params]
    # Each step, each example's new neurons fire at a random share of their strength, as
    # weakly as match_floor: a question worded otherwise matches a key only partly, and the
    # answer must still come out.
    strength = torch.ones(len(targets.taught), 1, 1, device=twin.device)
    shuffle = torch.Generator().manual_seed(recipe.seed)
    history: list[tuple[float, float]] = []
    stopped = "step cap"
    with ffn_added(twin, {e.layer: (lambda x, e=e: e.change(x, strength)) for e in edits}):
        for step in range(recipe.steps + 1):
            if cancel is not None and cancel.is_set():
                raise InterruptedError("learning cancelled")
            strength.copy_(recipe.match_floor + (1 - recipe.match_floor) * torch.rand(
                strength.shape, generator=shuffle).to(strength))
            h = twin.run(h_frozen, batch, first)
            token_loss = F.cross_entropy(
                twin.logits(h[targets.rows, targets.cols], vocab=targets.vocab), targets.tokens,
                reduction="none")
            task = token_loss.mean()
            if step and step % recipe.prune_every == 0:
                for term in localities:
                    term.prune()
            locality = sum(term() for term in localities)
            assert isinstance(locality, torch.Tensor)  # a sum over edits, never empty here
            loss = task + recipe.locality_weight * locality
            history.append((task.item(), locality.item()))
            if loss.item() < best:
                best, best_step = loss.item(), step
                best_state = [p.detach().clone() for p in params]
            kept = stop_rows(token_loss.detach(), targets.rows, targets.taught, recipe.spare)
            if worst_fact(token_loss.detach(), targets.rows, targets.taught,
                          kept) < recipe.stop_loss:
                stopped = "learned"
                break
            if step == recipe.steps:  # the state after the last update is weighed, not trained
                break
            optim.zero_grad()
            loss.backward()
            optim.step()
            for e in edits:
                e.cap()
            progress((step + 1) / recipe.steps, f"step {step + 1}: answer loss {task.item():.3f}")
        strength.fill_(1.0)
        with torch.no_grad():
            for p, state in zip(params, best_state, strict=True):
                p.copy_(state)
            h = twin.run(h_frozen, batch, first)
            said = twin.logits(h[targets.rows, targets.cols], vocab=targets.vocab).argmax(-1)
    return history, best_step, stopped, recalled(said == targets.tokens, targets.rows,
                                                 targets.taught)


def recalled(right: torch.Tensor, rows: torch.Tensor,
             facts: list[tuple[int, ...]]) -> set[tuple[int, ...]]:
    """The facts that come out, greedily and ended, for at least half their phrasings:
    ``right`` says, per trained token (``rows``: its example), whether it is the top one."""
    wrong = torch.zeros(len(facts), device=right.device).index_add_(
        0, rows.to(right.device), (~right).float())
    return {fact for fact in set(facts)
            if 2 * sum(float(wrong[i]) == 0 for i, f in enumerate(facts) if f == fact)
            >= sum(f == fact for f in facts)}


def stop_rows(token_loss: torch.Tensor, rows: torch.Tensor, facts: list[tuple],
              spare: int) -> torch.Tensor:
    """The answer tokens whose mean loss decides when training stops: all but those of each
    fact's ``spare`` worst phrasings (facts with 3 or more). One phrasing can fight the
    model's prior, and waiting for it doubled a session's steps."""
    per_example = torch.zeros(len(facts), device=token_loss.device).index_add_(
        0, rows.to(token_loss.device), token_loss)
    dropped = set()
    for fact in set(facts):
        mine = [i for i, f in enumerate(facts) if f == fact]
        if len(mine) >= 3:
            dropped.update(sorted(mine, key=lambda i: float(per_example[i]))[len(mine) - spare:])
    return torch.tensor([int(r) not in dropped for r in rows], device=token_loss.device)


def worst_fact(token_loss: torch.Tensor, rows: torch.Tensor, facts: list[tuple],
               kept: torch.Tensor) -> float:
    """The highest mean loss of any fact over its ``kept`` answer tokens: the stop waits for
    every fact to be learned (a mean over all tokens let a session stop with one fact of
    seven unlearned)."""
    names = sorted(set(facts))
    fact = torch.tensor([names.index(facts[int(r)]) for r in rows], device=token_loss.device)
    total = torch.zeros(len(names), device=token_loss.device).index_add_(
        0, fact[kept], token_loss[kept])
    count = torch.zeros(len(names), device=token_loss.device).index_add_(
        0, fact[kept], torch.ones_like(token_loss[kept]))
    return float((total / count.clamp_min(1)).max())


def _after_shared(twin: Twin, examples: list[Example],
                  tail: int) -> tuple[Prefix | None, list[Example]]:
    """The tokens all ``examples`` start with (the system prompt), run once, and what follows
    them in each (at least the question's last ``tail`` + 1 prompt tokens)."""
    shared = _shared_prefix([e.tokens for e in examples],
                            min((len(e.prompt) for e in examples), default=0) - 1 - tail)
    prefix = twin.prefix(examples[0].tokens[:shared]) if shared else None
    return prefix, [Example(e.prompt[shared:], e.answer, e.end) for e in examples]


def _shared_prefix(sequences: list[list[int]], limit: int) -> int:
    """How many leading tokens all ``sequences`` share, at most ``limit``."""
    n = 0
    while n < limit and all(len(s) > n and s[n] == sequences[0][n] for s in sequences):
        n += 1
    return n


@torch.no_grad()
def _asked(twin: Twin, examples: list[Example], layers: tuple[int, ...], tail: int,
           size: int) -> dict[int, torch.Tensor]:
    """Per layer, the FFN inputs at the question/answer rows of these examples (every
    earlier session's: hundreds of dialogues, so their shared system prompt runs once)."""
    rows = {l: [torch.zeros(0, twin.config.hidden_size, device=twin.device)] for l in layers}
    prefix, rest = _after_shared(twin, examples, tail)
    for start, chunk, seen in passes(twin, [e.tokens for e in rest], layers, size=size,
                                     prefix=prefix, keep=True):
        for l in layers:
            rows[l] += [e.question(seen[l][i], tail)
                        for i, e in enumerate(rest[start:start + len(chunk)])]
    return {l: torch.cat(r) for l, r in rows.items()}
