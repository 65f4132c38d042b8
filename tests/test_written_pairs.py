"""The pairs an instruction-tuned model writes itself (``engine/derive/written.py``): its reply
read whatever it holds, each pair grounded in a sentence the user said and checked beside the
grammar's. The reading is tested on written replies, the model stood in for by a function as
``prefers`` is in ``test_derive.py``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import derive
from engine.derive import QA
from engine.derive.written import LABELLED, parse

SAID = "My cat is called Pixel. I moved to Leeds in March."


@pytest.mark.parametrize("reply", [
    "Q: What is my cat called?\nA: Pixel",
    "1. Q: What is my cat called?\n   A: Pixel.",
    "**Question 1:** What is my cat called?\n**Answer:** Pixel",
    "- q: What is my cat called? a: \"Pixel\"",
    "Sure! Here are some questions.\n\nQ: What is my cat called?\n\nA: Pixel\n\nHope it helps!",
    "<think>\nQ: Where is my dog?\nA: home\n</think>\n\nQ: What is my cat called?\nA: Pixel",
])
def test_the_usual_shapes_of_a_list_of_questions_are_read(reply):
    assert parse(reply) == [("What is my cat called?", "Pixel")]


@pytest.mark.parametrize("reply", [
    "", "Pixel", "A: Pixel", "Q: What is my cat called?", "Q: My cat is Pixel.\nA: Pixel",
    "Q: ?\nA: Pixel", "Q: What is my cat called?\nA:   ", "Q: What is my cat called?\nQ:\nA: x",
    "What is my cat called? Pixel", "\x00\ufffd<|im_end|>Q:\u202eA:", "<think>Q: Who?\nA: me",
])
def test_what_is_not_a_question_and_its_answer_gives_no_pair(reply):
    assert parse(reply) == []


@given(st.text())
def test_any_reply_at_all_is_read_without_an_error(reply):
    for question, answer in parse(reply):
        assert question.endswith("?") and answer
        assert "\n" not in question + answer


WORDS = st.text("abcdefghij XYZ-", min_size=1, max_size=20).filter(str.strip)
JUNK = st.text(max_size=40).filter(lambda line: len(line.splitlines()) <= 1
                                   and not LABELLED.fullmatch(line.strip()))


@given(st.lists(st.tuples(WORDS, WORDS, JUNK), max_size=5), JUNK)
def test_pairs_among_any_other_lines_are_all_read(pairs, opening):
    reply = "\n".join([opening] + [f"Q: {q}?\n{junk}\nA: {a}" for q, a, junk in pairs])
    assert parse(reply) == [(" ".join(q.split()) + "?", " ".join(a.split())) for q, a, _ in pairs]


def test_each_turn_is_asked_once_and_a_pair_s_statement_is_the_sentence_that_grounds_it():
    asked = []

    def write(prompt):  # the "model"
        asked.append(prompt)
        return ("Q: Where did I move to?\nA: Leeds\nQ: What is my dog called?\nA: Rex\n"
                "Q: Is my cat called Pixel?\nA: Pixel")

    pairs = derive.written([SAID, "Hello"], write)
    assert len(asked) == 2 and SAID in asked[0] and "Hello" in asked[1]
    assert pairs[:3] == [QA("Where did I move to?", "Leeds", "I moved to Leeds in March."),
                         QA("What is my dog called?", "Rex", ""),  # not said: no statement
                         QA("Is my cat called Pixel?", "Pixel", "")]  # given away
    assert derive.joined([], pairs) == pairs[:1]  # grounding drops the others


def test_a_written_pair_joins_the_grammar_s_unless_it_asks_the_same_question():
    grammar = derive.candidates([SAID])
    mine = QA("Where did I move to?", "Leeds", "I moved to Leeds in March.")
    assert mine in grammar
    other = QA("Which town did I move to?", "Leeds", "I moved to Leeds in March.")
    again = QA("where did i move to?", "March", "I moved to Leeds in March.")
    assert derive.joined(grammar, [other, again, other]) == grammar + [other]


def test_a_written_pair_passes_the_same_consistency_check_as_the_grammar_s():
    statement = "I moved to Leeds in March."
    grammar = [QA("When did I move to Leeds?", "March", statement)]
    written = [QA("Which town did I move to?", "Leeds", statement),
               QA("Which month was my move?", "Leeds", statement)]

    def prefers(items):  # the "model": March for a time, Leeds otherwise
        return [{answers.index("March" if question.startswith("When") or "month" in question
                               else "Leeds")}
                for _, question, answers in items]

    assert derive.checked(derive.joined(grammar, written), prefers) == grammar + written[:1]
