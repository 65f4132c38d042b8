"""Working-memory cells: the update/read rule, constant work per step, isolation, on/off/reset."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from engine import llama_native
from engine.cells import (
    QUERY_TOKENS,
    Baseline,
    CellRule,
    Cells,
    CellsRefused,
    CellWriter,
    calibration_turns,
)
from engine.engine import Engine
from engine.errors import OtherProfile
from engine.overlay import SparseOverlay
from engine.prompt import Turn
from engine.runtime import Runtime, Sampling
from tests.tiny_gguf import N_EMBD, N_FF, N_LAYER, write_tiny_model

RULE = CellRule(layers=(1, 2), probe_layer=1, decay=0.5)


def _cells() -> Cells:
    return Cells.empty(RULE, N_LAYER, N_EMBD, "sha")


def _states(*rows: float) -> np.ndarray:
    """(2 layers, len(rows) tokens, N_EMBD): token i is rows[i] on every coordinate."""
    return np.broadcast_to(np.array(rows, np.float32)[None, :, None], (2, len(rows), N_EMBD)).copy()


def test_write_folds_turns_in_with_decay_as_a_token_weighted_mean():
    cells = _cells()
    cells.write(_states(1.0, 3.0), RULE.decay)  # turn 1: mean 2, two tokens
    cells.write(_states(6.0), RULE.decay)  # turn 2: one token
    assert cells.folded == 2 and cells.count == pytest.approx(0.5 * 2 + 1)
    np.testing.assert_allclose(cells.sums / cells.count, (0.5 * 4 + 6) / 2)


def _baseline() -> Baseline:
    mean = np.zeros((2, N_EMBD), np.float32)
    mean[:, 0] = 10.0
    return Baseline(mean, np.array([4.0, 8.0], np.float32))


def test_read_is_each_gate_times_the_centred_mean_rescaled_to_the_median_norm():
    cells = _cells()
    cells.write(_states(2.0, 4.0), RULE.decay)
    baseline = _baseline()
    gates = np.array([0.0, 0.5, -0.25, 0.0], np.float32)
    vectors = cells.read(gates, baseline)
    assert vectors.shape == (N_LAYER, N_EMBD)
    assert not vectors[0].any() and not vectors[3].any()  # only the cell layers
    np.testing.assert_allclose(np.linalg.norm(vectors[[1, 2]], axis=1), [0.5 * 4, 0.25 * 8],
                               rtol=1e-5)
    direction = np.full(N_EMBD, 3.0)
    direction[0] -= 10.0
    np.testing.assert_allclose(vectors[1] / np.linalg.norm(vectors[1]),
                               direction / np.linalg.norm(direction), rtol=1e-5)
    # same direction, gate −½·8 = −(½·4)
    np.testing.assert_allclose(vectors[2], -vectors[1], rtol=1e-5)
    assert cells.magnitudes(gates, baseline) == pytest.approx([0.0, 2.0, 2.0, 0.0])
    # nothing to read: no cells, no learned gates, all-zero gates, gates for another model
    assert _cells().read(gates, baseline) is None
    assert cells.read(None, baseline) is None and cells.read(np.zeros(N_LAYER), baseline) is None
    assert cells.read(np.ones(N_LAYER + 1), baseline) is None
    assert cells.magnitudes(None, baseline) == [0.0] * N_LAYER


def test_relevance_is_the_cosine_of_turn_and_cell_at_the_probe_layer_after_centring():
    cells = _cells()
    cells.write(_states(2.0, 4.0), RULE.decay)  # mean 3 everywhere
    baseline = _baseline()
    same = np.full(N_EMBD, 3.0, np.float32)
    assert cells.relevance(same, RULE, baseline) == pytest.approx(1.0)
    opposite = 2 * baseline.mean[0] - same  # centred: the cell's direction reversed
    assert cells.relevance(opposite, RULE, baseline) == pytest.approx(-1.0)
    orthogonal = baseline.mean[0].copy()
    orthogonal[1] += 10.0 * 3
    orthogonal[2] -= 10.0 * 3
    assert cells.relevance(orthogonal, RULE, baseline) == pytest.approx(0.0, abs=1e-6)


def test_cells_round_trip_through_bytes_and_refuse_what_they_cannot_use():
    cells = _cells()
    cells.write(_states(1.0, 2.0), RULE.decay)
    back = Cells.from_bytes(cells.to_bytes(), "sha", RULE)
    assert (back.folded, back.count, back.layers) == (1, cells.count, (1, 2))
    np.testing.assert_array_equal(back.sums, cells.sums)
    with pytest.raises(CellsRefused, match="another model"):
        Cells.from_bytes(cells.to_bytes(), "other", RULE)
    with pytest.raises(CellsRefused, match="another cell rule"):
        Cells.from_bytes(cells.to_bytes(), "sha", CellRule(layers=(2,), probe_layer=2))
    with pytest.raises(CellsRefused, match="damaged"):
        Cells.from_bytes(cells.to_bytes()[:-7], "sha", RULE)


def test_turns_are_written_one_by_one_after_their_context(tiny_model):
    runtime = Runtime(tiny_model, n_ctx=256)
    writer = CellWriter(runtime, RULE)
    turns = [Turn("user", f"the cat {i} was in the town") for i in range(8)]
    together, first, apart, alone = _cells(), _cells(), _cells(), _cells()
    writer.fold(together, turns, 0, 6)
    writer.fold(first, turns, 0, 3)
    writer.fold(apart, turns, 0, 3)
    writer.fold(apart, turns, 3, 6)  # turns 0-2 are read again as context, not written
    assert together.folded == apart.folded == 6 and together.count == apart.count
    np.testing.assert_allclose(together.sums, apart.sums, rtol=1e-3, atol=1e-2)
    writer.fold(alone, turns[3:], 0, 3)  # the same three turns without their context
    assert not np.allclose(alone.sums, apart.sums - RULE.decay ** 3 * first.sums, rtol=1e-2)
    writer.close()
    runtime.close()


# -- in the model's prompt format ----------------------------------------------------------


def _reading(writer: CellWriter, monkeypatch) -> list[list[int]]:
    """Record what ``writer`` reads; each token's "hidden state" is its position (the rows a
    turn is written from are then known by value)."""
    read: list[list[int]] = []

    def states(tokens: list[int]) -> np.ndarray:
        read.append(tokens)
        rows = np.arange(1, len(tokens), dtype=np.float32)
        return np.broadcast_to(rows[None, :, None], (2, len(rows), N_EMBD)).copy()

    monkeypatch.setattr(writer, "states", states)
    return read


def _written_rows(monkeypatch) -> list[list[int]]:
    """The token positions of each turn written into any cells from now on."""
    rows: list[list[int]] = []
    write = Cells.write
    monkeypatch.setattr(Cells, "write", lambda self, states, decay: (
        rows.append(states[0, :, 0].astype(int).tolist()), write(self, states, decay)))
    return rows


TURNS = [Turn("user" if i % 2 == 0 else "assistant",
              f"  the cat {i} was in the town.\nIt was {i}! " if i % 3 else f"hello {i}")
         for i in range(10)]


def test_a_plain_dialogue_model_s_cells_read_the_tokens_they_always_have(runtime, monkeypatch,
                                                                         tmp_path):
    """Without a chat template (the built-in model), what the cells read is what they read
    before they followed the model's prompt format, token for token: cells saved by then,
    their baselines cached and the figures measured on them stay valid."""
    monkeypatch.setenv("ENGRAM_CACHE", str(tmp_path))  # no made-up baseline in the shared one
    llm = runtime.llm
    writer = CellWriter(runtime, RULE)
    read, rows = _reading(writer, monkeypatch), _written_rows(monkeypatch)

    def tokens(text: str, bos: bool = False) -> list[int]:
        return llm.tokenize(text.encode(), add_bos=bos, special=False)

    writer.fold(_cells(), TURNS, 6, 9)  # read after turns 2 to 5, as they always were:
    before, spans = [llm.token_bos()], []
    for i in range(2, 9):
        speaker = "User" if TURNS[i].role == "user" else "Assistant"
        line = tokens(f"{'' if i == 2 else chr(10)}{speaker}: {TURNS[i].content.strip()}")
        if i >= 6:
            spans.append(list(range(len(before), len(before) + len(line))))
        before += line
    assert read == [before] and rows == spans

    long = "the cat was in the town " * 80
    writer.query(f" {long} ")
    assert read[-1] == tokens(f"User: {long.strip()}", bos=True)[:QUERY_TOKENS] != tokens(
        f"User: {long.strip()}", bos=True)

    read.clear()
    writer.baseline()
    assert read == [tokens(f"{'User' if turn.role == 'user' else 'Assistant'}: {turn.content}",
                           bos=True) for turn in calibration_turns()]
    assert CellRule(layers=(1, 2), probe_layer=1).key() == "[1, [1, 2]]"  # as saved


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A tiny Llama 3: its chat template, and a bos."""
    rt = Runtime(write_tiny_model(tmp_path_factory.mktemp("llama") / "llama.gguf", "llama"),
                 n_ctx=256, n_threads=1)
    yield rt
    rt.close()


def test_a_chat_template_s_turns_are_written_as_the_chat_s_prompt_holds_them(llama,
                                                                             monkeypatch):
    writer = CellWriter(llama, RULE)
    read, rows = _reading(writer, monkeypatch), _written_rows(monkeypatch)
    turns = [Turn(t.role, t.content.strip()) for t in TURNS]  # as the store keeps them
    writer.fold(_cells(), turns, 6, 9)
    [tokens] = read
    assert llama.prompt(None, turns[2:])[:len(tokens)] == tokens  # the chat's, from turn 2

    def text(positions: list[int]) -> str:
        return llama.llm.detokenize([tokens[p] for p in positions], special=True).decode()

    assert [text(positions) for positions in rows] == [
        f"<|start_header_id|>{t.role}<|end_header_id|>\n\n{t.content}<|eot_id|>"
        for t in turns[6:9]]
    assert rows[0][0] > 1 and rows[-1][-1] == len(tokens) - 1  # after the context, to the end

    writer.query(" What is my cat called? ")
    assert llama.llm.detokenize(read[-1], special=True).decode() == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is my cat called?"
        "<|eot_id|>")


def test_cells_a_template_model_saved_in_the_plain_dialogue_are_refused(llama, runtime):
    """Before cells followed the model's prompt format they were written in the plain
    dialogue whatever the model: a chat template model's are another rule's; a plain
    dialogue model's still read."""
    template, plain = CellWriter(llama, RULE).rule, CellWriter(runtime, RULE).rule
    assert template.chat_template and not plain.chat_template
    saved = Cells.empty(RULE.resolve(N_LAYER), N_LAYER, N_EMBD, "sha")  # as cells were saved
    saved.write(_states(1.0), RULE.decay)
    assert Cells.from_bytes(saved.to_bytes(), "sha", plain).count == 1.0
    with pytest.raises(CellsRefused, match="another cell rule"):
        Cells.from_bytes(saved.to_bytes(), "sha", template)
    assert template.key() != plain.key()  # and the baselines are cached apart


# Gemma's: a dialogue must alternate, the user first
ALTERNATING = (
    "{{ bos_token }}{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant') }}"
    "{% endif %}{{ '<start_of_turn>' + m['role'] + '\n' + m['content'] + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>assistant\n' }}{% endif %}")


def test_a_template_that_has_the_user_speak_first_still_gets_its_baseline(tmp_path, monkeypatch):
    """An assistant's calibration turn is read after its user's turn there, not alone."""
    monkeypatch.setenv("ENGRAM_CACHE", str(tmp_path))
    rt = Runtime(write_tiny_model(tmp_path / "gemma-it.gguf", chat_template=ALTERNATING),
                 n_ctx=256, n_threads=1)
    writer = CellWriter(rt, RULE)
    read = _reading(writer, monkeypatch)
    baseline = writer.baseline()
    turns, positions = calibration_turns(), []
    for i in range(0, len(turns), 2):
        alone, _ = rt.turn_spans(turns[i: i + 1])
        after, spans = rt.turn_spans(turns[i: i + 2])
        assert read[i: i + 2] == [alone, after]  # the assistant's turn after the user's
        positions += list(range(1, len(alone))) + list(range(*spans[1]))  # and only its own
    assert len(read) == len(turns)
    np.testing.assert_allclose(baseline.mean, np.mean(positions), rtol=1e-5)
    rt.close()


def test_rule_layers_default_to_all_the_control_vector_reaches_and_must_be_usable():
    assert CellRule().resolve(18).layers == tuple(range(1, 17))
    assert CellRule().resolve(18).probe_layer == 15
    assert CellRule().resolve(N_LAYER).layers == (1, 2)
    with pytest.raises(ValueError):
        CellRule(layers=(N_LAYER - 1,)).resolve(N_LAYER)
    with pytest.raises(ValueError, match="probe layer"):
        CellRule(layers=(2,), probe_layer=1).resolve(N_LAYER)


@pytest.fixture(scope="module")
def runtime(tiny_model):
    rt = Runtime(tiny_model, n_ctx=256)
    yield rt
    rt.close()


def test_capture_reads_layer_outputs_without_touching_the_chat_context(runtime):
    tokens = runtime.tokenize("the cat was in the town")

    def next_logits(between) -> np.ndarray:
        runtime.invalidate_cache()
        runtime.llm.eval(tokens[:-1])
        between()
        runtime.llm.eval(tokens[-1:])
        return llama_native.last_logits(runtime.llm)

    capture = llama_native.HiddenStates(runtime.llm, [1, 2], n_ctx=4)  # windows of 4 tokens
    rows = {}
    with_capture = next_logits(lambda: rows.update(capture(tokens)))
    capture.close()
    assert sorted(rows) == [1, 2] and rows[1].shape == (len(tokens), N_EMBD)
    assert not np.allclose(rows[1], rows[2])
    np.testing.assert_array_equal(with_capture, next_logits(lambda: None))


def test_control_vector_changes_logits_and_clearing_it_is_exact(runtime):
    tokens = runtime.tokenize("the cat was in the town")

    def logits() -> np.ndarray:
        runtime.invalidate_cache()
        runtime.llm.eval(tokens)
        return llama_native.last_logits(runtime.llm)

    base = logits()
    vectors = np.zeros((N_LAYER, N_EMBD), np.float32)
    vectors[2] = 0.5
    runtime.set_cells(vectors)
    assert runtime.cells_digest and not np.array_equal(logits(), base)
    runtime.set_cells(None)
    np.testing.assert_array_equal(logits(), base)


# -- in sessions -------------------------------------------------------------------------------


@pytest.fixture
def engine(tmp_path, tiny_model):
    engine = Engine(home=tmp_path / "home", model=tiny_model, n_ctx=256)
    engine.load()
    yield engine
    engine.close()


def _learned_read(engine: Engine, gate: float = 0.5, tau: float = -1.0) -> None:
    """A memory version that carries learned gates (as ``Learning.learn_cells`` commits them);
    ``tau`` −1 opens the turn gate for every message."""
    gates = np.zeros(N_LAYER, np.float32)
    gates[list(engine.states.rule.layers)] = gate
    engine.memory.commit(SparseOverlay([], engine.runtime.model.sha256, d_model=N_EMBD,
                                       d_ff=N_FF, cell_gates=gates,
                                       cell_rule=engine.states.rule.key()))
    engine.states.rule = replace(engine.states.rule, tau=tau)


def _long_session(engine: Engine, turns: int) -> int:
    """A session of ``turns`` exchanges, cells on."""
    session = engine.new_session()
    engine.set_cells_enabled(session.id, True)
    for i in range(turns):
        engine.store.add_message(session.id, "user", f"the cat {i} was in the town")
        engine.store.add_message(session.id, "assistant", "hello")
    return session.id


def _spy(engine: Engine) -> dict:
    seen = {"cells": [], "captured": 0}
    set_cells, fold = engine.runtime.set_cells, engine.states.writer.fold

    def recording_set(vectors):
        seen["cells"].append(None if vectors is None else vectors.shape)
        set_cells(vectors)

    def counting(cells, turns, start, end):
        seen["captured"] += end - start
        return fold(cells, turns, start, end)

    engine.runtime.set_cells = recording_set
    engine.states.writer.fold = counting
    return seen


def test_a_step_costs_the_same_with_1_or_100_past_turns(engine):
    """One fixed-size vector, no extra prompt tokens; only newly dropped turns are read."""
    _learned_read(engine)
    seen = _spy(engine)
    stats = {}
    for n in (1, 100):
        session_id = _long_session(engine, n)
        for enabled in (False, True):
            engine.set_cells_enabled(session_id, enabled)
            reply = engine.conversation(session_id).send("hello", Sampling.greedy(4))
            list(reply)
            stats[n, enabled] = reply.stats
            engine.store.delete_message(engine.store.messages(session_id)[-1].id)
            engine.store.delete_message(engine.store.messages(session_id)[-1].id)
    assert stats[1, True].prompt_tokens == stats[1, False].prompt_tokens
    assert stats[100, True].prompt_tokens == stats[100, False].prompt_tokens
    assert stats[100, True].dropped_turns > 150
    assert seen["cells"][-1] == (N_LAYER, N_EMBD)  # the 100-turn session: one vector per layer
    captured = seen["captured"]
    list(engine.conversation(engine.sessions()[0].id).send("and then", Sampling.greedy(4)))
    assert seen["captured"] - captured <= 4  # the turns that just left, not the history


def test_cells_are_on_by_default_and_cost_nothing_while_a_session_fits(engine):
    session = engine.new_session()
    seen = _spy(engine)
    list(engine.conversation(session.id).send("hello", Sampling.greedy(4)))
    assert engine.memory_status(session.id).cells_enabled
    assert seen["captured"] == 0 and seen["cells"][-1] is None


def test_nothing_is_read_without_learned_gates_or_for_an_unrelated_turn(engine):
    session_id = _long_session(engine, 40)
    seen = _spy(engine)
    list(engine.conversation(session_id).send("hello", Sampling.greedy(4)))
    assert seen["captured"] > 0 and seen["cells"][-1] is None  # written, not read
    assert engine.memory_status(session_id).cell_magnitudes == [0.0] * N_LAYER
    _learned_read(engine, tau=1.0)  # no message can be that close to the cells
    list(engine.conversation(session_id).send("the cat 3 was in the town", Sampling.greedy(4)))
    assert seen["cells"][-1] is None
    engine.states.rule = replace(engine.states.rule, tau=-1.0)
    list(engine.conversation(session_id).send("the cat 3 was in the town", Sampling.greedy(4)))
    assert seen["cells"][-1] == (N_LAYER, N_EMBD)
    engine.memory.rollback()  # the version without gates: nothing is read again
    list(engine.conversation(session_id).send("the cat 3 was in the town", Sampling.greedy(4)))
    assert seen["cells"][-1] is None


def test_cells_stay_with_their_session(engine, tmp_path, tiny_model):
    _learned_read(engine)
    long_id = _long_session(engine, 40)
    short_id = _long_session(engine, 1)
    seen = _spy(engine)
    list(engine.conversation(long_id).send("hello", Sampling.greedy(4)))
    assert seen["cells"][-1] is not None
    list(engine.conversation(short_id).send("hello", Sampling.greedy(4)))
    assert seen["cells"][-1] is None and engine.runtime.cells_digest == ""
    status = engine.memory_status(long_id)
    assert status.cells_enabled and len(status.cell_magnitudes) == N_LAYER
    assert status.cell_magnitudes[1] > 0 and status.cell_magnitudes[0] == 0
    assert engine.memory_status(short_id).cell_magnitudes == []

    other = Engine(home=tmp_path / "home", profile="other", model=tiny_model, n_ctx=256)
    for action in (lambda: other.set_cells_enabled(long_id, False),
                   lambda: other.reset_cells(long_id), lambda: other.memory_status(long_id)):
        with pytest.raises(OtherProfile):
            action()
    other.close()


def test_cells_are_saved_with_the_session_and_can_be_reset_or_turned_off(engine, tmp_path,
                                                                         tiny_model):
    _learned_read(engine)
    session_id = _long_session(engine, 40)
    list(engine.conversation(session_id).send("hello", Sampling.greedy(4)))
    magnitudes = engine.memory_status(session_id).cell_magnitudes
    engine.close()

    again = Engine(home=tmp_path / "home", model=tiny_model, n_ctx=256)
    assert again.memory_status(session_id).cells_enabled  # without the model
    again.load()
    assert again.memory_status(session_id).cell_magnitudes == pytest.approx(magnitudes)
    seen = _spy(again)
    again.set_cells_enabled(session_id, False)
    list(again.conversation(session_id).send("hello", Sampling.greedy(4)))
    assert seen["cells"][-1] is None and seen["captured"] == 0
    assert not again.memory_status(session_id).cells_enabled
    again.set_cells_enabled(session_id, True)
    again.reset_cells(session_id)
    assert again.memory_status(session_id).cell_magnitudes == []
    list(again.conversation(session_id).send("hello", Sampling.greedy(4)))
    assert seen["captured"] <= 4  # reset empties the cells; it does not re-read old turns
    again.close()
