"""Questions like a taught one about something else: the thing it names swapped for things
the model itself places near it ("What is my cat called?" → "What is my dog called?").

Trained silent, they make a fact's detector tell what the fact is about from others of its
kind. A fixed list of untaught questions cannot: which kinds of things a user talks about is
not known in advance, and a detector of "my cat" that is not shown "my dog" fires on any pet.
"""

from __future__ import annotations

from collections.abc import Callable

from lemminflect import getInflection

from engine import text
from engine.derive.check import QA

# a word → the words the model places nearest it, nearest first
Neighbours = Callable[[str], list[str]]

NAMING = frozenset({"NOUN"})  # the words swapped: what a question asks about


def contrasts(qa: QA, neighbours: Neighbours, said: set[str]) -> list[str]:
    """``qa``'s question with each noun it shares with its statement swapped for each of its
    neighbours, except those the user talked about (lemmas in ``said``): those may be asked
    about for real."""
    out = []
    for start, stop in text.about_spans(qa.question, qa.statement, qa.answer, NAMING):
        word = qa.question[start:stop]
        for other in neighbours(word):
            if text.lemma(other, "NOUN") not in said:
                out.append(qa.question[:start] + _shaped_like(other, word) + qa.question[stop:])
    return out


def _shaped_like(other: str, word: str) -> str:
    """``other`` in ``word``'s number and capitalisation ("dog" for "Cats" → "Dogs")."""
    other = text.lemma(other, "NOUN")
    if word.lower() != text.lemma(word, "NOUN"):
        other = (getInflection(other, "NNS") or (other,))[0]
    return other.capitalize() if word[0].isupper() else other
