"""The one check every question/answer pair passes before it is trained, however it was made.

Grounded: the answer is words the user said, not given away by the question, not in a
negated clause. Consistent: asked the question with the statement it came from in context,
the model itself prefers this answer to every other answer that statement gives ("I drive a
forklift there" → "What do I drive?" → " forklift", not " there"). A pair the model would
not give even while reading the statement is not one it should learn to give without it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from engine import text


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    statement: str
    # the clause of the statement it was asked from: the answers it is checked against are
    # that clause's ("she is afraid of the foghorn" is not asked to beat "my cat is called
    # Mosel": a name the model copies from anywhere in its context); "": the statement's
    clause: str = field(default="", compare=False)


# (statement, question, candidate answers) → the indices of the answers the model prefers
Prefers = Callable[[list[tuple[str, str, list[str]]]], list[set[int]]]


def grounded(qa: QA) -> bool:
    answer = text.normalise(qa.answer)
    if len(answer) < 2 and not answer.isdigit():
        return False
    statement = text.normalise(qa.statement)
    question = text.normalise(qa.question)
    whose = "whose" in question.split()  # then the answer is said with its 's
    said = f" {answer} " in f" {statement} " or whose and f" {answer}'s " in f" {statement} "
    if not said or f" {answer} " in f" {question} ":
        return False
    if all(w in text.grammar()["subject_pronouns"] | text.grammar()["object_pronouns"]
           | text.grammar()["possessives"] for w in answer.split()):
        return False
    negated = [m.start() for m in re.finditer(r"\b(?:not|never|no longer|n't)\b", statement)]
    return not any(n < statement.find(answer) for n in negated)


def consistent(pairs: list[QA], prefers: Prefers) -> list[bool]:
    """Whether the model, reading each pair's statement, prefers the pair's answer among
    the answers derived from the same clause of it (a clause with one answer passes)."""
    options: dict[str, list[str]] = {}
    among = [options.setdefault(qa.clause or qa.statement, []) for qa in pairs]
    for qa, answers in zip(pairs, among, strict=True):
        if qa.answer not in answers:
            answers.append(qa.answer)
    asked = [(qa.statement, qa.question, answers) for qa, answers in zip(pairs, among,
                                                                       strict=True)]
    contested = [i for i, (_, _, answers) in enumerate(asked) if len(answers) > 1]
    chosen = (dict(zip(contested, prefers([asked[i] for i in contested]), strict=True))
              if contested else {})
    return [i not in chosen or answers.index(qa.answer) in chosen[i]
            for i, (qa, answers) in enumerate(zip(pairs, among, strict=True))]
