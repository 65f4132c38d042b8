"""Switching models, on two tiny models of different architectures in a folder the profile
adds: a learning job that must not cross from one model to the other.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest

from engine.engine import Engine
from tests.test_learning import said, small  # noqa: F401  (small: a fixture)
from tests.test_tui import one_thread  # noqa: F401  (one llama.cpp thread)
from tests.tiny_gguf import write_tiny_model

GEMMA, LLAMA = "tiny-gemma3-test", "tiny-llama-test"  # the models' general.name


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A model folder with a tiny Gemma 3 and a tiny Llama, in a home with no other models."""
    for name in ("OLLAMA_MODELS", "HF_HOME", "HF_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("LLAMA_CACHE", str(tmp_path / "llama-cache"))
    folder = tmp_path / "models"
    folder.mkdir()
    write_tiny_model(folder / "a-gemma.gguf", "gemma3")
    write_tiny_model(folder / "b-llama.gguf", "llama")
    return folder


@pytest.fixture
def engine(engine_home, folder):
    engine = Engine(home=engine_home, model=folder / "a-gemma.gguf")
    engine.save_settings(replace(engine.settings, max_tokens=24, model_folders=[str(folder)]))
    yield engine
    engine.close()


def test_a_learning_job_for_the_old_model_is_dropped_not_activated_into_the_new_one(
        small, engine, folder, monkeypatch):  # noqa: F811
    """The switch stops the job and waits for it to end before the new model's memory opens;
    the session stays pending, for the model now served."""
    session = said(engine, "What is my cat called?|Pixel")
    engine.load()
    held, release = threading.Event(), threading.Event()
    cancels: list[threading.Event] = []
    run = engine.learning.run

    def held_run(progress, cancel=None, **kwargs):
        cancels.append(cancel)
        held.set()
        release.wait(30)
        return run(progress, cancel, **kwargs)

    monkeypatch.setattr(engine.learning, "run", held_run)
    assert engine.schedule_learning(delay=0)
    queue = engine.learn_queue
    assert held.wait(30)
    switching = threading.Thread(target=engine.switch_model, args=[folder / "b-llama.gguf"])
    switching.start()
    assert cancels[0].wait(30)  # the switch cancelled the job…
    assert engine.runtime.name == GEMMA  # …and waits for it to end before serving the Llama
    release.set()
    switching.join(30)
    assert engine.runtime.name == LLAMA
    assert queue.state().message == "learning cancelled; the memory is unchanged"
    assert engine.store.overlay_versions(engine.profile.id) == []  # nothing, for either model
    assert engine.memory.applied is None
    assert [s.id for s in engine.pending_sessions()] == [session]
    assert engine.schedule_learning()  # for the Llama now
