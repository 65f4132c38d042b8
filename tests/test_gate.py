"""The gate a new memory version passes: locality against the model's null floor, and what a
user would see (an untaught personal question answered with a taught answer, a taught
question answered in a loop). On the tiny model, with scripted replies where the random
model cannot be made to leak or loop on purpose."""

from __future__ import annotations

import io

import numpy as np
import pytest

from app import memory_cli, memory_text
from engine import learner, runtime
from engine.learning import gate as learning
from engine.learning.gate import Locality, Taught, rejections
from engine.learning.texts import dialogue
from engine.prompt import Turn
from engine.runtime import Runtime
from tests.test_learning import engine, said, small  # noqa: F401  (fixtures)
from tests.tiny_gguf import QWEN3_THINKING_TEMPLATE, WORDS, write_tiny_model


def scripted(gate, replies: dict[str, str]) -> None:
    """The gate's replies, by question (with any overlay): what a model would answer."""
    gate.reply = lambda question, max_tokens: (replies.get(question, "I don't know."), False)


def test_a_leak_is_a_taught_answer_to_an_untaught_question_the_base_model_did_not_give(engine):  # noqa: F811
    gate = engine.learning.gate()
    base = {q: "I don't know." for q in gate.personal}
    base["Who is my father?"] = "Pixel, like my cat."  # the base model says it too
    baseline = learning.Baseline([], [], [], base)
    scripted(gate, {"What is my brother called?": "Pixel.", "Who is my father?": "Pixel.",
                    "What is my rabbit called?": "Pixel.", "What is my cat called?": "Pixel."})
    taught = Taught(answers=["Pixel"], said=["My rabbit is called Pixel."],
                    questions=[("What is my rabbit called?", "Pixel")])
    leaks, loops, unrecalled = gate._seen(taught, baseline, None)
    # the brother was never mentioned: a leak; the rabbit was (an answer may be right); the
    # father question got the same answer from the base model
    assert [leak[0] for leak in leaks] == ["What is my brother called?"]
    assert leaks[0][2] == "Pixel" and loops == () and unrecalled == ()


def test_a_taught_answer_the_base_model_would_write_there_itself_is_not_a_leak(
        engine, monkeypatch):  # noqa: F811
    """"What is my children's school called?" → "I am the school's name." is English, not the
    "name" a session taught: the base model's probability of the answer where the reply says
    it tells the two apart."""
    gate = engine.learning.gate()
    question = "What is my brother called?"
    well = gate.runtime.tokenize("Well", add_bos=False)
    prompt = gate._asked(question) + well
    gate.scorer.set_overlay(None)
    logprobs = learning.log_softmax(gate.scorer.logits_at(prompt, [len(prompt) - 1]))[0]
    one_token = {word: said[-1] for word in WORDS
                 if (said := gate.runtime.tokenize(f"Well {word}", add_bos=False))[:-1] == well}
    likely = max(one_token, key=lambda w: logprobs[one_token[w]])
    unlikely = min(one_token, key=lambda w: logprobs[one_token[w]])
    p_likely = gate.expected(question, f"Well {likely} it is.", likely)
    assert p_likely == pytest.approx(float(np.exp(logprobs[one_token[likely]])), rel=1e-4)
    p_unlikely = gate.expected(question, f"Well {unlikely} it is.", unlikely)
    assert p_unlikely < p_likely
    monkeypatch.setattr(learning, "LEAK_EXPECTED", (p_likely + p_unlikely) / 2)
    baseline = learning.Baseline([], [], [], {q: "I don't know." for q in gate.personal})
    for word, leaked in ((likely, False), (unlikely, True)):
        scripted(gate, {question: f"Well {word} it is."})
        taught = Taught(answers=[word], said=["My cat is fine."], questions=[])
        leaks, _, _ = gate._seen(taught, baseline, None)
        assert [leak[2] for leak in leaks] == ([word] if leaked else [])


def test_a_leak_is_traced_at_the_tokens_the_model_wrote_its_leading_space_included(
        engine, monkeypatch):  # noqa: F811
    """The built-in format ends the prompt at "Assistant:" and the model answers " Pixel.":
    the leak's place must hold the token " Pixel", the one whose makers are looked for, not
    "Pixel", a token the model never wrote (the trims once ranked neurons by it). Shown to
    the user, the reply is stripped."""
    gate = engine.learning.gate()
    question, name = "What is my brother called?", WORDS[-1]
    written = engine.runtime.tokenize(f" {name}", add_bos=False)
    assert written != engine.runtime.tokenize(name, add_bos=False)
    prompt = gate._asked(question)
    monkeypatch.setattr(gate.scorer, "greedy", lambda tokens, max_tokens, stop:
                        (f" {name}." if tokens == prompt else "", False))
    reply, _ = gate.reply(question, 8)
    tokens, at = gate.leak_place(question, reply, name)
    assert tokens == prompt + written and len(prompt) - 1 <= at < len(tokens) - 1
    reasons = rejections(Locality(0.99, 0.001, ((question, reply, name),)), 0.9)
    assert reasons == [f"leaks: {question!r} was answered '{name}.' ('{name}' was taught for "
                       "something else)"]


def test_whether_a_version_gives_the_changed_answers_back_is_read_in_llama_cpp(
        engine, make_overlay):  # noqa: F811
    """Blame found in the twin is checked where the gate saw the change: llama.cpp's answer
    at each changed position against the base model's."""
    gate = engine.learning.gate()
    quiet = make_overlay(engine.runtime.model.sha256, [(1, "ffn_down", 2, 1)], magnitude=1e-6)
    flips = [(0, 0), (1, len(gate.baseline.answers[1]) - 1)]
    assert gate.gives_back(quiet, flips)  # nothing changed: every answer as the base model's
    answers = gate.baseline.answers[1]
    answers[-1] = (answers[-1] + 1) % gate.scorer.llm.n_vocab()  # as if the base said other
    assert not gate.gives_back(quiet, flips)
    assert gate.gives_back(quiet, flips[:1])
    leak = ("What is my brother called?", "Pixel.", "Pixel")
    for reply, stopped in (("Pixel.", False), ("I have no brother.", True)):
        scripted(gate, {leak[0]: reply})
        assert gate.gives_back(quiet, flips[:1], [leak]) is stopped


def test_a_taught_question_answered_in_a_loop_is_a_loop(engine):  # noqa: F811
    gate = engine.learning.gate()
    scripted(gate, {"What is my cat called?": "Mos Mos Mos Mos Mos", "Where do I live?": "Oslo."})
    taught = Taught(answers=["Mosel", "Oslo"], said=["My cat is Mosel.", "I live in Oslo."],
                    questions=[("What is my cat called?", "Mosel"), ("Where do I live?", "Oslo")])
    gate.replies = lambda lora, questions, max_tokens: ["My cat is Mosel." for _ in questions]
    _, loops, unrecalled = gate._seen(taught, gate.baseline, None)
    assert loops == (("What is my cat called?", "Mos Mos Mos Mos Mos"),)
    assert unrecalled == ("Mosel",)  # "Mos Mos …" does not say it; "Oslo." does


def test_a_loop_the_base_model_has_too_is_not_held_against_a_version(engine):  # noqa: F811
    gate = engine.learning.gate()
    scripted(gate, {"Who was Jon?": "I'm not sure. I'm not sure. I'm not sure.",
                    "What is my cat called?": "Mos Mos Mos Mos Mos"})
    before = {"Who was Jon?": "I'm not sure. I'm not sure. I'm not sure. I'm",
              "What is my cat called?": "I don't have a cat."}
    baseline = gate.baseline  # computed before the base model's replies are scripted
    gate.replies = lambda lora, questions, max_tokens: [before[q] for q in questions]
    taught = Taught(answers=["Mosel", "a dancer"], said=["My cat is Mosel. Jon was a dancer."],
                    questions=[("Who was Jon?", "a dancer"), ("What is my cat called?", "Mosel")])
    _, loops, _ = gate._seen(taught, baseline, None)
    assert loops == (("What is my cat called?", "Mos Mos Mos Mos Mos"),)


def test_a_version_that_leaks_is_rejected_with_the_reason_shown(engine, monkeypatch):  # noqa: F811
    engine.save_settings(engine.settings.with_gate(0.0))
    engine.settings = type(engine.settings)(**{**vars(engine.settings), "gate_replies": True})
    leak = ("What is my brother called?", "Pixel.", "Pixel")
    monkeypatch.setattr(learning.Gate, "measure", lambda self, lora, scale=1.0, cancel=None,
                        taught=None: Locality(0.99, 0.001, (leak,) if taught else ()))
    sid = said(engine, "What is my cat called?|Pixel")
    [result] = engine.learn_now(session_ids=[sid])
    assert not result.accepted and engine.memory.applied is None
    assert result.version.reason.startswith("leaks: 'What is my brother called?' was answered")
    shown = memory_text.gate(result.version)
    assert shown.startswith("rejected by the gate: leaks:") and "locality 0.990" in shown


def test_a_fact_the_twin_recalls_and_the_served_weights_do_not_give_back_is_not_learned(
        engine, monkeypatch):  # noqa: F811
    """Training judges recall in the twin; the chat runs llama.cpp, which can differ by a
    logit or two: the gate's replies to each fact's question decide too."""
    engine.save_settings(engine.settings.with_gate(0.0))
    engine.settings = type(engine.settings)(**{**vars(engine.settings), "gate_replies": True})
    monkeypatch.setattr(learner.train, "recalled", lambda right, rows, facts: set(facts))
    asked = []

    def measure(self, lora, scale=1.0, cancel=None, taught=None):
        asked.extend(taught.questions)
        return Locality(0.99, 0.001, unrecalled=("Oslo",))

    monkeypatch.setattr(learning.Gate, "measure", measure)
    sid = said(engine, "My cat is called what?|Pixel", "What is my cat called?|Pixel",
               "Where do I live?|Oslo")
    [result] = engine.learn_now(session_ids=[sid])
    # each fact asked once, as a user would put it (the question word first)
    assert asked == [("What is my cat called?", "Pixel"), ("Where do I live?", "Oslo")]
    assert result.accepted and result.unrecalled == ["Oslo"]
    assert result.version.learned[sid]["unrecalled"] == ["Oslo"]
    # a fact is counted once, however many questions ask it
    assert "learned session 1 (1 fact, 1 not recalled yet," in result.summary()
    assert "learned 1 fact, 1 not recalled yet" in memory_text.describe(engine, result)


@pytest.mark.parametrize("fault", ["leak", "loop"])
def test_a_fact_that_keeps_leaking_or_looping_is_set_aside_and_the_rest_is_learned(
        engine, monkeypatch, fault):  # noqa: F811
    engine.save_settings(engine.settings.with_gate(0.0))
    engine.settings = type(engine.settings)(**{**vars(engine.settings), "gate_replies": True})
    leak = ("What is my rabbit called?", "Pixel.", "Pixel")
    loop = ("What is my cat called?", "Pix Pix Pix Pix")
    tries = []

    def measure(self, lora, scale=1.0, cancel=None, taught=None):
        tries.append(lora)
        faulty = len(tries) < 4
        return Locality(0.99, 0.001, (leak,) if faulty and fault == "leak" else (),
                        (loop,) if faulty and fault == "loop" else ())

    monkeypatch.setattr(learning.Gate, "measure", measure)
    sid = said(engine, "What is my cat called?|Pixel", "Where do I live?|Oslo")
    [result] = engine.learn_now(session_ids=[sid])
    # trained with negatives twice, then judged without what still failed
    assert len(tries) == 4 and result.accepted
    assert [qa.answer for qa in result.facts] == ["Oslo"]
    assert [qa.answer for qa in result.set_aside] == ["Pixel"]
    record = result.version.learned[sid]
    assert [row[1] for row in record["set_aside"]] == ["Pixel"]
    assert len(record["refused_tries"]) == 3
    assert "Pixel  (set aside: it leaked" in memory_text.describe(engine, result)


def test_a_leak_is_fitted_silent_at_the_reply_s_own_words_up_to_the_answer(
        engine, monkeypatch):  # noqa: F811
    """A detector kept silent where the question ends can still fire inside the reply the
    model writes ("My rabbit is called" → "Pixel"): the next try fits every position of that
    reply, up to the leaked answer, silent."""
    engine.save_settings(engine.settings.with_gate(0.0))
    engine.settings = type(engine.settings)(**{**vars(engine.settings), "gate_replies": True})
    leak = ("What is my rabbit called?", "My rabbit is called Pixel.\n\nUser", "Pixel")
    measured, silent = [], []

    def measure(self, lora, scale=1.0, cancel=None, taught=None):
        measured.append(lora)
        return Locality(0.99, 0.001, (leak,) if len(measured) == 1 else ())

    monkeypatch.setattr(learning.Gate, "measure", measure)
    learn = learner.learn
    monkeypatch.setattr(learner, "learn", lambda *a, **kw: silent.append(
        [e.prompt + e.answer for e in kw["contrasts"]]) or learn(*a, **kw))
    [result] = engine.learn_now(session_ids=[said(engine, "What is my cat called?|Pixel")])
    prompt, answer = dialogue(engine.runtime, engine.settings.system_prompt, leak[0],
                              " My rabbit is called Pixel.")
    assert result.accepted and len(silent) == 2
    assert prompt + answer in silent[1] and prompt + answer not in silent[0]


def _fact(engine, answer: str) -> tuple[int, ...]:  # noqa: F811
    """A taught ``answer`` as the learner keys its fact (``Example.answer``'s tokens)."""
    return tuple(engine.runtime.tokenize(f" {answer}.", add_bos=False))


LOOPS = ("What is my cat called?", "Pix Pix Pix Pix"), ("What is my dog called?", "Rex Rex")
LEAK = ("Which bus do I take?", "Oslo.", "Oslo")


@pytest.mark.parametrize("faults, judged, kept, set_aside, fires", [
    # a fact that loops on every try, another until it is trained against once more, and a
    # third leaking only on the last try
    ([((), LOOPS)] * 2 + [((LEAK,), LOOPS[:1])], 4, ["Rex"], ["Oslo", "Pixel"], ""),
    # a leak on every try, and a loop seen only once the leaking fact is out
    ([((LEAK,), ())] * 3 + [((), LOOPS[1:])], 5, ["Pixel"], ["Oslo", "Rex"], ""),
    # a loop that outlives its own fact's cut: the fact firing where it goes round goes too
    ([((), LOOPS[:1])] * 4, 5, ["Oslo"], ["Pixel", "Rex"], "Rex"),
])
def test_what_still_leaks_on_the_last_try_is_taken_out_not_the_whole_session(
        engine, monkeypatch, faults, judged, kept, set_aside, fires):  # noqa: F811
    """On the last try the facts that leak or loop have their neurons taken out and the rest
    is judged again, and what leaks or loops then is taken out in turn, or, where the loop
    is of a fact already out, the facts whose neurons fire where it goes round again: the
    session keeps what is left, not refused whole."""
    engine.save_settings(engine.settings.with_gate(0.0))
    engine.settings = type(engine.settings)(**{**vars(engine.settings), "gate_replies": True})
    tries, traced = [], []

    def firing(twin, blocks, examples, places, tail, share):
        traced.extend(places)
        return {_fact(engine, answer) for answer in fires.split()}

    monkeypatch.setattr(learner, "firing_facts", firing)

    def measure(self, lora, scale=1.0, cancel=None, taught=None):
        tries.append(lora)
        leaks, loops = faults[len(tries) - 1] if len(tries) <= len(faults) else ((), ())
        return Locality(0.99, 0.001, leaks, loops)

    monkeypatch.setattr(learning.Gate, "measure", measure)
    trained = []
    learn = learner.learn

    def spied(twin, examples, *args, **kwargs):
        trained.append((examples, *learn(twin, examples, *args, **kwargs)))
        return trained[-1][1:]

    monkeypatch.setattr(learner, "learn", spied)
    sid = said(engine, "What is my cat called?|Pixel", "Where do I live?|Oslo",
               "What is my dog called?|Rex")
    [result] = engine.learn_now(session_ids=[sid])
    assert len(tries) == judged and result.accepted  # three tries, then judged without
    assert [qa.answer for qa in result.facts] == kept
    assert sorted(qa.answer for qa in result.set_aside) == set_aside
    assert len(result.version.learned[sid]["refused_tries"]) == 3
    assert traced == ([engine.learning.gate().loop_place(*LOOPS[0])] if fires else [])
    # what is kept is exactly the kept fact's neurons as the last try trained them
    examples, blocks, _ = trained[-1]
    keep = _fact(engine, kept[0])
    out = {tuple(e.answer) for e in examples} - {keep}
    assert len(out) == 2
    left = learner.without(blocks, examples, out)
    version = [b for b in engine.loaded()[1].current().blocks if b.session_id == sid]
    assert [(b.layer, b.matrix, b.neurons.tolist()) for b in version] == [
        (b.layer, b.matrix, b.neurons.tolist()) for b in left]


@pytest.mark.parametrize("before, blamed, stays, undone", [
    (frozenset(), "Pixel", False, False), (frozenset({(0, 1)}), "", False, False),
    (frozenset(), "Pixel Oslo", False, False), (frozenset(), "", True, False),
    (frozenset(), "", False, True)])
def test_a_decided_answer_a_session_changes_sets_aside_the_fact_whose_neurons_fire_there(
        engine, monkeypatch, before, blamed, stays, undone):  # noqa: F811
    """The locality threshold is a budget for the whole memory: a change one session makes
    within it would hold back every later one. So a version may not change a decided answer
    the memory before it kept (beyond what the null floor changes), and the neurons of the
    fact that fire where it changed are taken out; a change the memory already had is not
    this session's; where no fact fires, the likeliest maker whose absence gives the answer
    back in llama.cpp is taken out; one nothing undoes is trained away if it can be, and on
    the last try is left to the whole memory's threshold."""
    engine.settings = type(engine.settings)(**{**vars(engine.settings), "locality_threshold": 0.0,
                                               "locality_margin": 0.02, "gate_replies": False})
    monkeypatch.setattr(learning.Gate, "floor", lambda self, *shape: 1.0)
    measured, places = [], []

    def measure(self, lora, scale=1.0, cancel=None, taught=None):
        if lora.name == "base.gguf":
            flipped = before
        else:  # the second session's first try changes an answer; the first session none
            measured.append(lora)
            flipped = frozenset({(0, 1)}) if len(measured) == 2 or (
                stays and len(measured) > 2) else frozenset()
        return Locality(0.99, 0.001, decided=0.995, flipped=flipped)

    monkeypatch.setattr(learning.Gate, "measure", measure)
    first = said(engine, "Where do I work?|Elm Ridge")
    assert engine.learn_now(session_ids=[first])[0].accepted
    fired = {_fact(engine, answer) for answer in blamed.split()}

    def firing(twin, blocks, examples, at, tail, share):
        places.extend(at)
        return fired & {tuple(e.answer) for e in examples}

    monkeypatch.setattr(learner, "firing_facts", firing)
    monkeypatch.setattr(learning.Gate, "gives_back",
                        lambda self, overlay, flips, leaks=(): undone)
    sid = said(engine, "What is my cat called?|Pixel", "Where do I live?|Oslo")
    [result] = engine.learn_now(session_ids=[sid])
    record = result.version.learned[sid]
    assert result.accepted
    if undone:  # no fact fires there; the likeliest maker taken out gives it back
        assert len(measured) == 3 and len(record["refused_tries"]) == 1
        assert len(result.set_aside) == 1 and len(result.facts) == 1
    elif stays:  # traced to no fact, trained twice more: the whole memory's threshold decides
        assert len(measured) == 4 and len(record["refused_tries"]) == 2
    elif before:  # the memory had changed that answer already: nothing is held against it
        assert len(measured) == 2 and places == [] and not record["refused_tries"]
        assert [qa.answer for qa in result.facts] == ["Pixel", "Oslo"]
    elif len(fired) > 1:  # nothing would be left: trained again instead, every fact kept
        assert len(measured) == 3 and len(record["refused_tries"]) == 1
        assert [qa.answer for qa in result.facts] == ["Pixel", "Oslo"] and not result.set_aside
    else:  # its neurons taken out, the rest judged again as learned: no second training
        question = engine.learning.gate().questions[0]
        assert len(measured) == 3 and places == [engine.learning.gate().flip_place((0, 1))]
        assert record["refused_tries"] == [
            f"changes what the memory before it answered to {question!r}"]
        assert [qa.answer for qa in result.facts] == ["Oslo"]
        assert [qa.answer for qa in result.set_aside] == ["Pixel"]


def test_where_an_earlier_session_s_answer_leaks_the_fact_whose_neurons_fire_there_is_set_aside(
        engine, monkeypatch):  # noqa: F811
    """No retry can leave out an earlier session's answer, so a session whose edit makes one
    leak would be refused whole: the facts whose neurons fire where it leaked are taken out
    instead, and the rest is judged again as learned."""
    engine.save_settings(engine.settings.with_gate(0.0))
    engine.settings = type(engine.settings)(**{**vars(engine.settings), "gate_replies": True})
    leak = ("What is my rabbit called?", "Elm Ridge.", "Elm Ridge")
    measured, places = [], []

    def measure(self, lora, scale=1.0, cancel=None, taught=None):
        measured.append(lora)
        return Locality(0.99, 0.001, (leak,) if len(measured) == 2 else ())

    monkeypatch.setattr(learning.Gate, "measure", measure)
    assert engine.learn_now(session_ids=[said(engine, "Where do I work?|Elm Ridge")])[0].accepted
    pixel = tuple(engine.runtime.tokenize(" Pixel.", add_bos=False))

    def firing(twin, blocks, examples, at, tail, share):
        places.extend(at)
        return {pixel}

    monkeypatch.setattr(learner, "firing_facts", firing)
    trainings, learn = [], learner.learn
    monkeypatch.setattr(learner, "learn", lambda *a, **kw: trainings.append(1) or learn(*a, **kw))
    sid = said(engine, "What is my cat called?|Pixel", "Where do I live?|Oslo")
    [result] = engine.learn_now(session_ids=[sid])
    assert result.accepted and len(measured) == 3 and len(trainings) == 1  # judged again only
    assert places == [engine.learning.gate().leak_place(*leak)]
    assert [qa.answer for qa in result.facts] == ["Oslo"]
    assert [qa.answer for qa in result.set_aside] == ["Pixel"]


def test_an_earlier_detector_a_new_edit_tips_into_leaking_is_trimmed_and_the_session_learned(
        engine, monkeypatch):  # noqa: F811
    """A later edit can tip an earlier fact's detector over on a question it was never taught
    ("Who is my niece?" → the daughter's "9."), none of its own neurons firing there.
    Refusing it cannot help (the next session tips it again): the fewest of the earlier
    session's likeliest makers whose absence stops the leak in llama.cpp are taken out of it,
    the new session is learned whole, and what was trimmed, and that the earlier fact is no
    longer recalled without them, is said where the memory is shown."""
    engine.save_settings(engine.settings.with_gate(0.0))
    engine.settings = type(engine.settings)(**{**vars(engine.settings), "gate_replies": True})
    leak = ("What is my rabbit called?", "Elm Ridge.", "Elm Ridge")
    measured, asked, checked, recalled = [], [], [], []

    def measure(self, lora, scale=1.0, cancel=None, taught=None):
        measured.append(lora)
        return Locality(0.99, 0.001, (leak,) if len(measured) == 2 else ())

    monkeypatch.setattr(learning.Gate, "measure", measure)
    first = said(engine, "Where do I work?|Elm Ridge")
    assert engine.learn_now(session_ids=[first])[0].accepted
    before = engine.loaded()[1].current()
    monkeypatch.setattr(learner, "firing_facts", lambda *args: set())

    def undoing_neurons(twin, blocks, leaked):
        asked.append(({b.session_id for b in blocks}, leaked))
        return sorted((b.layer, int(n)) for b in blocks if b.matrix == "ffn_gate"
                      for n in b.neurons)

    def gives_back(self, overlay, flips, leaks=()):
        checked.append((sum(b.neurons.size for b in overlay.blocks), flips, list(leaks)))
        return len(checked) == 2  # the likeliest maker alone does not stop it; two do

    def says(self, overlay, pairs):
        recalled.append(list(pairs))
        return [False]  # without them, its own question no longer gets its answer

    monkeypatch.setattr(learner, "undoing_neurons", undoing_neurons)
    monkeypatch.setattr(learning.Gate, "gives_back", gives_back)
    monkeypatch.setattr(learning.Gate, "says", says)
    trainings, learn = [], learner.learn
    monkeypatch.setattr(learner, "learn", lambda *a, **kw: trainings.append(1) or learn(*a, **kw))
    sid = said(engine, "What is my cat called?|Pixel", "Where do I live?|Oslo")
    [result] = engine.learn_now(session_ids=[sid])
    assert result.accepted and len(measured) == 3 and len(trainings) == 1  # judged again only
    assert asked == [({first}, [engine.learning.gate().leak_place(*leak)])]
    after = engine.loaded()[1].current()
    whole = sum(b.neurons.size for b in before.blocks) + sum(
        b.neurons.size for b in after.blocks if b.session_id == sid)
    assert checked == [(whole - 3, [], [leak]), (whole - 6, [], [leak])]
    assert [qa.answer for qa in result.facts] == ["Pixel", "Oslo"] and not result.set_aside
    assert result.trimmed == [(first, leak[0], "Elm Ridge", False)]
    assert recalled == [[("Where do I work?", "Elm Ridge")]]  # the fact's own question
    makers = sorted((b.layer, int(n)) for b in before.blocks if b.matrix == "ffn_gate"
                    for n in b.neurons)[:2]
    earlier = [b for b in after.blocks if b.session_id == first]
    assert not any((b.layer, int(n)) in makers for b in earlier for n in b.neurons)
    assert sum(b.neurons.size for b in earlier) == sum(
        b.neurons.size for b in before.blocks) - 6  # their gate, up and down: nothing else
    shown = memory_text.trimmed(leak[0], "Elm Ridge", False)
    assert shown in memory_text.gate(result.version) and shown in memory_text.describe(
        engine, result)
    record = engine.learned_facts(result.version)[first]
    assert record["trimmed"] == [[leak[0], "Elm Ridge", False]]
    assert record["unrecalled"] == ["Elm Ridge"]
    listing = io.StringIO()
    memory_cli.show(engine, listing)
    assert f"    ({shown})" in listing.getvalue()
    assert f"Where do I work? → Elm Ridge  ({memory_text.NOT_RECALLED})" in listing.getvalue()


def test_an_earlier_answer_that_leaks_where_no_detector_fires_is_fitted_against_then_traced(
        engine, monkeypatch):  # noqa: F811
    """Where no fact's neurons fire at an earlier session's leaked answer, the session is
    trained again with the leak's question fitted silent as strongly as a rival fact's; if
    it still leaks, the fewest likeliest makers (learner.undoing) whose absence stops it in
    llama.cpp are set aside, and the rest is learned."""
    engine.save_settings(engine.settings.with_gate(0.0))
    engine.settings = type(engine.settings)(**{**vars(engine.settings), "gate_replies": True})
    leak = ("What is my rabbit called?", "Elm Ridge.", "Elm Ridge")
    measured, ranked, checked, contrasts = [], [], [], []

    def measure(self, lora, scale=1.0, cancel=None, taught=None):
        measured.append(lora)
        return Locality(0.99, 0.001, (leak,) if len(measured) in (2, 3) else ())

    monkeypatch.setattr(learning.Gate, "measure", measure)
    assert engine.learn_now(session_ids=[said(engine, "Where do I work?|Elm Ridge")])[0].accepted
    pixel, oslo = _fact(engine, "Pixel"), _fact(engine, "Oslo")
    monkeypatch.setattr(learner, "firing_facts", lambda *args: set())
    monkeypatch.setattr(learner, "undoing_neurons", lambda *args: [])

    def undoing(twin, blocks, examples, flips, leaked):
        ranked.append(leaked)
        return [pixel, oslo]

    def gives_back(self, overlay, flips, leaks=()):
        checked.append(list(leaks))
        return True

    monkeypatch.setattr(learner, "undoing", undoing)
    monkeypatch.setattr(learning.Gate, "gives_back", gives_back)
    learn = learner.learn
    monkeypatch.setattr(learner, "learn", lambda *a, **kw: contrasts.append(
        len(kw["contrasts"])) or learn(*a, **kw))
    [result] = engine.learn_now(session_ids=[said(engine, "What is my cat called?|Pixel",
                                                  "Where do I live?|Oslo")])
    assert result.accepted and len(measured) == 4  # leaked twice, judged again without Pixel
    assert contrasts[1] == contrasts[0] + 1  # the second try: its question fitted silent
    assert ranked == [[engine.learning.gate().leak_place(*leak)]] and checked == [[leak]]
    assert [qa.answer for qa in result.facts] == ["Oslo"]
    assert [qa.answer for qa in result.set_aside] == ["Pixel"]


def test_the_gate_asks_where_the_answer_begins_so_its_few_tokens_read_no_thinking(
        tmp_path, monkeypatch):
    """Qwen 3 Thinking's generation prompt opens the thinking block: asked there, the model
    would spend the leak and loop checks' 8 and 24 tokens on its working. The gate asks
    where the learner trains answers, after the block its turn closes, and reads what
    follows; a block the reply opens itself is read past, or kept whole where it never
    closes (it ran out of tokens). The replies are scripted: the random model's are line
    breaks."""
    monkeypatch.setattr(runtime, "default_threads", lambda: 1)
    served = Runtime(write_tiny_model(tmp_path / "thinking.gguf", "qwen3",
                                      chat_template=QWEN3_THINKING_TEMPLATE), n_ctx=256)
    gate = learning.Gate(served, None)
    question, thought = "What is my cat called?", "<think>\nThe user asks what the cat is called.\n"
    try:
        prompt = served.answering(None, [Turn("user", question)])
        assert served.llm.detokenize(prompt, special=True).decode().endswith(
            "<|im_start|>assistant\n<think>\n\n</think>\n\n")
        for said, limited, read in [("Mosel.", False, "Mosel."),
                                    (thought + "</think>\n\nMosel.", False, "Mosel."),
                                    (thought, True, thought.strip())]:
            monkeypatch.setattr(gate.scorer, "greedy", lambda tokens, max_tokens, stop, said=said,
                                limited=limited: (said if tokens == prompt else "", limited))
            assert gate.reply(question, 8) == (read, limited)
    finally:
        gate.close()
        served.close()


def test_rejections_say_why_in_words():
    assert rejections(Locality(0.90, 0.01, decided=0.97), 0.955) == []
    reasons = rejections(Locality(0.90, 0.01, (("Q1?", "A.", "A"), ("Q2?", "A.", "A")),
                                  (("Q3?", "B B B B"),), decided=0.94), 0.955)
    assert reasons[0] == "locality 0.940 < 0.955 on decided answers"
    assert reasons[1].startswith("leaks: 'Q1?' was answered 'A.'") and "and 1 more" in reasons[1]
    assert reasons[2] == "loops: 'Q3?' → 'B B B B'"


def test_only_answers_the_base_model_had_decided_count_against_a_version(engine, monkeypatch):  # noqa: F811
    """A position where the base model's top two tokens nearly tie flips with any change to
    the weights; one it had decided flips only when the version changed what it knows."""
    gate = engine.learning.gate()
    gate.facts, gate.neutral = [([2, 5], [7, 8])], [([2, 5], [9])]
    base = np.array([[2.0, 1.9, 0.0], [5.0, 0.0, 0.0]])  # a coin toss, then a decided answer
    logits = {None: base, "tie": np.array([[1.9, 2.0, 0.0], [5.0, 0.0, 0.0]]),
              "decided": np.array([[2.0, 1.9, 0.0], [0.0, 5.0, 0.0]])}
    overlay: dict[str, str | None] = {"now": None}
    monkeypatch.setattr(gate.scorer, "set_overlay",
                        lambda lora, scale=1.0: overlay.__setitem__("now", lora))
    monkeypatch.setattr(gate, "answer_logits", lambda prompt, answer: logits[overlay["now"]])
    tie, decided = gate.measure("tie"), gate.measure("decided")
    assert (tie.locality, tie.decided) == (0.5, 1.0)
    assert (decided.locality, decided.decided) == (0.5, 0.0)
    assert rejections(tie, 0.98) == [] and rejections(decided, 0.98)


def test_the_null_floor_is_measured_once_per_model_and_shape(engine, monkeypatch):  # noqa: F811
    gate = engine.learning.gate()
    floor = gate.floor((1, 2), 4, 64, 128)
    assert 0.9 <= floor <= 1.0  # 1e-7 noise: the float32 tiny model hardly moves
    monkeypatch.setattr(learning, "null_locality", lambda *a: pytest.fail("measured again"))
    assert gate.floor((1, 2), 4, 64, 128) == floor


def test_the_threshold_is_the_floor_less_the_margin_unless_a_fixed_one_is_set(engine):  # noqa: F811
    settings = engine.settings
    engine.settings = type(settings)(**{**vars(settings), "locality_threshold": 0.0,
                                        "locality_margin": 0.02})
    recipe = engine.learning.recipe
    floor = engine.learning.gate().floor(tuple(recipe.layers), recipe.neurons, 64, 128)
    assert engine.learning.threshold() == pytest.approx(floor - 0.02)
    engine.settings = settings.with_gate(0.9)
    assert engine.learning.threshold() == 0.9


def test_says_asks_each_question_with_the_overlay_and_reads_its_answer_in_the_reply(
        engine, make_overlay):  # noqa: F811
    """What a trim cost: the fact's own question asked with the trimmed memory in llama.cpp
    (scripted replies), and whether the reply gives the fact's answer."""
    gate = engine.learning.gate()
    scripted(gate, {"How old is my daughter?": "She is 9.", "Who is my niece?": "Noor."})
    overlay = make_overlay(engine.runtime.model.sha256, [(1, "ffn_gate", 2, 4)])
    assert gate.says(overlay, [("How old is my daughter?", "9"), ("Who is my niece?", "9"),
                               ("Where do I live?", "Oslo")]) == [True, False, False]
