"""Question/answer pairs the served model writes itself about what the user said.

An instruction-tuned model asked for the questions a friend could ask about a message
(``assets/grammar/written-pairs.txt``) phrases them as no grammar rule does (SEAL's
self-edits, Cartridges' self-study: a model learns best from what it writes about a text).
Its reply is read line by line and whatever does not read as a question and its answer is
ignored; each pair's statement is the sentence of the message that grounds its answer, as a
grammar pair's is, so both pass the same check (``check.py``) side by side.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from engine import text
from engine.derive.check import QA, grounded
from engine.derive.clauses import sentences
from engine.prompt import answered
from store import paths

# an instruction → the model's reply to it
Write = Callable[[str], str]

# a labelled line: "Q: …", "**Question 2:** …", "1. A: …"; the label's case and any bullet,
# number or markdown before it do not matter
LABELLED = re.compile(r"[\W\d_]*(q|question|a|answer)\s*\d*\s*[:：]\s*(.*)", re.IGNORECASE)
# an answer on its question's line: "Q: Where do I live? A: Leeds"
SAME_LINE = re.compile(r"\?[\s*_]*(?:a|answer)\s*[:：]\s*", re.IGNORECASE)
MARKUP = " \t*_`\"'“”‘’"


def instruction(said: str) -> str:
    """What the model is asked about one message."""
    return paths.asset("grammar", "written-pairs.txt").read_text(encoding="utf-8").replace(
        "{said}", said.strip())


def parse(reply: str) -> list[tuple[str, str]]:
    """The (question, answer) pairs a reply writes: a question line ending in "?" followed by
    its answer line (or its answer on the same line); a reasoning model's thinking is not
    read, nor anything of a reply cut off inside it. Anything else is skipped, never an
    error: the reply is a small model's text."""
    pairs: list[tuple[str, str]] = []
    question = ""
    for line in answered(reply).splitlines():
        found = LABELLED.fullmatch(line.strip())
        if not found:
            continue
        label, rest = found.group(1)[0].lower(), found.group(2)
        if label == "q":
            parts = SAME_LINE.split(rest, maxsplit=1)
            asked = _clean(parts[0]) + ("?" if len(parts) == 2 else "")
            words = asked.rstrip("?").strip(MARKUP)
            question = f"{words}?" if asked.endswith("?") and words else ""
            if question and len(parts) == 2:
                _add(pairs, question, parts[1])
                question = ""
        elif question:
            _add(pairs, question, rest)
            question = ""
    return pairs


def _add(pairs: list[tuple[str, str]], question: str, said: str) -> None:
    reply = _clean(said).rstrip(".!").strip(MARKUP)
    if reply:
        pairs.append((question, reply))


def _clean(piece: str) -> str:
    return " ".join(piece.split()).strip(MARKUP)


def written(turns: list[str], write: Write) -> list[QA]:
    """Every pair the model writes about each of the user's turns (asked one turn at a
    time), with the sentence of that turn that grounds its answer as its statement, or none
    (``""``) where no sentence does: such a pair fails the check like any other. A question
    in the second person ("What is your cat called?") is the model asking the user, not the
    user asking it later: it is not kept."""
    out = []
    for turn in turns:
        said = sentences(turn)
        for question, reply in parse(write(instruction(turn))):
            if _to_the_user(question):
                continue
            out.append(next((qa for qa in (QA(question, reply, s) for s in said) if grounded(qa)),
                            QA(question, reply, "")))
    return out


def _to_the_user(question: str) -> bool:
    return any(w.lower() in text.grammar()["second_person"] for w in text.words(question))
