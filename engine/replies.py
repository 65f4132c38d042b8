"""How a reply reads to the user: does it contain the answer, does it loop, does it repeat
something the user taught in answer to a question nobody taught."""

from __future__ import annotations

import re
from collections.abc import Sequence

from engine import text

PHRASE_WORDS = 12  # the longest phrase (words and punctuation) whose repetition is a loop
LOOP_REPEATS = 3  # a word or phrase this many times in a row is a loop


def hit(reply: str, expected: str) -> bool:
    """The reply contains the expected text (case-insensitive), as the eval sets score."""
    return expected.lower() in reply.lower()


def mentions(reply: str, answer: str) -> bool:
    """The reply contains ``answer`` as whole words: "9" is in "she is 9", not in "1900"."""
    return _mention(reply, answer) is not None


def mention_span(reply: str, answer: str) -> tuple[int, int]:
    """Where ``reply`` first mentions ``answer`` (see ``mentions``, which must hold)."""
    found = _mention(reply, answer)
    assert found is not None, f"{reply!r} does not mention {answer!r}"
    return found.span()


def _mention(reply: str, answer: str) -> re.Match[str] | None:
    """Markup tags a model writes ("<em>", "</strong>") are blanked first, keeping every
    position: they are not words, and a taught "em" or "b" is not said by them."""
    words_only = re.sub(r"</?[a-z][^<>]*>", lambda tag: " " * len(tag[0]), reply.lower())
    return re.search(rf"(?<!\w){re.escape(answer.lower())}(?!\w)", words_only)


def loops(reply: str) -> bool:
    """A word or phrase repeated LOOP_REPEATS times in a row ("Mos Mos Mos", "I have a lot of
    weeds. I have a lot of weeds. …"), or a token that is one short piece over and over
    ("2020202020…"). A run of punctuation is one token: an ellipsis ("...") is not a loop."""
    tokens = re.findall(r"\w+|[^\w\s]+", reply.lower())
    for size in range(1, PHRASE_WORDS + 1):
        for start in range(len(tokens) - size * LOOP_REPEATS + 1):
            phrase = tokens[start:start + size]
            if all(tokens[start + k * size: start + (k + 1) * size] == phrase
                   for k in range(1, LOOP_REPEATS)):
                return True
    return any(len(t) >= 12 and re.fullmatch(r"(.{1,4}?)\1{3,}", t) for t in tokens)


def degenerate(reply: str, ran_to_limit: bool) -> bool:
    """What a user reads as broken: a loop, or a reply that only stopped at the token limit."""
    return ran_to_limit or loops(reply)


def untaught(questions: list[str], said: list[str], asked: Sequence[str] = ()) -> list[str]:
    """The personal questions about nothing the user said: none of their content words
    (lemmas) occurs in what was said ("What is my brother called?" stays only if no brother,
    and no name, was ever mentioned), and none asks what one of the ``asked`` questions
    (those a fact is taught with) asks: the same words ("Who am I?", which has no content
    word to compare), or its content words and only modifiers besides ("What's my full
    name?" asks what "What is my name?" does; "What's my dad's name?" does not). A question
    taught both ways teaches neither."""
    heard = set().union(*(text.content_lemmas(s) for s in said)) if said else set()
    taught = [lemmas for lemmas in map(text.content_lemmas, asked) if lemmas]
    same = {text.normalise(q) for q in asked}
    return [q for q, about in zip(questions, map(text.content_lemmas, questions), strict=True)
            if not about & heard and text.normalise(q) not in same
            and not any(lemmas <= about and all(map(text.can_modify, about - lemmas))
                        for lemmas in taught)]
