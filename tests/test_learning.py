"""Learning end to end on the tiny model: pending sessions, the locality gate, corrections,
forgetting, pausing, the background queue and cancelling.

The tiny model is random, so nothing here checks what it learns, only what the app does with
it. ``derive`` is replaced by a reader of ``question|…|answer`` turns (the real one needs a
model that follows its few-shot prompt); the recipe trains 4 neurons in layers 1 and 2.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from engine import derive, learner, runtime
from engine.consistency import TwinKinds, twin_neighbours
from engine.derive import QA
from engine.engine import Engine
from engine.errors import EngramError, NotEnoughMemory
from engine.learn_queue import LearnQueue
from engine.learner import train
from engine.learner.locality import Locality
from engine.learning import Step
from engine.learning.anchors import anchors_for, twin_for
from engine.learning.corrections import corrections, same_question
from engine.learning.texts import dialogue, end_of_turn
from engine.overlay import NeuronBlock, SparseOverlay, blocks_without
from engine.prompt import Turn
from engine.runtime import Sampling
from engine.scoring import Scorer, log_softmax
from store import paths
from tests.tiny_gguf import ARCHITECTURES


def qa_turns(turns: list[str], kind_of=None) -> list[QA]:
    """``"Where do I live?|Which town do I live in?|Tromsø"``: questions, then their answer;
    a plain statement ``"My cat is Pixel."`` asks about its last word."""
    pairs = []
    for turn in turns:
        *questions, answer = turn.split("|") if "|" in turn else [
            turn.rsplit(" ", 1)[0] + "?", turn.rsplit(" ", 1)[-1].rstrip(".")]
        pairs += [QA(q, answer, turn) for q in questions]
    return pairs


@pytest.fixture
def small(monkeypatch):
    """A two-layer, three-step recipe, the ``question|answer`` reader as the derivation (the
    random tiny model's own check would keep arbitrary pairs: it is tested on its own), and
    one thread per llama.cpp context (on a tiny model more threads only wait for each other)."""
    monkeypatch.setattr(learner, "Recipe", functools.partial(
        learner.Recipe, layers=(1, 2), neurons=4, steps=3))
    monkeypatch.setattr(derive, "candidates", qa_turns)
    monkeypatch.setattr(derive, "checked", lambda pairs, prefers: pairs)
    monkeypatch.setattr(runtime, "default_threads", lambda: 1)


@pytest.fixture
def engine(small, tiny_model, engine_home):
    e = Engine(home=engine_home, model=tiny_model, n_ctx=512)
    e.load()
    e.save_settings(e.settings.with_gate(0.0))
    yield e
    e.close()


def said(engine: Engine, *turns: str, private: bool = False) -> int:
    """A session in which the user said these turns (no replies needed to learn)."""
    session = engine.new_session(private=private)
    for turn in turns:
        engine.store.add_message(session.id, "user", turn)
    return session.id


def gate_threshold(engine: Engine, threshold: float) -> None:
    engine.settings = engine.settings.with_gate(threshold)


def test_pending_skips_private_empty_and_learned_sessions(engine):
    learned = said(engine, "What is my cat called?|Pixel")
    private = said(engine, "What is my secret?|Moon", private=True)
    engine.new_session()  # nothing said
    waiting = said(engine, "Who is my manager?|Berit")
    [result] = engine.learn_now(session_ids=[learned])
    assert result.accepted and result.version.sessions == [learned]
    assert [s.id for s in engine.pending_sessions()] == [waiting]

    engine.store.add_message(learned, "user", "What is my dog called?|Rex")
    assert [s.id for s in engine.pending_sessions()] == [learned, waiting]
    with pytest.raises(EngramError, match="private"):
        engine.learn_now(session_ids=[private])


def test_the_gate_rejects_and_keeps_the_previous_version_active(engine):
    first = said(engine, "What is my cat called?|Pixel")
    second = said(engine, "Who is my manager?|Berit")
    [ok] = engine.learn_now(session_ids=[first])
    assert ok.accepted and ok.locality.locality >= 0.0 and engine.memory.applied == ok.version

    gate_threshold(engine, 1.01)  # nothing can keep more than all of its answers
    engine.store.add_message(first, "user", "What is my dog called?|Rex")
    results = engine.learn_now()
    assert [r.session_id for r in results] == [first, second]
    for rejected in results:
        assert not rejected.accepted and rejected.version.status == "rejected"
        assert "< 1.01" in rejected.version.reason
    assert engine.memory.applied.id == ok.version.id
    assert engine.active_version().id == ok.version.id
    assert engine.pending_sessions() == []  # a rejection is a decision too: not retried


@pytest.mark.parametrize("tiny_model", ARCHITECTURES, indirect=True)
def test_rejected_versions_and_the_accepted_one_keep_scores_and_facts(engine):
    """The whole job on each architecture: derive, train, gate, export and hot-swap."""
    sid = said(engine, "What is my cat called?|What is the name of my pet?|Pixel")
    steps: list[tuple[float, str]] = []
    [result] = engine.learn_now(lambda fraction, message: steps.append((fraction, message)))
    assert result.accepted and engine.memory.applied == result.version
    assert engine.runtime._adapter is not None
    # every step names its phase, in the job's order, each phase running 0 → 1 of its own
    phases = [m.phase for _, m in steps if isinstance(m, Step)]
    assert len(phases) == len(steps)
    assert phases[0] == "deriving" and phases[-1] == "gate"
    assert phases.index("deriving") < phases.index("training") < phases.index("gate")
    assert all(0 <= m.done <= 1 for _, m in steps) and steps[-1][1].done == 1.0
    assert [f for f, _ in steps] == sorted(f for f, _ in steps) and steps[-1][0] == 1.0
    record = result.version.learned[sid]
    assert record["facts"] == [["What is my cat called?", "Pixel", record["facts"][0][2]],
                               ["What is the name of my pet?", "Pixel", record["facts"][0][2]]]
    assert record["train"]["steps"] >= 1 and record["seconds"] > 0
    assert record["train"]["stopped"] in ("learned", "step cap")  # why it stopped
    assert {"locality", "kl_neutral", "threshold"} <= set(result.version.metrics)
    assert result.locality.kl_neutral >= 0.0


def test_sessions_own_disjoint_neurons_and_forget_removes_exactly_one(engine):
    first = said(engine, "What is my cat called?|Pixel")
    second = said(engine, "Who is my manager?|Berit")
    engine.learn_now()
    both = engine.memory.current()
    neurons = {sid: {(b.layer, n) for b in both.blocks if b.session_id == sid for n in b.neurons}
               for sid in (first, second)}
    assert neurons[first] and neurons[second] and not neurons[first] & neurons[second]

    version = engine.forget_session(first)
    after = engine.memory.current()
    assert engine.memory.applied == version and version.sessions == [second]
    kept = [b for b in both.blocks if b.session_id == second]
    assert len(after.blocks) == len(kept)
    for a, b in zip(after.blocks, kept, strict=True):
        assert (a.layer, a.matrix) == (b.layer, b.matrix)
        assert np.array_equal(a.neurons, b.neurons) and np.array_equal(a.delta, b.delta)
    assert engine.pending_sessions() == []  # forgotten is not learned again …
    engine.store.add_message(first, "user", "What is my dog called?|Rex")
    assert [s.id for s in engine.pending_sessions()] == [first]  # … unless it goes on
    with pytest.raises(EngramError, match="not in the active memory"):
        engine.forget_session(12345)


def test_reset_empties_the_memory_and_rollback_undoes_it(engine):
    said(engine, "What is my cat called?|Pixel")
    [learned] = engine.learn_now()
    said(engine, "Who is my manager?|Berit")  # pending, dropped by the reset
    reset = engine.reset_memory()
    assert engine.memory.current().blocks == [] and engine.pending_sessions() == []
    assert engine.memory.applied == reset and reset.metrics["event"] == "reset"
    assert engine.rollback_memory().id == learned.version.id


def test_corrections_retarget_the_earlier_phrasings(engine):
    old = said(engine, "Where do I live?|Which town do I live in?|Tromsø",
               "What is my cat called?|Pixel")
    engine.learn_now()
    new = said(engine, "Where do I live now?|Bergen")
    [result] = engine.learn_now()
    assert {(qa.question, qa.answer) for qa in result.corrections} == {
        ("Where do I live?", "Bergen"), ("Which town do I live in?", "Bergen")}
    record = result.version.learned[new]
    assert [row[:2] for row in record["corrections"]] == [["Where do I live?", "Bergen"],
                                                          ["Which town do I live in?", "Bergen"]]
    assert result.version.sessions == [old, new]


def test_nearly_the_same_question():
    assert same_question("Where do I live now?", "Where do I live?")
    assert same_question("Which town do I live in?", "Which town do I live in now?")
    assert not same_question("Where did I move to?", "When did I move?")
    assert not same_question("What is my sister's name?", "What is my brother's name?")
    assert not same_question("What is my name?", "What is my cat's name?")
    # nothing but a question word in common says nothing about what is asked
    assert not same_question("What am I?", "What do I need?")
    assert not same_question("What did we go with?", "What am I?")
    # not a new name for me
    assert not same_question("What's my name?", "What is my manager's name?")
    assert not same_question("I need a name for what?", "What is my name?")
    assert same_question("What do I need a name for?", "I need a name for what?")
    earlier = [(1, QA("What is my cat called?", "Pixel", "cat")),
               (1, QA("What's the name of my pet?", "Pixel", "cat"))]
    assert corrections([QA("What is my cat called?", "Pixel", "again")], earlier) == []
    fixed = corrections([QA("What is my cat called?", "Mochi", "new cat")], earlier)
    assert [(q.question, q.answer) for q in fixed] == [("What's the name of my pet?", "Mochi")]


def test_pause_and_resume_are_saved_per_profile(engine, tiny_model, engine_home):
    session = said(engine, "What is my cat called?|Pixel")
    engine.pause_learning()
    assert not engine.schedule_learning(session)
    assert engine.memory_status().learning_paused
    with pytest.raises(EngramError, match="paused"):
        engine.learn_now()
    other = Engine(home=engine_home, model=tiny_model)
    assert other.settings.learning_paused and other.pending_sessions()[0].id == session
    other.close()
    engine.pause_learning(False)
    assert engine.schedule_learning(session, delay=60)
    private = said(engine, "What is my secret?|Moon", private=True)
    assert not engine.schedule_learning(private)


def test_a_reply_schedules_background_learning_that_reports_progress(engine):
    session = engine.new_session()
    conversation = engine.conversation(session)
    for _ in conversation.send("What is my cat called?|Pixel", Sampling.greedy(4)):
        pass
    state = engine.learn_queue.state()
    assert state.scheduled and not state.running  # debounced: waits for quiet

    seen = []
    engine.schedule_learning(delay=0)
    while not engine.learn_queue.wait_idle(timeout=0.01):
        seen.append(engine.memory_status())
    assert any(s.learning and s.learning_progress is not None for s in seen)
    status = engine.memory_status()
    assert not status.learning and status.overlay_active
    assert status.learning_message.startswith(f"memory updated: v{status.overlay_version}")


def test_cancelling_keeps_the_previous_version(engine):
    said(engine, "What is my cat called?|Pixel")
    [first] = engine.learn_now()
    second = said(engine, "Who is my manager?|Berit")
    cancel = threading.Event()

    def cancel_at_first_step(fraction: float, message: str) -> None:
        if "step 1" in message:
            cancel.set()

    with pytest.raises(InterruptedError):
        engine.learn_now(cancel_at_first_step, cancel)
    assert engine.memory.applied == first.version
    assert len(engine.memory.versions()) == 1
    assert [s.id for s in engine.pending_sessions()] == [second]


def test_the_queue_debounces_fans_in_and_cancels():
    runs, started, release = [], threading.Event(), threading.Event()

    def job(progress, cancel):
        runs.append(time.monotonic())
        progress(0.5, "half way")
        started.set()
        while not release.is_set():
            if cancel.is_set():
                raise InterruptedError
            time.sleep(0.005)
        return f"run {len(runs)}"

    queue = LearnQueue(job, debounce=0.05)
    try:
        for _ in range(5):  # a burst of requests: one job
            queue.schedule()
        started.wait(2)
        assert queue.state().running and queue.state().progress == 0.5
        queue.schedule(delay=0)  # asked while running: one more job afterwards
        release.set()
        assert queue.wait_idle(timeout=2)
        assert len(runs) == 2 and queue.state().message == "run 2"

        release.clear()
        started.clear()
        queue.schedule(delay=0)
        started.wait(2)
        queue.cancel(wait=True)
        state = queue.state()
        assert not state.running and "cancelled" in state.message and len(runs) == 3
    finally:
        release.set()
        queue.close()


def test_closing_does_not_wait_for_a_job_that_cannot_be_interrupted():
    started, release = threading.Event(), threading.Event()

    def job(progress, cancel):  # e.g. loading the training model: deaf to cancel
        started.set()
        release.wait(10)
        return "done"

    queue = LearnQueue(job, debounce=0)
    queue.schedule()
    started.wait(2)
    began = time.monotonic()
    assert queue.close(timeout=0.2) is False
    assert time.monotonic() - began < 1.0
    release.set()


def test_a_failing_job_reports_and_the_queue_goes_on():
    def job(progress, cancel):
        raise EngramError("the model is gone")

    queue = LearnQueue(job, debounce=0)
    try:
        queue.schedule()
        assert queue.wait_idle(timeout=2)
        assert queue.state().message == "learning stopped: the model is gone"
    finally:
        queue.close()


def greedy_in_twin(twin, tokens: list[int], n: int, eos: int) -> list[int]:
    """Up to ``n`` tokens, as ``Scorer.greedy`` decodes (stopping before the eos)."""
    out = list(tokens)
    while len(out) < len(tokens) + n:
        out.append(int(twin.full_logits([out])[0][-1].argmax()))
        if out[-1] == eos:
            return out[len(tokens):-1]
    return out[len(tokens):]


@pytest.mark.parametrize("tiny_model", ARCHITECTURES, indirect=True)
def test_the_twin_computes_with_an_overlay_and_is_restored_exactly(engine, make_overlay):
    twin = twin_for(engine.runtime)
    tokens = engine.runtime.prompt(None, [Turn("user", "the cat had a name")])
    before = twin.full_logits([tokens])[0]
    overlay = make_overlay(engine.runtime.model.sha256,
                           [(1, "ffn_down", 4, 1), (2, "ffn_up", 3, 1), (3, "ffn_down", 64, 1)],
                           magnitude=2.0)
    with twin.overlaid(overlay):
        changed = twin.full_logits([tokens])[0]
        answer = greedy_in_twin(twin, tokens, 8, engine.runtime.llm.token_eos())
    assert not torch.equal(before, changed)
    assert torch.equal(before, twin.full_logits([tokens])[0])

    # What the twin computes with the overlay is what llama.cpp computes with its LoRA,
    # down to the greedy answer (a random Gemma 3 only echoes its last token, overlay or not).
    engine.memory.commit(overlay)
    gate = engine.learning.gate()
    lora = engine.memory.lora(engine.memory.applied)
    gate.scorer.set_overlay(*lora)
    served = gate.scorer.logits(tokens)
    served_answer = gate.scorer.greedy(tokens, 8, [])[0]
    gate.scorer.set_overlay(None)
    print(f"{engine.runtime.model.architecture}: with the overlay {served_answer!r}")
    assert (served.argmax(-1) == changed.numpy().argmax(-1)).mean() == 1.0
    assert served_answer == engine.runtime.detokenize(answer)


@pytest.mark.parametrize("tiny_model", ARCHITECTURES, indirect=True)
def test_a_batch_that_continues_a_shared_prefix_computes_what_the_whole_sequences_do(engine):
    """The learner runs the system prompt once and each step only the examples' own tokens."""
    twin = twin_for(engine.runtime)
    sequences = [engine.runtime.tokenize(f"the cat had a name {tail}")
                 for tail in ("Pixel", "and a very long tail")]
    shared = train._shared_prefix(sequences, limit=100)
    assert 0 < shared < min(map(len, sequences))
    whole = twin.full_logits(sequences)
    batch = twin.batch([s[shared:] for s in sequences], twin.prefix(sequences[0][:shared]))
    with torch.no_grad():
        h = twin.run(twin.embed(batch), batch)
    for i, n in enumerate(batch.lengths):
        assert torch.allclose(twin.logits(h[i, :n]), whole[i][shared:], atol=1e-4)


def test_the_locality_term_is_the_energy_of_the_edit_s_change(engine):
    """``change_energy`` works in neuron space; it must equal the mean squared norm of the
    change the edit makes to the FFN output."""
    twin = twin_for(engine.runtime)
    edit = learner.NeuronEdit(twin, 1, torch.tensor([0, 3, 5]), max_norm=1.0)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in edit.parameters():
            p.normal_(std=0.1)
    x = torch.randn(50, twin.config.hidden_size)
    energy = edit.change_energy(x, edit.activation(x, edited=False))
    assert torch.allclose(energy, edit.change(x).pow(2).sum(-1).mean(), rtol=1e-4)
    assert energy > 0


def test_the_locality_term_sets_aside_rows_far_below_firing_and_keeps_its_value(engine):
    """Rows where no new neuron's gate reaches ``below`` are computed once, not each step:
    the term keeps its value and its gradient, and computes only the other rows."""
    twin = twin_for(engine.runtime)
    edit = learner.NeuronEdit(twin, 1, torch.tensor([0, 3]), max_norm=1.0)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in edit.parameters():
            p.normal_(std=0.1)
    x = torch.randn(400, twin.config.hidden_size)
    with torch.no_grad():
        below = float((x @ (edit.w_gate + edit.gate).T).max(-1).values.median())  # half aside
    sets = [(x[:300], 1.0), (x[300:], 5.0)]
    whole = Locality(edit, sets, 2.0, float("-inf"))  # every row computed at each step
    pruned = Locality(edit, sets, 2.0, below)
    assert 0 < sum(len(r.live) for r in pruned.rows) < 400
    expected = sum(w * edit.change_energy(xs, edit.activation(xs, False)) for xs, w in sets) / 2
    for term in (whole, pruned):
        assert torch.allclose(term(), expected, rtol=1e-5)
    grads = []
    for term in (whole, pruned):
        edit.zero_grad()
        term().backward()
        grads.append(edit.up.grad.clone())
    # the rows set aside are below firing only by this test's ``below``: their gradient is
    # small, not zero, so the pruned one differs from the whole one but not by much
    assert torch.allclose(grads[0], grads[1], atol=0.2 * float(grads[0].abs().max()))


def test_prose_keeps_its_rows_in_the_locality_term_however_many_dialogues_there_are(engine):
    """Thousands of unrelated questions must not crowd plain text out of the sampled rows
    (when they did, the perplexity of prose rose 47 % while locality on questions held)."""
    twin, rt = twin_for(engine.runtime), engine.runtime
    prose = rt.tokenize("The river runs north through the old town to the sea.")
    questions = [rt.tokenize(f"Q: what is thing number {i}? A: it is {i}.") for i in range(40)]
    anchors = learner.anchors_for(twin, questions + [prose], (1,), max_rows=64,
                                  answer_starts=[len(q) - 4 for q in questions] + [None])
    assert anchors.inputs[1].shape[0] == 64 < len(prose) + sum(map(len, questions))
    rows = anchors.prose[1]
    assert rows.shape[0] == len(prose)
    with torch.no_grad():
        x = {}
        hook = twin.layers[1].mlp.register_forward_pre_hook(lambda m, a: x.setdefault(1, a[0]))
        try:
            twin.full_logits([prose])
        finally:
            hook.remove()
    prose_rows = x[1][0, : len(prose)]
    assert all(torch.isclose(rows, r, atol=1e-5).all(-1).any() for r in prose_rows)


def test_anchors_are_built_once_per_machine_and_read_back_exactly(engine, monkeypatch):
    """A new process reads the anchors from the cache instead of rebuilding them (minutes
    on CPU for the built-in model); the same texts give the same tensors."""
    from engine.learning import anchors as learning

    twin, rt, recipe = twin_for(engine.runtime), engine.runtime, learner.Recipe()
    monkeypatch.setattr(learning, "_anchors", {})
    built = anchors_for(twin, rt, "a system prompt", recipe)
    monkeypatch.setattr(learning, "_anchors", {})  # as in a new process
    monkeypatch.setattr(learner, "anchors_for", lambda *a, **k: pytest.fail("rebuilt"))
    read = anchors_for(twin, rt, "a system prompt", recipe)
    for name in ("inputs", "prose", "answers", "start", "activity", "out_energy"):
        for layer in recipe.layers:
            a, b = getattr(built, name)[layer], getattr(read, name)[layer]
            assert torch.equal(a, b) if name != "out_energy" else a == b


def test_states_below_the_edited_layers_are_reused_only_while_nothing_below_changes(
        engine, make_overlay):
    """The learner asks every earlier session's questions at each run; their states below
    the edited layers come from the twin's cache, but never once an overlay edits below."""
    twin, rt = twin_for(engine.runtime), engine.runtime
    prefix = twin.prefix(rt.tokenize("A system prompt."))
    questions = [rt.tokenize(q, add_bos=False)
                 for q in ("Who wrote Hamlet?", "Where is Oslo, the capital?")]

    def fresh(layer: int) -> list[torch.Tensor]:
        with torch.no_grad():
            out = []
            for q in questions:
                batch = twin.batch([q], prefix)
                out.append(twin.run(twin.embed(batch), batch, 0, layer)[0])
            return out

    kept = twin.entering(questions, 2, prefix)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(kept, fresh(2), strict=True))
    # read back
    assert all(a is b for a, b in zip(twin.entering(questions, 2, prefix), kept, strict=True))
    below = make_overlay(engine.runtime.model.sha256, [(0, "ffn_down", 8, 1)], magnitude=3.0)
    with twin.overlaid(below):
        edited = twin.entering(questions, 2, prefix)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(edited, fresh(2), strict=True))
        assert not any(torch.allclose(a, b, atol=1e-3) for a, b in zip(edited, kept, strict=True))
    assert all(a is b for a, b in zip(twin.entering(questions, 2, prefix), kept, strict=True))


@pytest.mark.parametrize("damage", [b"", b"not safetensors at all", None, "flip"])
def test_a_damaged_anchor_cache_is_rebuilt_not_fatal(engine, monkeypatch, damage):
    """A truncated file, garbage, the anchors of other layers, or one bit flipped in a tensor
    (read as it was before the file carried its checksum): learning moves the file aside and
    rebuilds it rather than failing or computing with half of them."""
    from engine.learning import anchors as learning

    twin, rt, recipe = twin_for(engine.runtime), engine.runtime, learner.Recipe()
    system = f"a system prompt to damage with {damage!r}"  # a cache file of its own
    monkeypatch.setattr(learning, "_anchors", {})
    saved, save = [], learner.Anchors.save
    monkeypatch.setattr(learner.Anchors, "save",
                        lambda self, path: save(self, saved.append(path) or path))
    built = anchors_for(twin, rt, system, recipe)
    path = saved[-1]
    if damage is None:  # a valid file of the wrong shape: one layer's tensors missing
        built.inputs.pop(recipe.layers[0])
        save(built, path)
    elif damage == "flip":
        data = bytearray(path.read_bytes())
        data[-3] ^= 0x10
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(damage)
    damaged = path.read_bytes()
    monkeypatch.setattr(learning, "_anchors", {})
    rebuilt = anchors_for(twin, rt, system, recipe)
    assert saved == [path, path]
    assert set(rebuilt.inputs) == set(recipe.layers)
    [aside] = path.parent.glob(f"{path.name}.damaged-*")  # moved aside, never deleted
    assert aside.read_bytes() == damaged
    monkeypatch.setattr(learning, "_anchors", {})
    monkeypatch.setattr(learner, "anchors_for", lambda *a, **k: pytest.fail("rebuilt twice"))
    again = anchors_for(twin, rt, system, recipe)
    assert torch.equal(again.inputs[recipe.layers[0]], rebuilt.inputs[recipe.layers[0]])


def test_an_anchor_cache_from_before_the_checksums_is_removed_and_rebuilt(engine, monkeypatch):
    """Not damaged, only unverifiable: nothing in it was the user's, so it is not kept aside."""
    from safetensors.torch import load_file, save_file

    from engine.learning import anchors as learning

    twin, rt, recipe = twin_for(engine.runtime), engine.runtime, learner.Recipe()
    monkeypatch.setattr(learning, "_anchors", {})
    saved, save = [], learner.Anchors.save
    monkeypatch.setattr(learner.Anchors, "save",
                        lambda self, path: save(self, saved.append(path) or path))
    anchors_for(twin, rt, "a system prompt cached before the checksums", recipe)
    path = saved[-1]
    save_file(load_file(path), path)  # the same tensors, no checksum in the metadata
    monkeypatch.setattr(learning, "_anchors", {})
    anchors_for(twin, rt, "a system prompt cached before the checksums", recipe)
    assert saved == [path, path] and path.exists()
    assert list(path.parent.glob(f"{path.name}.*")) == []


def test_the_gate_measures_nothing_changed_as_perfect(engine):
    score = engine.learning.gate().measure(None)
    assert score.locality == 1.0 and score.kl_neutral == pytest.approx(0.0, abs=1e-6)
    empty = SparseOverlay([], engine.runtime.model.sha256, d_model=64, d_ff=128)
    version = engine.memory.commit(empty)
    assert engine.learning.gate().measure(*engine.memory.lora(version)).locality == 1.0


def _keyed_at(twin, blocks, recipe, example) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per edited layer, ``example``'s FFN inputs there and the new neurons' keys."""
    seen = {}
    hooks = [twin.layers[l].mlp.register_forward_pre_hook(
        lambda m, a, l=l: seen.__setitem__(l, a[0][0])) for l in recipe.layers]
    with torch.no_grad():
        twin.full_logits([example.tokens])
    for hook in hooks:
        hook.remove()
    return [(seen[block.layer], twin.layers[block.layer].mlp.gate_proj.weight[
        torch.from_numpy(block.neurons).long()] + torch.from_numpy(block.delta))
        for block in blocks if block.matrix == "ffn_gate"]


def test_keyed_neurons_fire_on_their_question_and_are_silent_at_the_start_and_after_the_answer(
        engine):
    """The first token is the attention sink every position reads, and the turn's end is where
    an answer that keeps firing runs on: a new neuron's key must be off at both."""
    rt = engine.load()
    twin = twin_for(rt)
    recipe = learner.Recipe(layers=(1, 2), neurons=4, steps=3)
    example = learner.Example(*dialogue(rt, None, "Where do I live?", " Tromsø."), end_of_turn(rt))
    blocks, _ = learner.learn(twin, [example], anchors_for(twin, rt, None, recipe), recipe)
    for x, keys in _keyed_at(twin, blocks, recipe, example):
        asked = x[len(example.prompt) - 1: len(example.prompt) + len(example.answer) - 1] @ keys.T
        assert (asked > 0).any(dim=0).all()  # every neuron fires on its question
        assert (x[0] @ keys.T < -1).all()
        assert ((example.ending(x) @ keys.T).max(dim=0).values < asked.max(dim=0).values).all()


def test_a_fact_s_detectors_fire_where_it_is_asked_another_way_without_training_it(engine):
    """``also_asked``: a phrasing that is not trained is a positive of its fact's keys."""
    rt = engine.load()
    twin = twin_for(rt)
    recipe = learner.Recipe(layers=(1, 2), neurons=2, steps=1)
    anchors = anchors_for(twin, rt, None, recipe)
    trained, other = (learner.Example(*dialogue(rt, None, question, " Tromsø."), end_of_turn(rt))
                      for question in ("Where do I live?", "Which town is my home in?"))

    def fired(also: list[learner.Example]) -> float:
        blocks, _ = learner.learn(twin, [trained], anchors, recipe, also_asked=also)
        return min(float((x[len(other.prompt) - 1] @ keys.T).max())
                   for x, keys in _keyed_at(twin, blocks, recipe, other))

    assert fired([other]) > 0 > fired([])


def test_where_an_unrelated_answer_changed_the_fact_whose_neurons_fire_there_is_found(engine):
    """The gate names a place (a text, a position) where a version changed a decided answer;
    the fact whose detectors fire there is the one set aside, not the session's others."""
    rt = engine.load()
    twin = twin_for(rt)
    # hardest=0: the tiny model's random states do not separate a question from every
    # negative, and keys fitted to try are silent on their own question too
    recipe = learner.Recipe(layers=(1, 2), neurons=4, steps=3, hardest=0)
    home, cat = (learner.Example(*dialogue(rt, None, q, a), end_of_turn(rt))
                 for q, a in (("Where do I live?", " Tromsø."),
                              ("What is my cat called?", " Mosel.")))
    blocks, _ = learner.learn(twin, [home, cat], anchors_for(twin, rt, None, recipe), recipe)
    edit = SparseOverlay(blocks, rt.model.sha256, d_model=64, d_ff=128)

    def blamed(*places):
        with twin.overlaid(edit):
            return learner.firing_facts(twin, blocks, [home, cat], list(places),
                                        recipe.key_context, recipe.firing_share)

    def asked(example):  # every row where its question is asked and its answer written
        return [(example.tokens, at) for at in range(len(example.prompt) - 1 - recipe.key_context,
                                                     len(example.prompt) + len(example.answer) - 1)]

    # somewhere there each fact's neurons fire at their mean strength or more; the other's not
    assert blamed(*asked(cat)) == {tuple(cat.answer)}
    assert blamed(*asked(home)) == {tuple(home.answer)}
    assert blamed((rt.tokenize("The river runs to the sea."), 0)) == set()  # the sink: silent
    kept = learner.without(blocks, [home, cat], {tuple(cat.answer)})
    assert {b.layer for b in kept} == {b.layer for b in blocks}  # both facts in every layer
    for before, after in zip(blocks, kept, strict=True):
        owner = learner.owners(blocks, [home, cat])[before.layer]
        mine = [fact == tuple(home.answer) for fact in owner]
        assert after.neurons.tolist() == before.neurons[mine].tolist()
        assert np.array_equal(after.vectors, before.vectors[mine])  # unchanged, not retrained


def test_a_fact_is_recalled_when_half_its_phrasings_or_more_come_out_whole():
    """A fact counts as learned when its answer and the turn's end are the top tokens on at
    least half its trained questions; one wrong token spoils a phrasing."""
    cat, home, dog = (7, 8), (9,), (10,)
    facts = [cat, cat, cat, home, home, dog]  # the fact each example teaches
    rows = torch.tensor([0, 0, 1, 1, 2, 3, 4, 4, 5])  # each trained token's example
    right = torch.tensor([True, True, True, False, False, True, False, True, False])
    assert learner.recalled(right, rows, facts) == {home}  # cat 1 of 3, home 1 of 2, dog 0
    right[3] = True
    assert learner.recalled(right, rows, facts) == {cat, home}  # cat 2 of 3


@pytest.mark.parametrize("tiny_model", ["llama"], indirect=True)  # its FFN output unnormed
def test_the_facts_whose_neurons_taken_out_most_give_a_changed_answer_back_come_first(
        engine):  # noqa: F811
    """A change can be made where no detector fires (carried from earlier positions, or by
    many neurons a little each): the facts are ranked by how much taking out each one's
    neurons gives the base model's next token back."""
    rt = engine.load()
    twin = twin_for(rt)
    home, cat = (learner.Example(*dialogue(rt, None, q, a), end_of_turn(rt))
                 for q, a in (("Where do I live?", " Tromsø."),
                              ("What is my cat called?", " Mosel.")))
    # four neurons in each of two layers, as a session's edit keys them to its two facts: the
    # cat's firing and writing loudly, the home's silent
    noise, neurons = np.random.default_rng(0), np.arange(4)
    shape = {"ffn_gate": (4, 64), "ffn_up": (4, 64), "ffn_down": (64, 4)}
    blocks = [NeuronBlock(layer, m, neurons, noise.standard_normal(shape[m]))
              for layer in (1, 2) for m in shape]
    owner = learner.owners(blocks, [home, cat])
    for b in blocks:
        mine = np.array([f == tuple(cat.answer) for f in owner[b.layer]])
        b.delta[...] = np.where(mine if b.matrix == "ffn_down" else mine[:, None],
                                30 * b.delta, 0)
    edit = SparseOverlay(blocks, rt.model.sha256, d_model=64, d_ff=128)

    def tops(tokens):
        return twin.full_logits([tokens])[0].argmax(-1).tolist()

    base = [tops(e.tokens) for e in (home, cat)]
    with twin.overlaid(edit):
        now = [tops(e.tokens) for e in (home, cat)]
        which, at = next((w, i) for w in (0, 1)
                         for i, (b, n) in enumerate(zip(base[w], now[w], strict=True)) if b != n)
        changed = ((home, cat)[which].tokens[:at + 1] + [base[which][at]], at)
        assert learner.undoing(twin, blocks, [home, cat], [changed]) == [
            tuple(cat.answer), tuple(home.answer)]
        # the same change as a leak: the token now said there must go
        leaked = ((home, cat)[which].tokens[:at + 1] + [now[which][at]], at)
        assert learner.undoing(twin, blocks, [home, cat], [], [leaked]) == [
            tuple(cat.answer), tuple(home.answer)]
        # an earlier session's edit keeps no map from neuron to fact: ranked one neuron at a
        # time, a cat's neuron comes first, not one of the home's silent ones
        ranked = learner.undoing_neurons(twin, blocks, [leaked])
    cats = [(b.layer, int(n)) for b in blocks if b.matrix == "ffn_gate"
            for n, fact in zip(b.neurons, owner[b.layer], strict=True) if fact == tuple(cat.answer)]
    assert sorted(ranked) == sorted((b.layer, int(n)) for b in blocks if b.matrix == "ffn_gate"
                                    for n in b.neurons)
    assert ranked[0] in cats

    def lead(overlay):  # the leaked token's lead at the leak, with ``overlay`` applied
        with twin.overlaid(overlay):
            row = twin.full_logits([leaked[0]])[0][at]
        said = row[leaked[0][at + 1]].item()
        row[leaked[0][at + 1]] = float("-inf")
        return said - row.max().item()

    def but(out):
        return replace(edit, blocks=blocks_without(blocks, {out[0]: {out[1]}}))

    assert lead(but(ranked[0])) < lead(edit) and lead(but(ranked[0])) <= lead(but(ranked[-1]))
    rest = SparseOverlay(learner.without(blocks, [home, cat], {tuple(cat.answer)}),
                         rt.model.sha256, d_model=64, d_ff=128)
    with twin.overlaid(rest):
        assert tops(changed[0])[at] == base[which][at]  # without them, the answer is back
    assert [tops(e.tokens) for e in (home, cat)] == base  # every edit restored exactly


def test_a_word_s_neighbours_are_the_vocabulary_s_words_nearest_it_in_the_model_s_embeddings(
        engine):
    rt = engine.load()
    twin = twin_for(rt)
    table = twin.model.model.embed_tokens.weight
    words = {rt.detokenize([t]).strip(): t for t in range(table.shape[0])
             if rt.detokenize([t]) in {f" {w}" for w in ("cat", "time", "day", "oil")}}
    other = next(w for w in words if w != "cat")
    kept = table[words[other]].clone()
    try:
        table[words[other]] = 2 * table[words["cat"]] + 1e-3 * torch.randn_like(kept)
        near = twin_neighbours(twin, rt, 3)
        assert near("cat")[0] == other  # by cosine, not length
        assert "cat" not in near("cat") and len(near("cat")) == 3
        assert near("cats")[0] == other  # a word's own lemma is never its neighbour
        assert all(w.isalpha() and w.islower() for w in near(other))
    finally:
        table[words[other]] = kept


def test_an_answer_s_likely_kinds_are_at_most_as_many_as_asked_and_never_its_own_word(engine):
    rt = engine.load()
    twin = twin_for(rt)
    every = len(paths.asset("grammar", "kind_words.txt").read_text(encoding="utf-8").split())
    ranked = TwinKinds(twin, rt).likely(every)(["Lyon"])[0]
    assert 1 <= len(ranked) <= every and len(set(ranked)) == len(ranked)
    assert TwinKinds(twin, rt).likely(2)(["Lyon"])[0] == ranked[:2]
    own = ranked[0] + "s"  # "cities: city" names itself
    assert ranked[0] not in TwinKinds(twin, rt).likely(every)([own])[0]


def test_an_answer_s_likely_kinds_leave_out_those_far_less_likely_than_its_likeliest(engine):
    """With the head set so that one kind word's first token is far the likeliest, the
    likely kinds are the words that start with it, however many are asked for."""
    rt = engine.load()
    twin = twin_for(rt)
    kinds = TwinKinds(twin, rt)
    firsts = list(dict.fromkeys(kinds.firsts.tolist()))
    with _head_apart(twin, firsts, firsts[:2]):
        likely = kinds.likely(len(kinds.words))(["Lyon"])[0]
    top = {int(kinds.firsts[kinds.words.index(likely[0])])}
    assert set(likely) == {w for w, t in zip(kinds.words, kinds.firsts.tolist(), strict=True)
                           if t in top} and top < set(firsts)


def test_a_word_fits_an_answer_as_its_kind_unless_far_less_likely_than_its_likeliest(engine):
    """Any word is read on the kinds' few-shot beside the likeliest kind word: with the head
    set so that the kind words' first tokens and two words are alike and two are far apart,
    the far less likely one alone does not fit."""
    rt = engine.load()
    twin = twin_for(rt)
    kinds = TwinKinds(twin, rt)
    kind_firsts = set(kinds.firsts.tolist())
    words, ids = [], []  # four words whose first pieces are their own, none a kind word's
    for t in range(twin.model.lm_head.weight.shape[0]):
        word = rt.detokenize([t]).strip()
        pieces = [p for p in rt.tokenize(f" {word}", add_bos=False) if rt.detokenize([p]).strip()]
        if word.isalpha() and pieces[:1] == [t] and t not in kind_firsts and len(words) < 4:
            words.append(word)
            ids.append(t)
    with _head_apart(twin, list(dict.fromkeys(kinds.firsts.tolist() + ids)), ids[:2]):
        fits = kinds.fits("Lyon", words)
    assert len(set(ids)) == 4
    assert fits[2:] == [True, True] and fits[0] != fits[1]


@contextlib.contextmanager
def _head_apart(twin, rows: list[int], apart: list[int]):
    """The output head with ``rows`` zeroed, so that their tokens are alike, but for the two
    ``apart``: one far likelier than the rest and one far less (which is which, the hidden
    state's sign decides). Restored afterwards."""
    head = twin.model.lm_head.weight
    kept = head[rows].clone()
    try:
        head[rows] = 0
        direction = torch.randn(head.shape[1])
        head[apart[0]], head[apart[1]] = 50 * direction, -50 * direction
        yield
    finally:
        head[rows] = kept


@pytest.mark.parametrize("facts", [1, 3, 4, 6, 8, 9, 16, 17, 30])
def test_every_fact_gets_a_detector_however_many_the_session_has(facts):
    layers, k = 4, learner.per_layer(facts, 4, 2)
    assert k == 2 or (k - 1) * layers < facts  # never more neurons than that needs
    keyed = [learner.keyed_facts(facts, depth, k) for depth in range(layers)]
    assert all(len(neurons) == k for neurons in keyed)
    assert set().union(*keyed) == set(range(facts))
    if facts <= k:  # few facts: one detector of each in every layer
        assert all(set(neurons) == set(range(facts)) for neurons in keyed)


def test_the_seed_draws_the_random_part_of_the_answer_loss_s_vocabulary(engine):
    """``bench learn --seed``: another seed, another random part of the vocabulary the answer
    loss runs over (how much of a figure is chance); the same seed, the same one."""
    rt = engine.load()
    twin = twin_for(rt)
    example = learner.Example(*dialogue(rt, None, "Where do I live?", " town."), end_of_turn(rt))
    h = torch.randn(1, len(example.tokens), twin.config.hidden_size)  # the top tokens: any
    recipe = learner.Recipe(vocab_top=1, vocab_random=64)
    vocab = {seed: train._targets(twin, [example], h, replace(recipe, seed=seed)).vocab
             for seed in (0, 1)}
    assert torch.equal(vocab[0], train._targets(twin, [example], h, recipe).vocab)
    assert not torch.equal(vocab[0], vocab[1])


def test_the_stop_leaves_out_only_each_fact_s_worst_phrasing_when_it_has_three_or_more():
    # Examples 0–3 teach fact A (example 1 is stuck), 4–5 teach fact B (example 5 is stuck);
    # two answer tokens each.
    facts = [("A",)] * 4 + [("B",)] * 2
    rows = torch.tensor([i for i in range(6) for _ in range(2)])
    loss = torch.tensor([0.01, 0.02, 13.0, 0.5, 0.03, 0.01, 0.02, 0.02, 0.01, 0.0, 4.0, 0.1])
    kept = learner.stop_rows(loss, rows, facts, spare=1)
    assert rows[~kept].tolist() == [1, 1]  # B has two phrasings: both must be learned
    assert not loss[kept].mean() < 0.05  # so B's stuck one still holds training
    assert learner.stop_rows(loss, rows, facts, spare=0).all()


def test_the_stop_waits_for_every_fact_not_for_the_mean_of_all_answers():
    # Fact A's six examples are learned; fact B's one is not: the mean is low, B is not.
    facts = [("A",)] * 6 + [("B",)]
    rows = torch.tensor([i for i in range(7) for _ in range(2)])
    loss = torch.tensor([0.01] * 12 + [0.2, 0.1])
    kept = learner.stop_rows(loss, rows, facts, spare=1)
    assert loss[kept].mean() < 0.05
    assert learner.worst_fact(loss, rows, facts, kept) == pytest.approx(0.15)


@pytest.mark.parametrize("tiny_model", ARCHITECTURES, indirect=True)
def test_learning_a_fact_lowers_its_answer_loss_in_the_twin_and_in_llama_cpp(engine):
    """What the learner is for, on the tiny model: the answer's loss falls, in the twin and
    in llama.cpp once the version is the active LoRA, and the greedy answer changes the same
    way in both. (The random model's logits sit ~30 nats from the answer and its "generic
    text" is noise, so the locality term is off here and the answer is not expected to come
    out whole; this large an edit of a random model is where the two engines' rounding
    differs most, so llama.cpp's fall is checked on its own.)"""
    rt = engine.load()
    twin = twin_for(rt)
    recipe = learner.Recipe(layers=(1, 2), neurons=4, steps=80, lr=0.5, locality_weight=0.0)
    example = learner.Example(*dialogue(rt, None, "Where do I live?", " town."), end_of_turn(rt))
    rows = list(range(len(example.prompt) - 1, len(example.prompt) + len(example.answer) - 1))
    scorer = Scorer(rt.model.path, n_ctx=512)

    def answer_loss() -> float:
        logits = twin.full_logits([example.tokens])[0][rows]
        return float(torch.nn.functional.cross_entropy(logits, torch.tensor(example.answer)))

    def llama_cpp_loss() -> float:
        logp = log_softmax(scorer.logits_at(example.tokens, rows))
        return -float(np.mean(logp[np.arange(len(rows)), example.answer]))

    before, before_llama = answer_loss(), llama_cpp_loss()
    base_answer = scorer.greedy(example.prompt, 4, [])[0]
    blocks, metrics = learner.learn(twin, [example], anchors_for(twin, rt, None, recipe), recipe)
    overlay = SparseOverlay(blocks, rt.model.sha256, d_model=64, d_ff=128)
    with twin.overlaid(overlay):
        after = answer_loss()
        twin_answer = rt.detokenize(greedy_in_twin(twin, example.prompt, 4, rt.llm.token_eos()))
    version = engine.memory.commit(overlay)
    scorer.set_overlay(*engine.memory.lora(version))
    after_llama = llama_cpp_loss()
    served_answer = scorer.greedy(example.prompt, 4, [])[0]
    print(f"{rt.model.architecture}: loss {before:.2f} -> {after:.2f} (twin), "
          f"{before_llama:.2f} -> {after_llama:.2f} (llama.cpp); greedy {base_answer!r} -> "
          f"{twin_answer!r} (twin), {served_answer!r} (llama.cpp)")
    scorer.close()
    assert after < 0.6 * before, (before, after, metrics)
    assert after_llama < 0.8 * before_llama, (before_llama, after_llama)
    assert twin_answer == served_answer
    # A random tiny Gemma (2 or 3) repeats its prompt's last token whatever its FFNs add: its
    # √d-scaled embedding, read back by the tied head, outweighs them.
    if not rt.model.architecture.startswith("gemma"):
        assert served_answer != base_answer


def _trained_with(engine, monkeypatch, recipe: learner.Recipe,
                  optimiser: type) -> tuple[float, float, dict]:
    """The answer loss of one example before and after it is learned with ``optimiser`` in
    Adam's place, and the training's metrics."""
    rt = engine.load()
    twin = twin_for(rt)
    example = learner.Example(*dialogue(rt, None, "Where do I live?", " town."), end_of_turn(rt))
    rows = list(range(len(example.prompt) - 1, len(example.prompt) + len(example.answer) - 1))

    def answer_loss() -> float:
        logits = twin.full_logits([example.tokens])[0][rows]
        return float(torch.nn.functional.cross_entropy(logits, torch.tensor(example.answer)))

    before = answer_loss()
    monkeypatch.setattr(torch.optim, "Adam", optimiser)
    blocks, metrics = learner.learn(twin, [example], anchors_for(twin, rt, None, recipe), recipe)
    with twin.overlaid(SparseOverlay(blocks, rt.model.sha256, d_model=64, d_ff=128)):
        return before, answer_loss(), metrics


def test_training_keeps_the_state_of_its_lowest_loss_not_its_last(engine, monkeypatch):
    """An update that throws a learned state far off (as Adam at the learner's rate can late
    in the loop) is not what training returns: the state of the lowest loss is."""
    recipe = learner.Recipe(layers=(1, 2), neurons=4, steps=40, lr=0.5, locality_weight=0.0,
                            stop_loss=0.0, key_steps=20)

    class Jumpy(torch.optim.Adam):
        """Adam whose last update of training turns every delta around (the keys' fits, of
        fewer steps, are left alone)."""

        last = 0

        def step(self, closure=None):
            out = super().step(closure)
            self.updates = getattr(self, "updates", 0) + 1
            Jumpy.last = max(Jumpy.last, self.updates)
            if self.updates == recipe.steps:
                with torch.no_grad():
                    for group in self.param_groups:
                        for p in group["params"]:
                            p.mul_(-1.0)
            return out

    before, after, metrics = _trained_with(engine, monkeypatch, recipe, Jumpy)
    assert Jumpy.last == recipe.steps and metrics["kept_step"] < recipe.steps
    assert after < 0.6 * before


def test_training_that_runs_to_its_cap_weighs_the_state_after_its_last_update(
        engine, monkeypatch):
    """The last update is weighed too: when only it learned anything, its state is the one
    returned (a run to the cap once returned the state before it, and one step flipped an
    untaught question's reply to a taught name)."""
    recipe = learner.Recipe(layers=(1, 2), neurons=4, steps=12, lr=0.3, locality_weight=0.0,
                            stop_loss=0.0, key_steps=20, key_lr=0.05)

    class Late(torch.optim.Adam):
        """Adam that, in training (the keys' fits run at key_lr), skips every update but the
        last."""

        def step(self, closure=None):
            self.updates = getattr(self, "updates", 0) + 1
            if self.defaults["lr"] == recipe.lr and self.updates < recipe.steps:
                return None
            return super().step(closure)

    before, after, metrics = _trained_with(engine, monkeypatch, recipe, Late)
    assert metrics["stopped"] == "step cap" and metrics["kept_step"] == recipe.steps
    assert after < 0.9 * before


def test_a_reply_during_a_learning_job_uses_the_active_memory_and_is_labelled_so(
        engine, monkeypatch, make_overlay):
    """The chat's llama.cpp context belongs to the chat: learning derives, checks and gates
    in contexts of its own, so a reply that starts while a job runs computes with the
    active version, and its saved KV state says so (it was once computed on the base
    weights and stored as if with the memory)."""
    active = engine.memory.commit(make_overlay(engine.runtime.model.sha256, [
        (1, "ffn_down", 16, 1), (2, "ffn_down", 16, 1)]))
    adapter = engine.runtime._adapter
    assert adapter is not None
    deriving, release = threading.Event(), threading.Event()

    def slow_check(pairs, prefers):
        deriving.set()
        release.wait(30)
        return pairs

    monkeypatch.setattr(derive, "checked", slow_check)
    job = threading.Thread(target=engine.learn_now,
                           kwargs={"session_ids": [said(engine, "Who is my manager?|Berit")]})
    job.start()
    try:
        assert deriving.wait(30)
        assert engine.runtime._adapter is adapter  # the chat context still has the memory
        monkeypatch.setattr(engine, "schedule_learning", lambda *args, **kwargs: False)
        chat = engine.conversation(engine.new_session())
        for _ in chat.send("What is my cat called?", Sampling.greedy(8)):
            pass
        state = engine.store.session_state(chat.session.id)
        assert state is not None and state.kv_overlay_id == active.id
    finally:
        release.set()
        job.join(60)
    assert not job.is_alive() and engine.memory.applied.id != active.id


def test_learning_that_would_not_fit_in_memory_is_refused_with_the_figures(engine, monkeypatch):
    """Refused before the training copy is loaded (an out-of-memory kill would take the chat
    with it): the figures in one line, nothing lost, the chat still works."""
    import types

    import psutil

    from engine.learning import anchors as learning

    monkeypatch.setattr(learning, "_twins", {})  # not loaded in this process yet
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=10**8))
    sid = said(engine, "My cat is called Pixel.")
    with pytest.raises(NotEnoughMemory,
                       match=r"needs about 1\.1 GB of free memory .* and 0\.1 GB is free"):
        engine.learn_now(session_ids=[sid])
    assert engine.memory.applied is None
    assert [m.content for m in engine.store.messages(sid)] == ["My cat is called Pixel."]


def test_a_model_shallower_than_the_recipe_is_refused_in_one_line(engine):  # noqa: F811
    engine.learning._recipe = replace(engine.learning.recipe, layers=(14, 15, 16, 17))
    sid = said(engine, "What is my cat called?|Pixel")
    with pytest.raises(EngramError, match=r"layers 14–17, and this model has \d+"):
        engine.learn_now(session_ids=[sid])
    assert engine.memory.applied is None
