"""Corrections: a new statement that answers an earlier question otherwise retargets the
earlier fact's phrasings, so the old answer is overridden rather than kept beside the new."""

from __future__ import annotations

from engine import text
from engine.derive import QA


def same_question(a: str, b: str) -> bool:
    """Nearly the same question: almost the same content words ("Where do I live now?" and
    "Where do I live?"), not merely the same shape ("my sister's name" vs "my brother's")."""
    ca, cb = text.question_key(a), text.question_key(b)
    return bool(ca and cb) and len(ca & cb) / len(ca | cb) >= 0.75


def _same_answer(a: str, b: str) -> bool:
    return text.normalise(a) == text.normalise(b)


def corrections(new: list[QA], earlier: list[tuple[int, QA]]) -> list[QA]:
    """Earlier pairs that the new ones contradict, retargeted to the new answers.

    A new pair contradicts an earlier one that asks nearly the same question with another
    answer; every phrasing of that earlier fact (same session, statement and answer) is then
    trained with the new answer too, so the old fact is overridden rather than kept beside.
    """
    own = {qa.question.lower() for qa in new}
    out: dict[str, QA] = {}
    for qa in new:
        for session, old in earlier:
            if not same_question(qa.question, old.question) or _same_answer(qa.answer, old.answer):
                continue
            for other_session, other in earlier:
                if (other_session == session and other.statement == old.statement
                        and _same_answer(other.answer, old.answer)
                        and other.question.lower() not in own):
                    out.setdefault(other.question.lower(),
                                   QA(other.question, qa.answer, qa.statement))
    return list(out.values())
