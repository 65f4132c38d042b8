"""The cells' learned read on the tiny model: training lowers its loss on the layers it may
touch, and the learner versions the gates with the overlay (rollback and reset take them back)."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
from safetensors.numpy import load_file

from engine import cell_conversations, cell_training, runtime
from engine.cell_conversations import Probe, asked, session_cases
from engine.cell_training import GateRecipe, train
from engine.cells import CellRule, CellWriter
from engine.engine import Engine
from engine.learning import CELLS_EVERY
from engine.learning.anchors import twin_for
from engine.learning.texts import anchor_prose
from engine.overlay import CELL_GATES, TENSORS_FILE
from engine.prompt import Turn
from tests.tiny_gguf import N_LAYER


def _exchanges(n: int, start: int = 0) -> list[Turn]:
    turns = []
    for i in range(start, start + n):
        turns += [Turn("user", f"the cat {i} was in the town"),
                  Turn("assistant", f"and the town {i}")]
    return turns


def test_session_cases_predict_each_late_reply_with_the_early_turns_dropped():
    assert len(session_cases(7, _exchanges(6))) == 3  # those with more than a window before
    turns = _exchanges(9)
    cases = session_cases(7, turns)
    assert len(cases) == 4  # the latest four
    latest = cases[0]
    assert latest.kept == turns[12:16] and latest.dropped == turns[:12]
    assert latest.probes[0] == Probe(turns[16].content, turns[17].content)
    assert session_cases(7, _exchanges(2)) == []


def test_training_lowers_its_loss_and_touches_only_the_cell_layers(tiny_model, monkeypatch):
    monkeypatch.setattr(runtime, "default_threads", lambda: 1)
    rt = runtime.Runtime(tiny_model, n_ctx=256)
    writer = CellWriter(rt, CellRule())
    losses = []
    gates = train(twin_for(rt), writer, cell_conversations.dev_cases()[:3], anchor_prose(),
                  GateRecipe(steps=8, lr=0.2), progress=lambda _, message: losses.append(
                      float(re.search(r"answers (\S+),", message).group(1))))
    writer.close()
    rt.close()
    assert len(losses) == 8 and min(losses[1:]) < losses[0]
    assert gates.shape == (N_LAYER,) and np.all(np.isfinite(gates))
    assert not gates[[0, N_LAYER - 1]].any() and gates[[1, 2]].any()


@pytest.mark.parametrize("tiny_model", ["llama"], indirect=True)
def test_a_chat_template_model_s_read_is_trained_on_questions_in_its_template(tiny_model,
                                                                             monkeypatch):
    monkeypatch.setattr(runtime, "default_threads", lambda: 1)
    rt = runtime.Runtime(tiny_model, n_ctx=256)
    writer = CellWriter(rt, CellRule())
    case = cell_conversations.dev_cases()[0]
    prepared, prepare = [], cell_training._prepare
    monkeypatch.setattr(cell_training, "_prepare", lambda twin, sequences, scored, first: (
        prepared.append(sequences), prepare(twin, sequences, scored, first))[1])
    train(twin_for(rt), writer, [case], anchor_prose(), GateRecipe(steps=1))
    turn = "<|start_header_id|>{}<|end_header_id|>\n\n{}<|eot_id|>"
    window = "".join(turn.format(t.role, t.content) for t in case.kept)
    assert [rt.llm.detokenize(tokens, special=True).decode() for tokens in prepared[0]] == [
        f"<|begin_of_text|>{window}{turn.format('user', probe.question)}"
        f"<|start_header_id|>assistant<|end_header_id|>\n\n {probe.answer}"
        for probe in case.probes]
    # the bench evaluates the window once: it begins every question's sequence
    window_tokens, _ = rt.turn_spans(case.kept)
    assert all(tokens[:len(window_tokens)] == window_tokens for tokens in prepared[0])
    writer.close()
    rt.close()


@pytest.mark.builtin
def test_the_built_in_model_s_read_is_trained_and_measured_on_the_tokens_it_always_was(
        builtin_model):
    """The built-in model has no chat template: every question the read is trained and
    measured on (the bundled conversations) is, token for token, what the plain dialogue's
    hard-coded lines gave before the questions followed the model's prompt format."""
    rt = runtime.Runtime(builtin_model, n_ctx=512, n_threads=1)

    def tokens(text: str, bos: bool = False) -> list[int]:
        return rt.llm.tokenize(text.encode(), add_bos=bos, special=False)

    for case in cell_conversations.dev_cases() + cell_conversations.cases():
        for turns in (case.kept, case.dropped + case.kept):
            window = tokens("\n".join(f"{'User' if t.role == 'user' else 'Assistant'}: "
                                      f"{t.content}" for t in turns), bos=True)
            assert rt.turn_spans(turns)[0] == window  # what the bench evaluates once
            for probe in case.probes + [case.neutral]:
                assert asked(rt, turns, probe) == (
                    window + tokens(f"\nUser: {probe.question}\nAssistant:"),
                    tokens(f" {probe.answer}"))
    rt.close()


@pytest.fixture
def engine(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "default_threads", lambda: 1)
    dev = cell_conversations.dev_cases()[:2]
    monkeypatch.setattr(cell_conversations, "dev_cases", lambda: dev)
    e = Engine(home=tmp_path / "home", model=tiny_model, n_ctx=256)
    e.load()
    e.learning.cell_recipe = GateRecipe(steps=2)
    yield e
    e.close()


def _session(engine: Engine, turns: list[Turn], session_id: int | None = None) -> int:
    session_id = session_id or engine.new_session().id
    for turn in turns:
        engine.store.add_message(session_id, turn.role, turn.content)
    return session_id


def test_a_long_session_teaches_the_read_and_the_gates_are_versioned(engine):
    _session(engine, _exchanges(CELLS_EVERY - 1))
    assert engine.learning.learn_cells() is None  # not long enough to teach anything
    long_id = _session(engine, _exchanges(1, CELLS_EVERY), session_id=engine.sessions()[0].id)
    first = engine.learning.learn_cells()
    assert first.metrics["event"] == "cells" and first.metrics["cells"]["own_cases"] > 0
    gates = load_file(engine.home / first.path / TENSORS_FILE)[CELL_GATES]
    np.testing.assert_array_equal(engine.memory.cell_gates, gates)
    assert engine.learning.learn_cells() is None  # nothing new since

    _session(engine, _exchanges(CELLS_EVERY, 100), session_id=long_id)
    second = engine.learning.learn_cells()
    assert second.parent_id == first.id
    engine.learning.rollback()
    np.testing.assert_array_equal(engine.memory.cell_gates, gates)
    engine.learning.reset()
    assert engine.memory.cell_gates is None


@pytest.mark.parametrize("tiny_model", ["llama"], indirect=True)
def test_gates_learned_on_another_prompt_format_are_not_read_and_are_learned_again(engine):
    """The tiny model has a chat template; gates kept without a rule key were learned on the
    plain dialogue (every version before cells followed the model's format) and misread its
    cells: they are not used, and the next learning starts from nothing, from every session."""
    rule = engine.states.rule
    assert rule.chat_template and not rule.reads_with(None)
    assert replace(rule, chat_template=False).reads_with(None)  # the plain dialogue's are
    _session(engine, _exchanges(CELLS_EVERY))
    learned = engine.learning.learn_cells()
    assert engine.memory.cell_rule == rule.key() == engine.memory.current().cell_rule
    assert engine.memory.cell_gates_for(rule) is not None
    assert engine.learning.learn_cells() is None  # nothing new since

    stale = np.full(N_LAYER, 0.5, np.float32)
    engine.memory.commit(replace(engine.memory.current(), cell_gates=stale, cell_rule=None))
    assert engine.memory.cell_gates_for(rule) is None  # what the chat reads with
    again = engine.learning.learn_cells()
    assert again is not None and again.parent_id != learned.id
    assert again.metrics["cells"]["own_cases"] == learned.metrics["cells"]["own_cases"]
    relearned = engine.memory.cell_gates_for(rule)
    assert relearned is not None and not np.array_equal(relearned, stale)
