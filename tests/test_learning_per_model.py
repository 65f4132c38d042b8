"""What is pending is per base model, as memory is: on a tiny Gemma 3 and a tiny Llama in one
profile, a session one model learned is still learned by the other, and a forgotten session
by neither (forgetting is for every model)."""

from __future__ import annotations

import pytest

from engine.engine import Engine
from store.records import OverlayVersion
from tests.test_learning import said, small  # noqa: F401  (small: a fixture)
from tests.test_model_picker import folder  # noqa: F401  (a fixture)


@pytest.fixture
def engine(small, engine_home, folder):  # noqa: F811
    """The Gemma loaded, with a gate that accepts everything."""
    engine = Engine(home=engine_home, model=folder / "a-gemma.gguf", n_ctx=512)
    engine.load()
    engine.save_settings(engine.settings.with_gate(0.0))
    yield engine
    engine.close()


def pending(engine: Engine) -> list[int]:
    return [s.id for s in engine.pending_sessions()]


def committed(engine: Engine, make_overlay, *sessions: int) -> OverlayVersion:
    """A version of the model served that learned these sessions, as learning records it (no
    training: what is pending depends only on the records)."""
    newest = engine.store.last_user_message_ids(engine.profile.id)
    return engine.memory.commit(
        make_overlay(engine.runtime.model.sha256, [(1, "ffn_up", 2, sid) for sid in sessions]),
        {"event": "learn", "learned": {str(sid): {"through": newest[sid], "facts": [],
                                                  "corrections": []} for sid in sessions}})


def test_a_session_learned_by_one_model_is_still_pending_for_the_other(
        engine, folder, make_overlay):  # noqa: F811
    taught_to_gemma = said(engine, "What is my cat called?|Pixel")
    gemmas = committed(engine, make_overlay, taught_to_gemma)
    assert pending(engine) == []

    engine.switch_model(folder / "b-llama.gguf")
    assert pending(engine) == [taught_to_gemma]  # the Llama has no memory of it
    taught_to_llama = said(engine, "Who is my manager?|Berit")
    results = engine.learn_now()  # the learner takes up what is pending for the Llama
    assert [r.session_id for r in results] == [taught_to_gemma, taught_to_llama]
    assert all(r.accepted and r.version.base_sha256 == engine.runtime.model.sha256
               for r in results)
    assert pending(engine) == []
    assert engine.version_of_session(taught_to_gemma).id == results[0].version.id

    engine.switch_model(folder / "a-gemma.gguf")
    assert pending(engine) == [taught_to_llama]  # said while the Llama served
    assert engine.version_of_session(taught_to_gemma).id == gemmas.id


def test_a_session_forgotten_under_one_model_is_learned_by_no_model(
        engine, folder, make_overlay):  # noqa: F811
    forgotten = said(engine, "What is my cat called?|Pixel")
    kept = said(engine, "Who is my manager?|Berit")
    committed(engine, make_overlay, forgotten, kept)
    engine.forget_session(forgotten)
    assert pending(engine) == []

    engine.switch_model(folder / "b-llama.gguf")
    assert pending(engine) == [kept]  # not the forgotten one, though the Llama never saw it
    committed(engine, make_overlay, kept)
    assert pending(engine) == []

    engine.store.add_message(forgotten, "user", "What is my dog called?|Rex")
    assert pending(engine) == [forgotten]  # what is said after the forget is learned again…
    engine.switch_model(folder / "a-gemma.gguf")
    assert pending(engine) == [forgotten]  # …by each model
