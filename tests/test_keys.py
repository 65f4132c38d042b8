"""The key fit: a detector fires where its fact is asked and nowhere among its negatives."""

from __future__ import annotations

import torch

from engine.learner import keys
from engine.learner.recipe import Recipe


def _rows(n: int, centre: torch.Tensor, spread: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return centre + spread * torch.randn(n, centre.numel(), generator=g)


def _question_and_look_alikes() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positives, negatives whose last 20 rows of 6,020 lie near the question and differ from
    it in one direction only, and the first token (as generic as the rest)."""
    d = 32
    generic = torch.zeros(d)
    generic[-1] = 1.0  # the near-constant channel every row has (the fit has no bias)
    question = generic.clone()
    question[:4] = 2.0
    look_alike = question.clone()
    look_alike[4] = -1.5
    negatives = torch.cat([_rows(6000, generic, 0.2, 1), _rows(20, look_alike, 0.1, 2)])
    return _rows(40, question, 0.1, 0), negatives, generic[None]


def test_a_key_is_silent_on_the_few_negatives_that_look_like_its_question():
    """A mean over all negatives hardly feels twenty rows; the hardest ones count on their
    own."""
    positives, negatives, start = _question_and_look_alikes()
    key = keys.fit([positives], negatives, start, Recipe())[0]

    assert float((negatives @ key).max()) < 0
    assert float((positives @ key).min()) > 0


def test_without_the_hardest_negatives_a_key_fires_on_look_alikes():
    """The same data with that term off: what the term is for."""
    positives, negatives, start = _question_and_look_alikes()
    key = keys.fit([positives], negatives, start, Recipe(hardest=0))[0]

    assert float((negatives[-20:] @ key).max()) > 0
