"""The pairs an instruction-tuned model writes itself (``engine/derive/written.py``): its reply
read whatever it holds, each pair grounded in a sentence the user said and checked beside the
grammar's; on the tiny models, a model with no chat template is never asked, one with a
template is asked in a context of its own. The tiny models' replies are noise: what is
asserted of them is what noise gives (nothing accepted, nothing broken), and the reading
itself is tested on written replies, the model stood in for by a function as ``prefers`` is
in ``test_derive.py``."""

from __future__ import annotations

import functools
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import derive, learner, runtime
from engine.consistency import llama_writes
from engine.derive import QA
from engine.derive.written import LABELLED, instruction, parse
from engine.engine import Engine
from engine.learning import service
from engine.prompt import Turn
from engine.runtime import Runtime, Sampling
from engine.scoring import Scorer
from tests.tiny_gguf import QWEN3_THINKING_TEMPLATE, write_tiny_model

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
    "<think>\nQ: Where is my dog?\nA: home\n",  # cut off mid-thought: still its working
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


def test_a_question_put_to_the_user_is_not_kept():
    def write(prompt):  # the "model", forgetting who will ask
        return ("Q: Where did you move to?\nA: Leeds\nQ: When did I move to Leeds?\nA: March\n"
                "Q: Which town is yours now?\nA: Leeds")

    assert derive.written([SAID], write) == [
        QA("When did I move to Leeds?", "March", "I moved to Leeds in March.")]


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


# -- on the tiny models -------------------------------------------------------------------

@pytest.fixture
def quick(monkeypatch):
    """The real derivation with a two-layer, three-step recipe, one thread per llama.cpp
    context, and a record of every instruction the served model is asked and its reply
    (through the real writer)."""
    monkeypatch.setattr(learner, "Recipe", functools.partial(
        learner.Recipe, layers=(1, 2), neurons=4, steps=3))
    monkeypatch.setattr(runtime, "default_threads", lambda: 1)
    asked: list[tuple[str, str]] = []

    def recording(served, scorer):
        write = llama_writes(served, scorer)

        def recorded(instruction):
            asked.append((instruction, write(instruction)))
            return asked[-1][1]

        return recorded

    monkeypatch.setattr(service, "llama_writes", recording)
    return asked


def learned(engine: Engine, *turns: str) -> list[dict]:
    """The records of one session learned with the model's pairs on, on again, then off."""
    session = engine.new_session()
    for turn in turns:
        engine.store.add_message(session.id, "user", turn)
    records = []
    for on in (True, True, False):
        engine.save_settings(replace(engine.settings, model_pairs=on))
        [result] = engine.learn_now(session_ids=[session.id])
        records.append(result.version.learned[session.id])
    return records


@pytest.mark.parametrize("arch", ["gemma3", "llama"])
def test_the_model_s_pairs_on_a_tiny_model(quick, arch, engine_home, tmp_path):
    """A base model (no chat template) is never asked: the pairs are the grammar's alone. The
    tiny instruction-format model is asked about each turn, once in a process; its replies
    are noise, so none of what it writes is learned, and learning goes on as without it."""
    engine = Engine(home=engine_home, model=write_tiny_model(tmp_path / "m.gguf", arch),
                    n_ctx=512)
    engine.load()
    try:
        engine.save_settings(engine.settings.with_gate(0.0))
        on, again, off = learned(engine, SAID, "My sister Nadia plays the oboe.")
    finally:
        engine.close()
    assert len(quick) == (2 if arch == "llama" else 0)  # once per turn, with the setting on
    assert (again["model_pairs"], again["facts"]) == (on["model_pairs"], on["facts"])
    assert all(said in instruction for (instruction, _), said in zip(
        quick, [SAID, "My sister Nadia plays the oboe."], strict=False))
    assert on["model_pairs"] == sum(len(parse(reply)) for _, reply in quick)
    assert on["model_pairs_checked"] == off["model_pairs"] == off["model_pairs_checked"] == 0
    assert on["facts"] == off["facts"] and on["candidates"] == off["candidates"] > 0


def test_the_model_writes_in_a_context_of_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "default_threads", lambda: 1)
    path = write_tiny_model(tmp_path / "llama.gguf", "llama")
    served = Runtime(path, n_ctx=256)
    scorer = Scorer(path, n_ctx=1024)  # the gate's
    try:
        "".join(served.reply([Turn("user", "hello")], None, Sampling.greedy(4), owner="chat"))
        held = served.snapshot("chat")
        write = llama_writes(served, scorer)
        assert write(instruction(SAID))  # noise, but written
        assert served.snapshot("chat") == held  # the chat's context holds what it held
        assert write("hello " * 1000) == ""  # no room left for a reply: none is written
    finally:
        scorer.close()
        served.close()


def test_a_model_whose_chat_opens_the_thinking_block_writes_its_pairs_as_an_answer(
        tmp_path, monkeypatch):
    """Qwen 3 Thinking's generation prompt opens the thinking block; the model is asked for its
    pairs where an answer begins, after the empty block its template writes before one, so
    its reply is read from its start: the pairs after a block it opens itself, none inside."""
    monkeypatch.setattr(runtime, "default_threads", lambda: 1)
    path = write_tiny_model(tmp_path / "thinking.gguf", "qwen3",
                            chat_template=QWEN3_THINKING_TEMPLATE)
    served, scorer = Runtime(path, n_ctx=256), Scorer(path, n_ctx=1024)
    asked: list[str] = []
    pairs = "Q: Where did I move to?\nA: Leeds"
    try:
        assert served.format.reply_prefix == "<think>"
        for said in (pairs, f"<think>\nQ: Where is my dog?\nA: home\n</think>\n\n{pairs}"):
            monkeypatch.setattr(scorer, "greedy", lambda tokens, max_tokens, stop, said=said: (
                asked.append(served.llm.detokenize(tokens, special=True).decode()) or said,
                False))
            assert derive.written([SAID], llama_writes(served, scorer)) == [
                QA("Where did I move to?", "Leeds", "I moved to Leeds in March.")]
        assert all(prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
                   for prompt in asked) and len(asked) == 2
    finally:
        scorer.close()
        served.close()

