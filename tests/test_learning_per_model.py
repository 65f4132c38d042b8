"""What is pending is per base model, as memory is: on a tiny Gemma 3 and a tiny Llama in one
profile, a session one model learned is still learned by the other, and a forgotten session
by neither (forgetting is for every model). And the layers learning edits are chosen by each
model's depth."""

from __future__ import annotations

from dataclasses import replace

import pytest

from engine.engine import Engine
from engine.errors import EngramError
from engine.learner import Recipe
from store.records import OverlayVersion
from tests.test_learning import said, small  # noqa: F401  (small: a fixture)
from tests.test_model_picker import folder  # noqa: F401  (a fixture)
from tests.tiny_gguf import write_tiny_model


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


@pytest.mark.parametrize(("n_layer", "layers"), [
    (18, (14, 15, 16, 17)),  # the built-in model's, where the recipe was tuned
    (16, (12, 13, 14, 15)), (28, (22, 23, 24, 25)), (32, (25, 26, 27, 28)),
    (48, (37, 38, 39, 40)), (4, (0, 1, 2, 3))])
def test_the_edited_layers_sit_at_the_same_depth_on_every_model(n_layer, layers):
    assert Recipe().layers_for(n_layer) == layers


def test_named_layers_are_kept_and_a_model_too_shallow_is_refused_in_one_line():
    assert Recipe(layers=(1, 2)).layers_for(32) == (1, 2)
    with pytest.raises(EngramError, match=r"^learning edits 4 layers, and this model has 3: "
                                          r"chat works, learning needs a deeper model$"):
        Recipe().layers_for(3)
    with pytest.raises(EngramError, match=r"^learning edits layers 14–17, and this model has 16"):
        Recipe(layers=(14, 15, 16, 17)).layers_for(16)


def test_a_deeper_model_learns_at_the_depth_the_recipe_was_tuned_at(
        small, engine_home, tmp_path):  # noqa: F811
    """Layers 14–17 of the built-in model's 18 are layers 21–24 of a 27-layer one: its
    memory is of those layers."""
    model = write_tiny_model(tmp_path / "deep.gguf", n_layer=27)
    engine = Engine(home=engine_home, model=model, n_ctx=512)
    engine.load()
    try:
        engine.save_settings(engine.settings.with_gate(0.0))
        engine.learning._recipe = replace(engine.learning.recipe, layers=None)
        [result] = engine.learn_now(session_ids=[said(engine, "What is my cat called?|Pixel")])
        assert result.accepted
        assert engine.memory.current().layers == [21, 22, 23, 24]
    finally:
        engine.close()
