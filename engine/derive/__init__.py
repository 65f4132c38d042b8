"""From what the user said to the question/answer pairs the learner trains on.

``clauses`` reads the turns, ``questions`` asks each clause's facts back, ``written`` has an
instruction-tuned model write pairs of its own, ``check`` keeps a pair only if it is grounded
in the statement and the model reading the statement agrees. Nothing here is tuned to
particular sentences: the grammar is English's closed word classes and the templates in
``assets/grammar/``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from engine import text
from engine.derive.check import QA, Prefers, consistent, grounded
from engine.derive.clauses import Clause, clauses
from engine.derive.contrast import Neighbours, contrasts
from engine.derive.questions import KIND, UNTRAINED_KIND, Asked, pair_key, questions
from engine.derive.written import Write, written

__all__ = ["QA", "KindFits", "KindOf", "LikelyKinds", "Neighbours", "Prefers", "Write",
           "asked_by_kind", "candidates", "checked", "contrasts", "joined", "varied", "written"]


# answers → the kind of each ("Leeds" → "city"), or None where the model knows none
KindOf = Callable[[list[str]], list[str | None]]
# answers → each one's likeliest kinds, sure or not ("Leeds" → ["city", "town"])
LikelyKinds = Callable[[list[str]], list[list[str]]]
# an answer and words → whether the model takes each for a kind of it ("bassoon": "music" yes)
KindFits = Callable[[str, list[str]], list[bool]]


def candidates(turns: list[str], kind_of: KindOf | None = None) -> list[QA]:
    """Every grounded pair the grammar finds, once per question (the first statement wins,
    and one that asks it directly wins over one that says it of "us"). A question about the
    answer's kind ("Which {kind} do we live in?") is asked with the kind ``kind_of`` gives,
    and not at all without one."""
    asked = _asked(turns)
    needing = sorted({a.answer for _, a in asked if KIND in a.question})
    kinds = dict(zip(needing, kind_of(needing), strict=True)) if kind_of and needing else {}
    found: dict[str, QA] = {}
    for clause, a in asked:
        question = a.question
        if UNTRAINED_KIND in question:
            continue
        if KIND in question:
            kind = kinds.get(a.answer)
            if not kind:
                continue
            question = question.replace(KIND, kind)
        qa = QA(question, a.answer, clause.said, clause.text)
        if grounded(qa):
            found.setdefault(qa.question.lower(), qa)
    return list(found.values())


def asked_by_kind(turns: list[str], likely: LikelyKinds, taught: list[QA],
                  neighbours: Neighbours | None = None, said: set[str] | None = None,
                  fits: KindFits | None = None) -> tuple[list[QA], list[str]]:
    """More ways to ask the ``taught`` facts: each question the grammar asks with the
    answer's kind, with each of its likeliest kinds, sure or not, and opened with "What" as
    well as "Which" ("Which language do I mostly write?", "What language …"). People ask so;
    the trained kind question needs a kind the model is sure of, which it seldom is. Never
    trained: a fact's detector is fitted to fire on them too.

    Beside them, the same questions with each kind's ``neighbours`` in its place (not the
    answer's own likely kinds, nor words the user ``said``, nor words the model ``fits`` to
    the answer as a kind): asked of another kind of thing ("What medicine do I take?" beside
    "What drink do I take?"), they are fitted silent. Embedding neighbours are as often
    synonyms as other kinds: "song" → "music" for a bassoon, "town" → "city" for Trondheim."""
    answers = {qa.answer for qa in taught}
    trained = {qa.question.lower() for qa in taught}
    asked = [(clause, a) for clause, a in _asked(turns)
             if (KIND in a.question or UNTRAINED_KIND in a.question) and a.answer in answers]
    needing = sorted({a.answer for _, a in asked})
    kinds = dict(zip(needing, likely(needing), strict=True)) if needing else {}
    found: dict[str, QA] = {}
    unlike: dict[str, None] = {}
    for clause, a in asked:
        own = kinds[a.answer]
        for kind in own:
            for question in _kind_questions(a.question, kind):
                qa = QA(question, a.answer, clause.said, clause.text)
                if question.lower() not in trained and grounded(qa):
                    found.setdefault(question.lower(), qa)
            others = [other for other in (neighbours(kind) if neighbours else [])
                      if other not in own and text.lemma(other, "NOUN") not in (said or set())]
            kept = fits(a.answer, others) if fits and others else [False] * len(others)
            for other, fitting in zip(others, kept, strict=True):
                if not fitting:
                    unlike.update(dict.fromkeys(_kind_questions(a.question, other)))
    return list(found.values()), [q for q in unlike if q.lower() not in trained]


def _kind_questions(question: str, kind: str) -> tuple[str, str]:
    """A kind question with ``kind`` named, opened with "Which" and with "What"."""
    which = question.replace(KIND, kind).replace(UNTRAINED_KIND, kind)
    return which, re.sub(r"^Which\b", "What", which)


def _asked(turns: list[str]) -> list[tuple[Clause, Asked]]:
    """The grammar's questions of every clause, but none it infers from "us" that the user
    asks directly too."""
    asked = [(clause, a) for clause in clauses(turns) for a in questions(clause)]
    direct = {pair_key(a) for _, a in asked if not a.inferred}
    return [(clause, a) for clause, a in asked if not (a.inferred and pair_key(a) in direct)]


def joined(pairs: list[QA], written: list[QA]) -> list[QA]:
    """The grammar's pairs, then the model's own that are grounded and ask a question none
    before them asks: the grammar's pair of a question wins, as the first statement does."""
    asked = {qa.question.lower() for qa in pairs}
    out = list(pairs)
    for qa in written:
        if grounded(qa) and qa.question.lower() not in asked:
            asked.add(qa.question.lower())
            out.append(qa)
    return out


def checked(pairs: list[QA], prefers: Prefers) -> list[QA]:
    """The pairs that pass the consistency check."""
    return [qa for qa, ok in zip(pairs, consistent(pairs, prefers), strict=True) if ok]


def varied(pairs: list[QA], per_answer: int) -> list[QA]:
    """At most ``per_answer`` phrasings of each answer, each next one the least like those
    kept (word overlap): a fact stated with a name in it is asked back many ways, and
    near-copies cost training time and add little."""
    groups: dict[str, list[int]] = {}
    for i, qa in enumerate(pairs):
        groups.setdefault(qa.answer.lower(), []).append(i)
    words = [set(text.normalise(qa.question).split()) for qa in pairs]
    kept = set()
    for group in groups.values():
        chosen = group[:1]
        for _ in range(min(per_answer, len(group)) - 1):
            chosen.append(max((i for i in group if i not in chosen), key=lambda i: min(
                1 - len(words[i] & words[j]) / len(words[i] | words[j]) for j in chosen)))
        kept.update(chosen)
    return [qa for i, qa in enumerate(pairs) if i in kept]
