"""Questions like a taught one about something else: the thing it names swapped for things
the model itself places near it ("What is my cat called?" → "What is my dog called?"), and
the question asked of the user instead of someone or something of theirs ("Which instrument
does my daughter play?" → "Which instrument do I play?").

Trained silent, they make a fact's detector tell what the fact is about from others of its
kind. A fixed list of untaught questions cannot: which kinds of things a user talks about is
not known in advance, and a detector of "my cat" that is not shown "my dog" fires on any pet.
"""

from __future__ import annotations

from collections.abc import Callable

from lemminflect import getAllLemmas, getInflection

from engine import text
from engine.derive.check import QA
from engine.derive.questions import templates

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


def asked_of_me(question: str) -> str | None:
    """``question`` asked of the user instead of the "my …" it asks about: "Which instrument
    does my daughter play?" → "Which instrument do I play?". A fact about someone or
    something of the user's says nothing of the user: its detector is fitted silent there,
    or "What music do I listen to?" is answered with the daughter's instrument. None where
    the question asks about no "my …" after its auxiliary, or about its whole phrase ("Who
    is my sister?")."""
    agree = templates()["asked_of_me"]
    words = text.words(question)
    tags = text.tags(words)
    for i in range(len(words) - 2):
        if tags[i] != "AUX" or words[i].lower() not in agree or words[i + 1].lower() != "my":
            continue
        j = i + 2
        while j < len(words) and tags[j] in {"ADJ", "NOUN", "PROPN"} \
                and not words[j].endswith(("'s", "’s")):
            j += 1
        while j > i + 2 and (tags[j - 1] == "ADJ" or (
                "ADJ" in getAllLemmas(words[j - 1].lower()) and j < len(words)
                and tags[j] == "PREP")):
            j -= 1  # "is my cat afraid of", "allergic to": what is said of the cat
        if j == i + 2 or j == len(words) or words[j].endswith(("'s", "’s")):
            return None
        said = " ".join(words[:i] + [agree[words[i].lower()], "I"] + words[j:])
        said = said[:1].upper() + said[1:] + "?"
        # not the user's name ("What is my daughter called?" → "What am I called?"): the
        # anchors ask that, and so near the fact's own question it muted the fact
        return None if said in templates()["self_naming"] else said
    return None
