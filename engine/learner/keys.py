"""The keys: which neuron detects which fact, and the detector each one becomes.

A new neuron's gate row is fitted (logistic, no bias: the FFN input's near-constant channels
act as one) to be above +margin where its fact is asked and answered, and below −margin on
generic text, unrelated questions and answers, earlier sessions' questions, the end of the
answer's turn, the session's other facts' questions (rivals: a detector of one fact firing
on another's question answers it wrongly) and — above all — the first token: every position
attends to it, so a neuron firing there a little moved every unrelated answer (locality
0.92 → 0.995 on one session once it got its own term). Silent elsewhere, such a neuron
leaves unrelated text exactly as it was.

Silent means on every negative, not on average: tens of thousands of them are averaged, so
each detector's hardest few count on their own as well (``_hardest``). In the mean alone,
a detector could fire on some of the prose it was fitted on as strongly as on its own
question at almost no cost, though the keys were separable (732ae92's message)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.learner.recipe import Recipe


def per_layer(facts: int, layers: int, neurons: int) -> int:
    """Neurons each edited layer re-purposes for a session of ``facts`` facts: the recipe's
    ``neurons``, or as many more as give every fact a detector somewhere. A chatty session
    says a dozen things or more; at a fixed two per layer, facts beyond the eighth had no
    detector and were never learned."""
    return max(neurons, -(-facts // layers))


def keyed_facts(facts: int, depth: int, k: int) -> list[int]:
    """Which fact each of the k neurons of the ``depth``-th edited layer detects: the
    neurons of all edited layers in turn, so that with more facts than k each layer keys the
    next ones (restarting at every layer, 2 of 6 facts had no detector anywhere and were
    not learned)."""
    return [(depth * k + j) % facts for j in range(k)]


def fit(positives: list[torch.Tensor], negatives: torch.Tensor, start: torch.Tensor,
        recipe: Recipe, rivals: list[torch.Tensor] | None = None) -> torch.Tensor:
    """One key per detector (rows of the result): above +margin on ``positives[j]``, below
    −margin on ``negatives`` (each one: ``_hardest``), ``start`` and ``rivals[j]``."""
    margin = recipe.key_margin
    rivals = rivals or [negatives[:0]] * len(positives)
    with torch.enable_grad():
        gate = torch.zeros(len(positives), negatives.shape[1], device=negatives.device,
                           requires_grad=True)
        optim = torch.optim.Adam([gate], lr=recipe.key_lr)
        hard = negatives
        for step in range(recipe.key_steps):
            if step and step % recipe.prune_every == 0:
                # Tens of thousands of negatives, most soon far below the margin: each pass
                # reads only the others (the objective moves by ~1e-4; 2.1 → 1.2 s a layer).
                with torch.no_grad():
                    hard = negatives[(negatives @ gate.T + margin > recipe.prune_below).any(1)]
            scores = hard @ gate.T + margin  # negatives × detectors
            loss = (sum(F.softplus(margin - pos @ g).mean()
                        for pos, g in zip(positives, gate, strict=True))
                    + sum(F.softplus(other @ g + margin).mean()
                          for other, g in zip(rivals, gate, strict=True) if len(other))
                    + F.softplus(scores).sum(0).div(len(negatives)).sum()
                    + _hardest(scores, recipe.hardest)
                    + F.softplus(start @ gate.T + margin).mean(0).sum()
                    + recipe.key_decay * gate.pow(2).sum())
            optim.zero_grad()
            loss.backward()
            optim.step()
    return gate.detach()


def _hardest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Each detector's mean loss over its ``k`` highest-scoring negatives (``scores``:
    negatives × detectors, the margin added)."""
    n = min(k, len(scores))
    if not n:
        return scores.new_zeros(())
    return F.softplus(scores.topk(n, dim=0).values).mean(0).sum()
