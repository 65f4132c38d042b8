"""Switching models in the TUI (F3, /model) under Pilot, on two tiny models of different
architectures in a folder the profile adds: the list, the switch, each model's own memory, a
model that fails to load, a learning job that must not cross from one model to the other, and
the way on from the error screen shown when the configured model does not load.
"""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
from textual.widgets import DataTable, Static
from textual.widgets._footer import FooterKey

from app.tui.app import EngramApp
from app.tui.screens.memory import MemoryScreen
from app.tui.screens.model_error import ModelErrorScreen
from app.tui.screens.model_picker import CURRENT, ModelPicker
from app.tui.widgets.memory import MemoryPanel
from app.tui.widgets.prompt import PromptInput
from app.tui.widgets.status import StatusBar
from app.tui.widgets.versions import VersionList
from engine.engine import Engine
from tests.test_learning import said, small  # noqa: F401  (small: a fixture)
from tests.test_memory_versions import SPEC
from tests.test_tui import SIZE, one_thread, running, say, settled, until, views  # noqa: F401
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


def damaged(folder) -> str:
    """A model in ``folder`` whose header reads but which llama.cpp will not load (a tensor is
    missing); its name."""
    healthy = (folder / "b-llama.gguf").read_bytes()
    (folder / "c-damaged.gguf").write_bytes(
        healthy.replace(b"output_norm.weight", b"output_norm.wxight"))
    return "c-damaged"


def one_error(app) -> str:
    """The one error notice shown, checked to be one line."""
    [error] = [n.message for n in app._notifications if n.severity == "error"]
    assert "\n" not in error
    return error


def rows(table: DataTable) -> list[list[str]]:
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


async def open_picker(app, pilot, key: str = "f3") -> DataTable:
    """The picker, opened with ``key``, once it has listed the models."""
    await pilot.press(key)
    await until(pilot, lambda: isinstance(app.screen, ModelPicker)
                and not app.screen.query_one(DataTable).loading, "the model list")
    return app.screen.query_one(DataTable)


async def choose(app, pilot, *keys: str) -> None:
    """In the open picker, move with ``keys``, then Enter."""
    await pilot.press(*keys, "enter")
    await until(pilot, lambda: not isinstance(app.screen, ModelPicker), "the picker to close")


def serving(app, name: str) -> bool:
    return app.chat.runtime is not None and app.chat.runtime.name == name


def status_text(app) -> str:
    return str(app.chat.query_one(StatusBar).content)


def memory_text(app) -> str:
    """What the chat's memory panel says of the learned memory."""
    return str(app.chat.query_one(MemoryPanel).query_one("#overlay", Static).content)


async def test_f3_lists_the_models_and_switching_serves_the_other_with_its_own_memory(
        engine, folder, make_overlay):
    engine.load()
    gemmas = engine.memory.commit(make_overlay(engine.runtime.model.sha256, SPEC))
    async with running(engine) as (app, pilot):
        await say(app, pilot, "hello")
        first = app.chat.session
        await pilot.press("ctrl+t")
        await until(pilot, lambda: f"overlay v{gemmas.id} active" in memory_text(app),
                    "the Gemma's memory in the panel")
        table = await open_picker(app, pilot)
        listed = rows(table)
        assert [r[:4] for r in listed] == [[CURRENT, "a-gemma", "gemma3", "185.3K"],
                                           ["", "b-llama", "llama", "193.9K"],
                                           ["", "built-in", "?", "?"]]
        assert listed[1][7:] == ["yes", "yes", "folder"]  # chat template, learns, where
        assert table.cursor_row == 0  # on the model in use

        await choose(app, pilot, "down")
        await until(pilot, lambda: serving(app, LLAMA), "the Llama to serve")
        assert LLAMA in status_text(app) and "loading" not in status_text(app)
        assert app.chat.session is None  # a new session; the Gemma's stays in the list
        await say(app, pilot, "hello")
        assert engine.store.messages(app.chat.session.id)[-1].model == LLAMA
        assert engine.store.messages(first.id)[-1].model == GEMMA
        assert len(engine.sessions()) == 2

        assert engine.versions() == [] and engine.memory.applied is None  # its own memory
        await until(pilot, lambda: memory_text(app) == "no learned memory yet",
                    "the Llama's memory in the panel")
        await pilot.press("ctrl+o")
        await until(pilot, lambda: isinstance(app.screen, MemoryScreen), "the memory screen")
        versions = app.screen.query_one(VersionList)
        assert str(versions.get_option_at_index(0).prompt) == "no versions yet"
        await pilot.press("escape")

        table = await open_picker(app, pilot, "f3")
        assert [r[0] for r in rows(table)] == ["", CURRENT, ""] and table.cursor_row == 1
        await choose(app, pilot, "up")
        await until(pilot, lambda: serving(app, GEMMA), "the Gemma to serve again")
        await until(pilot, lambda: f"overlay v{gemmas.id} active" in memory_text(app),
                    "the Gemma's memory in the panel again")
        assert engine.memory.applied == engine.store.overlay_version(gemmas.id)  # kept
        assert [v.id for v in engine.versions()] == [gemmas.id]


async def test_a_message_sent_while_the_other_model_loads_goes_to_it(engine, monkeypatch):
    ready, switch = threading.Event(), engine.switch_model
    monkeypatch.setattr(engine, "switch_model", lambda model: ready.wait(10) and switch(model))
    async with running(engine) as (app, pilot):
        await say(app, pilot, "hello")
        await open_picker(app, pilot)
        await choose(app, pilot, "down")
        assert app.chat.runtime is None and "loading b-llama…" in status_text(app)
        assert GEMMA in status_text(app)  # still loaded until the Llama is ready
        app.chat.query_one(PromptInput).load_text("still there?")
        await pilot.press("enter")
        assert len(views(app)) == 2  # held, not sent to the Gemma
        ready.set()
        await until(pilot, lambda: settled(app) and len(views(app)) == 2
                    and views(app)[0].text == "still there?", "the held message's reply")
        assert serving(app, LLAMA)
        assert engine.store.messages(app.chat.session.id)[-1].model == LLAMA
        assert len(engine.sessions()) == 2


async def test_a_model_that_fails_to_load_leaves_the_old_one_serving(engine, folder):
    name = damaged(folder)
    async with running(engine) as (app, pilot):
        await say(app, pilot, "hello")
        session, runtime = app.chat.session, app.chat.runtime
        table = await open_picker(app, pilot)
        assert rows(table)[2][1] == name
        await choose(app, pilot, "down", "down")
        await until(pilot, lambda: app.chat.runtime is not None, "the switch to end")
        assert one_error(app).startswith(f"{name} could not be loaded: llama.cpp could not load")
        assert app.chat.runtime is runtime and engine.runtime is runtime
        assert GEMMA in status_text(app) and "loading" not in status_text(app)
        assert app.chat.session == session
        await say(app, pilot, "again")
        assert engine.store.messages(session.id)[-1].model == GEMMA


async def test_escape_or_the_model_in_use_changes_nothing_and_slash_model_opens_it(engine):
    async with running(engine) as (app, pilot):
        runtime = app.chat.runtime
        app.chat.query_one(PromptInput).load_text("/model")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ModelPicker), "the picker")
        await pilot.press("down", "escape")
        await until(pilot, lambda: app.screen is app.chat, "the chat")
        await pilot.pause()
        assert app.chat.runtime is runtime and engine.runtime is runtime
        assert GEMMA in status_text(app) and app.chat.query_one(PromptInput).text == ""
        await open_picker(app, pilot)
        await choose(app, pilot)  # Enter on the marked row
        assert "a-gemma is the model in use." in [n.message for n in app._notifications]
        assert app.chat.runtime is runtime and engine.runtime is runtime


async def test_the_error_screen_chooses_another_model_and_the_chat_goes_on(
        engine_home, folder, monkeypatch):
    """The configured model is gone: F3 on the error screen opens the picker (no model marked
    in use); the choice loads in the background; one that will not load either is one line
    and the screen stays; one that loads serves the chat."""
    name = damaged(folder)
    engine = Engine(home=engine_home, model=folder / "moved-away.gguf")
    engine.save_settings(replace(engine.settings, max_tokens=24, model_folders=[str(folder)]))
    ready, switch = threading.Event(), engine.switch_model
    monkeypatch.setattr(engine, "switch_model", lambda model: ready.wait(10) and switch(model))
    app = EngramApp(engine)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ModelErrorScreen), "the error screen")
        error = app.screen
        assert "press F3 to choose another model" in str(
            error.query_one("#error-fix", Static).content)
        await until(pilot, lambda: ("f3", "Choose a model") in [
            (k.key, k.description) for k in error.query(FooterKey)], "F3 in the footer")

        table = await open_picker(app, pilot)
        assert [r[:2] for r in rows(table)] == [["", "a-gemma"], ["", "b-llama"], ["", name],
                                                ["", "built-in"]]
        await choose(app, pilot, "down", "down")
        loading = error.query_one("#error-loading", Static)
        await until(pilot, lambda: str(loading.content) == f"loading {name}…", "the loading line")
        await pilot.press("f3")  # the screen answers while the model loads
        await until(pilot, lambda: f"{name} is loading; wait for it, or quit." in [
            n.message for n in app._notifications], "the notice that it is loading")
        assert app.screen is error
        ready.set()
        await until(pilot, lambda: error.chosen is None, "the load to fail")
        assert one_error(app).startswith(f"{name} could not be loaded: llama.cpp could not load")
        assert app.screen is error and engine.runtime is None and str(loading.content) == ""

        await open_picker(app, pilot)
        await choose(app, pilot)  # the Gemma, first in the list
        await until(pilot, lambda: serving(app, GEMMA), "the Gemma to serve")
        assert app.screen is app.chat and GEMMA in status_text(app)
        await say(app, pilot, "hello")
        assert engine.store.messages(app.chat.session.id)[-1].model == GEMMA
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
