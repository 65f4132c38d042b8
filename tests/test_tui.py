"""The TUI driven through Textual's Pilot against a real Engine and the tiny generated model.

Tests wait on conditions (``until``), never on fixed sleeps: the tiny model answers in
milliseconds, while a long reply (``max_tokens`` 4000) streams for many seconds, which
gives the stop and responsiveness tests a reply that is reliably still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import signal
import subprocess
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from textual import events
from textual.widgets import Input, OptionList, ProgressBar, Static

from app.tui.app import EngramApp
from app.tui.screens.confirm import ConfirmDialog
from app.tui.screens.help import HelpScreen
from app.tui.screens.memory import MemoryScreen
from app.tui.screens.model_error import ModelErrorScreen
from app.tui.screens.model_picker import ModelPicker
from app.tui.screens.rename import RenameDialog
from app.tui.screens.settings import SettingsScreen
from app.tui.widgets.memory import MemoryPanel
from app.tui.widgets.messages import MessageList
from app.tui.widgets.prompt import PromptInput
from app.tui.widgets.sessions import SessionList
from app.tui.widgets.status import StatusBar
from app.tui.widgets.version_diff import VersionDiffView
from app.tui.widgets.versions import VersionList
from engine import engine as engine_module
from engine.bench.aftermath import REPOSITORY
from engine.engine import Engine
from engine.learn_queue import LearnQueue
from engine.learning import Probe, VersionDiff
from engine.memory_status import MemoryStatus
from tests.test_crashes import small_learner
from tests.test_learning import gate_threshold, said, small  # noqa: F401  (small: a fixture)

SIZE = (120, 40)
LONG_REPLY = 4000  # max_tokens that keep the tiny model streaming for many seconds


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One llama.cpp thread: on a busy 2-core machine two spinning threads crawl, and the
    status bar then reads the same (CPU×1) everywhere."""
    monkeypatch.setattr("engine.runtime.default_threads", lambda: 1)


@pytest.fixture
def engine(engine_home, tiny_model):
    engine = Engine(home=engine_home, model=tiny_model)
    engine.save_settings(replace(engine.settings, max_tokens=24))  # short replies: quick tests
    yield engine
    engine.close()


@pytest.fixture
def long_replies(engine):
    engine.save_settings(replace(engine.settings, max_tokens=LONG_REPLY))
    return engine


async def until(pilot, condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.02)


@contextlib.asynccontextmanager
async def running(engine, **kwargs):
    app = EngramApp(engine, **kwargs)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.chat.runtime is not None, "the model to load")
        yield app, pilot


def views(app):
    return app.chat.query_one(MessageList).views()


def settled(app) -> bool:
    """No reply running, and the last reply on screen is finished."""
    shown = views(app)
    return (app.chat.job is None and bool(shown) and shown[-1].role == "assistant"
            and shown[-1].status not in ("waiting", "pending"))


async def say(app, pilot, text: str) -> None:
    app.chat.query_one(PromptInput).load_text(text)
    await pilot.press("enter")
    await until(pilot, lambda: settled(app) and views(app)[-2].text == text.strip(), "the reply")


async def first_token(app, pilot, text: str) -> None:
    app.chat.query_one(PromptInput).load_text(text)
    await pilot.press("enter")
    await until(pilot, lambda: app.chat.job is not None and app.chat.job.view is not None
                and app.chat.job.view.text != "", "the first token")


def stored(engine, session_id=None):
    session_id = session_id or engine.sessions()[0].id
    return engine.store.messages(session_id)


def notices(app) -> list[str]:
    return [n.message for n in app._notifications]


def session_rows(app) -> list[str]:
    listing = app.chat.query_one(SessionList)
    return [str(listing.get_option_at_index(i).prompt) for i in range(listing.option_count)]


# -- chatting -------------------------------------------------------------------------


async def test_send_streams_reply_and_commits_it(engine):
    async with running(engine) as (app, pilot):
        await say(app, pilot, "hello")
        user, reply = stored(engine)
        assert (user.role, user.content, user.status) == ("user", "hello", "complete")
        assert reply.role == "assistant" and reply.status == "complete" and reply.content
        assert views(app)[-1].text.strip() == reply.content
        assert app.chat.query_one(PromptInput).text == ""
        assert engine.sessions()[0].title == "hello"
        assert "tok/s" in str(app.chat.query_one(StatusBar).content)
        assert "context" in str(app.chat.query_one(StatusBar).content)


async def test_a_home_that_cannot_be_saved_to_is_said_at_start(engine):
    """The store of a read-only home opens for reading (test_cli: a real one) and says why."""
    engine.store.read_only = "/home/me cannot be written, so Engram cannot save there"
    async with running(engine) as (app, pilot):
        await until(pilot, lambda: notices(app), "the notice")
        assert notices(app) == [f"Nothing can be saved: {engine.store.read_only}"]


async def test_escape_stops_reply_and_keeps_partial_text(long_replies):
    engine = long_replies
    async with running(engine) as (app, pilot):
        await first_token(app, pilot, "tell me everything")
        await pilot.press("escape")
        await until(pilot, lambda: settled(app), "the stopped reply")
        reply = stored(engine)[-1]
        assert reply.status == "partial" and reply.content
        assert reply.completion_tokens < LONG_REPLY
        view = views(app)[-1]
        assert view.status == "partial" and view.has_class("-stopped")
        assert "stopped" in str(view.query_one(".note", Static).content)


async def test_regenerate_replaces_the_last_reply(engine):
    async with running(engine) as (app, pilot):
        await say(app, pilot, "hello")
        first = views(app)[-1]
        await pilot.press("ctrl+r")
        await until(pilot, lambda: settled(app) and views(app)[-1] is not first,
                    "the regenerated reply")
        user, reply = stored(engine)
        assert user.content == "hello" and reply.status == "complete"
        assert [v.role for v in views(app)] == ["user", "assistant"]


async def test_enter_sends_ctrl_j_adds_a_line_and_up_recalls_prompts(engine):
    async with running(engine) as (app, pilot):
        prompt = app.chat.query_one(PromptInput)
        await pilot.press("a", "ctrl+j", "b")
        assert prompt.text == "a\nb"
        await pilot.press("enter")
        await until(pilot, lambda: settled(app), "the reply")
        await say(app, pilot, "second")
        assert stored(engine)[0].content == "a\nb"
        await pilot.press("up")
        assert prompt.text == "second"
        await pilot.press("up")
        assert prompt.text == "a\nb"
        await pilot.press("down", "down")  # down moves off the recalled prompt's first line first
        assert prompt.text == "second"
        await pilot.press("down")
        assert prompt.text == ""


async def test_empty_message_is_ignored(engine):
    async with running(engine) as (app, pilot):
        await pilot.press("enter", "space", "ctrl+j", "space", "enter")
        await pilot.pause()
        assert app.chat.job is None and engine.sessions() == [] and views(app) == []


async def test_megabyte_paste_is_refused_with_a_notice_and_kept(engine):
    big = "word " * 200_000
    async with running(engine) as (app, pilot):
        prompt = app.chat.query_one(PromptInput)
        app.post_message(events.Paste(big))  # as a terminal's paste arrives: to the focused widget
        await until(pilot, lambda: prompt.text == big, "the paste")
        await pilot.press("enter")
        await until(pilot, lambda: any(n.startswith("Not sent") for n in notices(app)),
                    "the refusal notice", timeout=20)
        assert prompt.text == big
        assert engine.sessions() == []  # nothing committed, no empty session left behind
        assert app.chat.job is None


async def test_untrusted_text_is_shown_literally(engine):
    hostile = "[bold red]not markup[/] \x1b[31mred\x07 ☃ 你好 \u202eevil"
    session = engine.new_session()
    engine.store.add_message(session.id, "user", hostile)
    engine.store.add_message(session.id, "assistant", hostile)
    async with running(engine, session_id=session.id) as (app, pilot):
        user, reply = views(app)
        shown = str(user.query_one(".body", Static).content)
        assert "[bold red]not markup[/]" in shown and "␛[31mred␇" in shown and "你好" in shown
        assert "\x1b" not in shown
        assert "not markup" in reply.query_one(".body").source  # Markdown keeps the text


async def test_full_context_is_warned_about(engine_home, tiny_model):
    engine = Engine(home=engine_home, model=tiny_model, n_ctx=256)
    engine.save_settings(replace(engine.settings, max_tokens=8))
    session = engine.new_session()
    for turn in range(4):
        engine.store.add_message(session.id, "user", f"turn {turn}: " + "the cat is here " * 12)
        engine.store.add_message(session.id, "assistant", "I see the cat " * 12)
    async with running(engine, session_id=session.id) as (app, pilot):
        await say(app, pilot, "and now?")
        status = app.chat.query_one(StatusBar)
        assert status.dropped_turns > 0 and status.has_class("-warn")
        assert "oldest messages dropped" in str(status.content)
        assert any("context window is full" in n for n in notices(app))
    engine.close()


async def test_copy_message_and_code_block(engine):
    session = engine.new_session()
    engine.store.add_message(session.id, "user", "show me code")
    answer = "Here:\n\n```python\nprint('hi')\n```\n"
    engine.store.add_message(session.id, "assistant", answer)
    async with running(engine, session_id=session.id) as (app, pilot):
        await pilot.press("f5")
        assert app.clipboard == answer
        await pilot.press("ctrl+b")
        assert app.clipboard == "print('hi')\n"
        views(app)[0].focus()
        await pilot.press("f5")
        assert app.clipboard == "show me code"


async def test_keys_work_while_a_reply_streams(long_replies):
    engine = long_replies
    async with running(engine) as (app, pilot):
        await first_token(app, pilot, "go on")
        # Each press waits (up to 1 s) for the process to go idle, which it never does while
        # llama.cpp computes, so keep the presses few.
        await pilot.press("x", "ctrl+t")
        assert app.chat.query_one(PromptInput).text == "x"
        assert app.chat.query_one(MemoryPanel).display
        assert views(app)[-1].status == "pending"  # that happened mid-reply
        await pilot.press("escape")
        await until(pilot, lambda: settled(app), "the stopped reply")
        assert app.chat.query_one(PromptInput).text == "x"


async def test_quitting_mid_reply_saves_the_partial_text(long_replies):
    engine = long_replies
    async with running(engine) as (app, pilot):
        await first_token(app, pilot, "a long story")
        await pilot.press("ctrl+q")
    assert stored(engine)[-1].status == "partial"


# -- sessions -----------------------------------------------------------------------------


async def test_new_session_switch_back_and_continue(engine):
    async with running(engine) as (app, pilot):
        await say(app, pilot, "first topic")
        first = app.chat.session
        await pilot.press("ctrl+n")
        assert app.chat.session is None and views(app) == []
        await say(app, pilot, "second topic")
        assert [s.title for s in engine.sessions()] == ["second topic", "first topic"]
        listing = app.chat.query_one(SessionList)
        listing.focus()
        listing.highlighted = 1
        await pilot.press("enter")
        await until(pilot, lambda: app.chat.session and app.chat.session.id == first.id,
                    "the first session")
        assert views(app)[0].text == "first topic"
        await say(app, pilot, "more on the first")
        assert len(stored(engine, first.id)) == 4


async def test_switching_session_mid_reply_stops_it_cleanly(long_replies):
    engine = long_replies
    async with running(engine) as (app, pilot):
        await first_token(app, pilot, "keep talking")
        streaming = app.chat.session
        await pilot.press("ctrl+n")
        assert app.chat.job is None and views(app) == []
        await until(pilot, lambda: stored(engine, streaming.id)[-1].status == "partial",
                    "the left reply to be saved")
        engine.save_settings(replace(engine.settings, max_tokens=16))
        await pilot.press(*"new", "enter")
        await until(pilot, lambda: settled(app), "a reply in the new session")
        assert len(engine.sessions()) == 2


async def test_continue_a_session_after_restart(engine):
    async with running(engine) as (app, pilot):
        await say(app, pilot, "remember this")
        session_id = app.chat.session.id
    async with running(engine, session_id=session_id) as (app, pilot):
        assert [v.text for v in views(app)][0] == "remember this"
        await say(app, pilot, "and this")
    assert [m.content for m in stored(engine, session_id) if m.role == "user"] == \
        ["remember this", "and this"]


async def test_rename_session(engine):
    async with running(engine) as (app, pilot):
        await say(app, pilot, "old title")
        app.chat.query_one(SessionList).focus()
        await pilot.press("f2")
        await until(pilot, lambda: isinstance(app.screen, RenameDialog), "the rename dialog")
        app.screen.query_one(Input).value = "New [b]title[/b]"
        await pilot.press("enter")
        await until(pilot, lambda: engine.sessions()[0].title == "New [b]title[/b]", "the rename")
        assert "New [b]title[/b]" in session_rows(app)[0]


async def test_delete_session_asks_first(engine):
    async with running(engine) as (app, pilot):
        await say(app, pilot, "doomed")
        app.chat.query_one(SessionList).focus()
        await pilot.press("delete")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog), "the confirmation")
        await pilot.press("n")
        assert len(engine.sessions()) == 1
        await pilot.press("delete")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog), "the confirmation")
        await pilot.press("y")
        await until(pilot, lambda: engine.sessions() == [], "the deletion")
        assert app.chat.session is None and views(app) == []


async def test_search_filters_sessions(engine):
    async with running(engine) as (app, pilot):
        await say(app, pilot, "apples")
        await pilot.press("ctrl+n")
        await say(app, pilot, "pears")
        await pilot.press("ctrl+f", *"pear")
        await until(pilot, lambda: app.chat.query_one(OptionList).option_count == 1, "the filter")
        assert "pears" in session_rows(app)[0]
        await pilot.press(*"zzz")
        await until(pilot, lambda: "no sessions match" in session_rows(app)[0], "no match")


# -- panels, commands, settings -----------------------------------------------------------


async def test_memory_panel_toggles_shows_empty_state_and_follows_changes(engine):
    current = [engine.memory_status()]
    engine.memory_status = lambda session_id=None: current[0]
    async with running(engine) as (app, pilot):
        panel = app.chat.query_one(MemoryPanel)
        assert not panel.display
        await pilot.press("ctrl+t")
        await until(pilot, lambda: panel.status is not None, "the first poll")
        assert str(panel.query_one("#overlay", Static).content) == "no learned memory yet"
        assert str(panel.query_one("#cells", Static).content) == "cells off"
        current[0] = MemoryStatus(overlay_active=True, overlay_version=3, learning=True,
                                  learning_progress=0.5, cells_enabled=True,
                                  cell_magnitudes=[0.1, 0.4])
        await until(pilot, lambda: panel.status == current[0], "the next poll", timeout=5)
        assert "overlay v3 active" in str(panel.query_one("#overlay", Static).content)
        assert "layer  1" in str(panel.query_one("#cells", Static).content)
        current[0] = replace(current[0], cell_magnitudes=[0.0, 0.0])  # written, no learned read
        await until(pilot, lambda: panel.status == current[0], "the next poll", timeout=5)
        assert "not read yet" in str(panel.query_one("#cells", Static).content)
        current[0] = replace(current[0], problem="overlay v3 was set aside: damaged")
        await until(pilot, lambda: panel.status == current[0], "the next poll", timeout=5)
        assert "⚠ overlay v3 was set aside" in str(panel.query_one("#overlay", Static).content)
        current[0] = replace(current[0], learning_phase="building the anchors",
                             phase_progress=0.25, phase_left_s=150,
                             learning_message="building the anchors (first time)")
        await until(pilot, lambda: panel.status == current[0], "the next poll", timeout=5)
        shown = str(panel.query_one("#learning", Static).content)
        assert shown.startswith("building the anchors 25% · about 2 min left") and (
            "whole job 50%" in shown)
        assert panel.query_one(ProgressBar).progress == 0.25  # the phase's own bar
        await pilot.press("ctrl+t")
        assert not panel.display


async def type_command(app, pilot, text: str) -> None:
    """Type a ``/`` command into the prompt and send it."""
    app.chat.query_one(PromptInput).load_text(text)
    await pilot.press("enter")
    await pilot.pause()


async def test_slash_commands(engine):
    async with running(engine) as (app, pilot):
        prompt = app.chat.query_one(PromptInput)
        slash = functools.partial(type_command, app, pilot)
        await slash("/help")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await slash("/panel")
        assert app.chat.query_one(MemoryPanel).display
        await slash("/memory")
        assert isinstance(app.screen, MemoryScreen)
        await pilot.press("escape")
        await slash("/model")
        assert isinstance(app.screen, ModelPicker)
        await pilot.press("escape")
        await slash("/regen")
        assert "Nothing to regenerate yet." in notices(app)
        await slash("/system Answer in French.")
        assert engine.sessions()[0].system_prompt == "Answer in French."
        await slash("/settings")
        assert isinstance(app.screen, SettingsScreen)
        await pilot.press("escape")
        await slash("/nonsense")
        assert prompt.text == "/nonsense" and any("Unknown command" in n for n in notices(app))
        await slash("/new")
        assert app.chat.session is None and prompt.text == ""


async def test_command_palette_runs_commands(engine):
    async with running(engine) as (app, pilot):
        await pilot.press("ctrl+p", *"memory panel")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await until(pilot, lambda: app.chat.query_one(MemoryPanel).display, "the panel")


async def test_settings_are_validated_and_saved(engine):
    async with running(engine) as (app, pilot):
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, SettingsScreen), "settings")
        screen = app.screen
        screen.query_one("#temperature", Input).value = "5"
        await pilot.press("ctrl+s")
        error = str(screen.query_one("#settings-error", Static).content)
        assert "temperature must be between 0 and 2" in error and app.screen is screen
        screen.query_one("#temperature", Input).value = "warm"
        await pilot.press("ctrl+s")
        assert "temperature must be a number" in str(screen.query_one("#settings-error").content)
        screen.query_one("#temperature", Input).value = "0.3"
        screen.query_one("#max-tokens", Input).value = "100"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: app.screen is app.chat, "the settings to close")
    reopened = Engine(home=engine.home, model=engine.model_path)
    assert (reopened.settings.temperature, reopened.settings.max_tokens) == (0.3, 100)
    reopened.close()


async def test_a_message_sent_while_the_model_loads_is_sent_when_it_is_ready(engine,
                                                                            monkeypatch):
    loaded, load = threading.Event(), engine.load
    monkeypatch.setattr(engine, "load", lambda: loaded.wait(10) and load())
    app = EngramApp(engine)
    async with app.run_test(size=SIZE) as pilot:
        app.chat.query_one(PromptInput).load_text("Hello there")
        await pilot.press("enter")
        await pilot.pause()
        assert app.chat.runtime is None and not views(app)
        assert app.chat.query_one(PromptInput).text == "Hello there"  # visible until sent
        loaded.set()
        await until(pilot, lambda: settled(app), "the held message's reply")
        assert [v.role for v in views(app)] == ["user", "assistant"]
        assert app.chat.query_one(PromptInput).text == ""


async def test_model_that_fails_to_load_shows_the_error_screen(engine_home, tmp_path):
    not_a_model = tmp_path / "notes.txt"
    not_a_model.write_text("hello")
    engine = Engine(home=engine_home, model=not_a_model)
    app = EngramApp(engine)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, ModelErrorScreen), "the error screen")
        assert "not a GGUF" in str(app.screen.query_one("#error-reason", Static).content)
        assert "--model PATH" in str(app.screen.query_one("#error-fix", Static).content)
        await pilot.press("q")
    assert app.return_code == 2
    engine.close()


# -- memory: background learning, the memory screen, the / commands ----------------------


@pytest.fixture
def learning(small, engine, monkeypatch):  # noqa: F811
    """The engine with the small recipe, a gate that accepts everything and a quick debounce."""
    engine.save_settings(engine.settings.with_gate(0.0))
    monkeypatch.setattr(engine_module, "LearnQueue", functools.partial(LearnQueue, debounce=0.05))
    return engine


@pytest.fixture
def learned(learning):
    """Two sessions learned: v1 (session 1) and v2 (session 2, active)."""
    said(learning, "What is my cat called?|Pixel")
    said(learning, "Who is my manager?|Berit")
    learning.learn_now()
    return learning


def hold_learning(engine, monkeypatch) -> threading.Event:
    """Background learning waits at its first training step until the event is set."""
    release = threading.Event()
    run = engine.learning.run

    def held(progress, cancel=None, **kwargs):
        def report(fraction: float, message: str) -> None:
            progress(fraction, message)
            if "step 1" in message:
                release.wait(30)

        return run(report, cancel, **kwargs)

    monkeypatch.setattr(engine.learning, "run", held)
    return release


def memory_notices(app) -> list[str]:
    return [n for n in notices(app) if n.startswith("memory updated:")]


def text_of(widget) -> str:
    return "\n".join(str(s.content) for s in widget.query(Static))


async def test_background_learning_shows_progress_then_a_notice(learning, monkeypatch):
    engine = learning
    said(engine, "What is my cat called?|Pixel")
    engine.load()
    release = hold_learning(engine, monkeypatch)
    async with running(engine) as (app, pilot):  # loading schedules the pending session
        await pilot.press("ctrl+t")
        panel = app.chat.query_one(MemoryPanel)
        await until(pilot, lambda: panel.status is not None
                    and "step 1" in panel.status.learning_message, "the held step", timeout=60)
        bar = panel.query_one(ProgressBar)
        assert bar.display and bar.progress > 0
        assert "session 1 (1/1): step 1" in str(panel.query_one("#learning", Static).content)
        assert memory_notices(app) == []
        release.set()
        await until(pilot, lambda: memory_notices(app), "the notice", timeout=30)
        [notice] = memory_notices(app)
        # the tiny model's three steps bring out nothing: said so
        assert ("session 1 'New session': learned 0 facts, 1 not recalled yet → v1 (active)"
                in notice)
        assert "What is my cat called? → Pixel" in notice and "locality" in notice
        await until(pilot, lambda: not bar.display, "the bar to go")
        assert "overlay v1 active" in str(panel.query_one("#overlay", Static).content)


async def test_replies_and_leaving_a_session_schedule_learning(learning, monkeypatch):
    engine = learning
    monkeypatch.setattr(engine_module, "LearnQueue", LearnQueue)  # the real debounce
    async with running(engine) as (app, pilot):
        await say(app, pilot, "Who is my manager?|Berit")
        state = engine.learn_queue.state()
        assert state.scheduled and not state.running  # debounced after the reply
        await pilot.press("ctrl+n")  # leaving the session learns it at once
        await until(pilot, lambda: memory_notices(app), "the notice", timeout=60)
        assert "learned 0 facts, 1 not recalled yet → v1 (active)" in memory_notices(app)[0]
        assert engine.active_version().sessions == [1]


async def test_a_rejected_run_says_why(learning):
    engine = learning
    gate_threshold(engine, 1.5)  # above any locality: every run is rejected
    said(engine, "Who is my manager?|Berit")
    async with running(engine) as (app, pilot):
        await until(pilot, lambda: memory_notices(app), "the notice", timeout=60)
        [notice] = memory_notices(app)
        assert "NOT learned: locality" in notice and "< 1.5" in notice
        assert "v1 kept as rejected, the base model stays active" in notice
        assert engine.active_version() is None


async def test_memory_learn_beside_the_tui_keeps_every_message_and_is_followed(
        engine, tiny_model, monkeypatch):
    """``engram memory learn`` (a real process) and the TUI on one profile. While the process
    holds the learning lock (stopped there, to be sure), the TUI's own learning job skips and
    the panel says why; the chat goes on. Once the process has made its version active, the
    TUI's next reply is computed with it and the panel shows it. No message is lost."""
    said(engine, "My dog is called Rex.")  # pending: what the process learns
    learn = subprocess.Popen(small_learner(engine.home, tiny_model, "memory", "learn"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPOSITORY)
    try:
        assert learn.stderr is not None  # a PIPE
        for line in learn.stderr:  # its first step is taken holding the lock
            if b"finding what to remember" in line:
                break
        learn.send_signal(signal.SIGSTOP)
        async with running(engine) as (app, pilot):
            applied_at_reply = []  # the version the model ran each reply with
            reply = engine.runtime.reply
            monkeypatch.setattr(engine.runtime, "reply", lambda *args, **kwargs: (
                applied_at_reply.append(engine.memory.applied and engine.memory.applied.id),
                reply(*args, **kwargs))[1])
            await pilot.press("ctrl+t")
            panel = app.chat.query_one(MemoryPanel)
            engine.schedule_learning(delay=0)
            await until(pilot, lambda: panel.status is not None and panel.status.learning_message
                        == "learning stopped: another Engram process is changing this "
                        "profile's memory; try again when it is done", "the skipped job")
            await say(app, pilot, "Who is my manager?")

            learn.send_signal(signal.SIGCONT)
            out, err = await asyncio.to_thread(learn.communicate, timeout=120)
            assert learn.returncode == 0, err.decode()
            version = engine.active_version()
            assert b"learned" in out and version is not None and version.sessions == [1]
            assert engine.memory.applied is None  # not followed until the next reply
            await say(app, pilot, "Where do I live?")
            assert applied_at_reply == [None, version.id]
            await until(pilot, lambda: panel.status.overlay_version == version.id, "the panel")
            shown = str(panel.query_one("#overlay", Static).content)
            assert shown.startswith(f"overlay v{version.id} active")
            assert f"the model now runs v{version.id}" in shown  # the session's state re-read
    finally:
        if learn.poll() is None:
            learn.send_signal(signal.SIGCONT)
            learn.kill()
            learn.wait()
    assert [[m.content for m in engine.messages(s.id) if m.role == "user"]
            for s in sorted(engine.sessions(), key=lambda s: s.id)] == [
        ["My dog is called Rex."], ["Who is my manager?", "Where do I live?"]]


async def open_memory(app, pilot) -> MemoryScreen:
    await pilot.press("ctrl+o")
    await until(pilot, lambda: isinstance(app.screen, MemoryScreen), "the memory screen")
    return app.screen


async def diff_shown(pilot, screen, contains: str) -> str:
    """The diff view's text once its summary (drawn last) contains ``contains``."""
    view = screen.query_one(VersionDiffView)
    await until(pilot, lambda: contains in text_of(view), f"a diff with {contains!r}")
    return text_of(view)


def active_version(engine):
    return engine.active_version()


async def test_memory_screen_lists_versions_and_shows_a_diff(learned):
    engine = learned
    async with running(engine) as (app, pilot):
        screen = await open_memory(app, pilot)
        versions = screen.query_one(VersionList)
        labels = [str(versions.get_option_at_index(i).prompt) for i in range(versions.option_count)]
        assert labels[0].startswith("● v2 · active")
        assert re.search(r"learned s2 · locality [01]\.\d{3}", labels[0])
        assert labels[1].startswith("  v1 · superseded") and "learned s1" in labels[1]
        assert versions.selected_id == 2
        shown = await diff_shown(pilot, screen, "vs v1 (superseded)")
        assert "v2 (active" in shown and "before (v1)" in shown
        assert "sessions learned: s2 'New session'" in shown
        assert re.search(r"accepted by the gate: locality [01]\.\d{3}, [01]\.\d{3} on decided "
                         r"answers \(threshold 0\)", shown)
        assert "parameters touched:" in shown and "layer  1" in shown and "█" in shown
        assert "layer  1 down    8 (4 new)  #" in shown  # the small recipe: 4 neurons a session
        assert "s2 · Who is my manager?  (expected: Berit)" in shown and "after (v2)" in shown
        await pilot.press("down")
        shown = await diff_shown(pilot, screen, "vs the base model")
        assert "s1 · What is my cat called?" in shown and "before (the base model)" in shown
        await pilot.press("escape")
        assert app.screen is app.chat


async def test_memory_screen_forgets_rolls_back_and_resets(learned):
    engine = learned
    async with running(engine) as (app, pilot):
        screen = await open_memory(app, pilot)
        versions = screen.query_one(VersionList)
        await pilot.press("f")  # v2 is selected: it learned session 2
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog), "the confirmation")
        await pilot.press("y")
        await until(pilot, lambda: active_version(engine).id == 3, "the forget")
        assert active_version(engine).sessions == [1]
        await until(pilot, lambda: versions.selected_id == 3, "the new version selected")
        shown = await diff_shown(pilot, screen, "sessions removed: s2")
        assert "s2 · Who is my manager?" in shown and "after (v3)" in shown  # forgotten
        assert any(n.startswith("forgot session 2: v3 is active") for n in notices(app))

        versions.highlighted = 2  # v1
        await pilot.press("r")
        await until(pilot, lambda: active_version(engine).id == 1, "the rollback")
        await until(pilot, lambda: str(versions.get_option_at_index(2).prompt).startswith("●"),
                    "the timeline to follow")

        await pilot.press("R")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDialog), "the confirmation")
        await pilot.press("y")
        await until(pilot, lambda: active_version(engine).id == 4, "the reset")
        assert active_version(engine).sessions == [] and versions.selected_id == 4


async def test_memory_screen_pauses_learning_and_switches_cells(engine):
    async with running(engine) as (app, pilot):
        await say(app, pilot, "hello")
        session_id = app.chat.session.id
        screen = await open_memory(app, pilot)
        panel = screen.query_one(MemoryPanel)
        await until(pilot, lambda: panel.status is not None, "the status")
        await pilot.press("p")
        await until(pilot, lambda: engine.settings.learning_paused, "the pause")
        await until(pilot, lambda: panel.status.learning_paused, "the panel to follow")
        assert not engine.schedule_learning(session_id)
        await pilot.press("p")  # the same key resumes
        await until(pilot, lambda: not engine.settings.learning_paused, "the resume")
        enabled = panel.status.cells_enabled
        await pilot.press("c")
        await until(pilot, lambda: engine.memory_status(session_id).cells_enabled != enabled,
                    "the cells switch")
        await pilot.press("x")
        await until(pilot, lambda: any("cells of session" in n for n in notices(app)),
                    "the cells reset")


async def test_memory_screen_says_in_one_line_what_was_set_aside(engine, monkeypatch,
                                                                   tmp_path):
    from tests.test_doctor import set_aside_anchors

    monkeypatch.setenv("ENGRAM_CACHE", str(tmp_path / "cache"))  # this test's own
    async with running(engine) as (app, pilot):
        screen = await open_memory(app, pilot)
        assert not screen.query_one("#set-aside").display
        await pilot.press("escape")
        set_aside_anchors()
        screen = await open_memory(app, pilot)
        notice = screen.query_one("#set-aside", Static)
        shown = str(notice.content)
        assert notice.display and "\n" not in shown
        assert "the anchors cache (rebuilt when learning next runs)" in shown
        assert "`engram doctor` lists where, when and why" in shown


async def test_memory_slash_commands_ask_first_and_report_errors_as_notices(engine):
    async with running(engine) as (app, pilot):
        prompt = app.chat.query_one(PromptInput)
        slash = functools.partial(type_command, app, pilot)
        await slash("/reset")
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("n")
        await slash("/reset")
        await pilot.press("y")
        await until(pilot, lambda: any("nothing to reset" in n for n in notices(app)),
                    "the error as a notice")
        await slash("/rollback")
        await until(pilot, lambda: any("nothing to roll back" in n for n in notices(app)),
                    "the error as a notice")
        await slash("/rollback vx")
        assert prompt.text == "/rollback vx"  # kept, to be corrected
        assert any("Usage: /rollback [version]" in n for n in notices(app))
        await slash("/forget")
        assert any("not saved yet" in n for n in notices(app))
        await slash("/pause")
        await until(pilot, lambda: engine.settings.learning_paused, "the pause")
        await until(pilot, lambda: "learning paused for profile default" in notices(app),
                    "the notice")
        await slash("/resume")
        await until(pilot, lambda: not engine.settings.learning_paused, "the resume")
        assert app.screen is app.chat


async def test_export_and_import_memory(learned, tmp_path):
    engine = learned
    archive = tmp_path / "my memory.zip"
    async with running(engine) as (app, pilot):
        prompt = app.chat.query_one(PromptInput)
        prompt.load_text(f'/export "{archive}"')
        await pilot.press("enter")
        await until(pilot, lambda: any(n.startswith("exported v2, its sessions") for n in
                                       notices(app)), "the export")
        assert archive.exists()
        prompt.load_text(f"/import {tmp_path / 'missing.zip'}")
        await pilot.press("enter")
        await until(pilot, lambda: any(n.title == "Not done" for n in app._notifications),
                    "the refusal as a notice")
        prompt.load_text(f'/import "{archive}"')
        await pilot.press("enter")
        await until(pilot, lambda: any(n.startswith("imported my memory.zip: v3 is active")
                                       for n in notices(app)), "the import")
        assert active_version(engine).id == 3


# -- snapshots of whole screens (pytest --snapshot-update after a deliberate change) ------


@pytest.fixture
def snapshot_engine(engine, monkeypatch, tmp_path):
    """Saved history rather than live replies, no GPU, and a cache of its own (caches that
    earlier tests damaged and set aside would show on the Memory screen), so every run draws
    the same."""
    import llama_cpp

    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: False)
    monkeypatch.setenv("ENGRAM_CACHE", str(tmp_path / "cache"))
    older = engine.new_session()
    engine.rename_session(older.id, "What is a GGUF file?")
    engine.store.add_message(older.id, "user", "What is a GGUF file?")
    engine.store.add_message(older.id, "assistant", "A model file format used by llama.cpp.")
    session = engine.new_session()
    engine.rename_session(session.id, "Show me a Python loop")
    engine.store.add_message(session.id, "user", "Show me a Python loop, then a list")
    engine.store.add_message(session.id, "assistant",
                             "Here is one:\n\n```python\nfor i in range(3):\n    print(i)\n```\n\n"
                             "- first\n- second")
    engine.store.add_message(session.id, "user", "Now write a very long essay")
    engine.store.add_message(session.id, "assistant", "Once upon a time", status="partial")
    return engine, session.id


def screen_ready(*keys: str, memory: MemoryStatus | None = None):
    """A run_before that waits for the model, steadies the cursor, then presses ``keys``."""

    async def run_before(pilot):
        app = pilot.app
        await until(pilot, lambda: app.chat.runtime is not None, "the model to load")
        app.chat.query_one(PromptInput).cursor_blink = False
        await pilot.press(*keys)
        if memory is not None:
            panel = app.chat.query_one(MemoryPanel)
            await until(pilot, lambda: panel.status == memory, "the memory panel")
        await pilot.pause()

    return run_before


def test_snapshot_chat(snapshot_engine, snap_compare):
    engine, session_id = snapshot_engine
    app = EngramApp(engine, session_id=session_id)
    assert snap_compare(app, terminal_size=SIZE, run_before=screen_ready())


def test_snapshot_memory_panel(snapshot_engine, snap_compare):
    engine, session_id = snapshot_engine
    learning = MemoryStatus(overlay_active=True, overlay_version=2, learning=True,
                            learning_progress=0.4, learning_message="learning session 3…",
                            cells_enabled=True, cell_magnitudes=[0.2, 0.8, 0.5, 0.1])
    engine.memory_status = lambda session_id=None: learning
    app = EngramApp(engine, session_id=session_id)
    assert snap_compare(app, terminal_size=SIZE,
                        run_before=screen_ready("ctrl+t", memory=learning))


def test_snapshot_settings(snapshot_engine, snap_compare):
    engine, session_id = snapshot_engine
    app = EngramApp(engine, session_id=session_id)
    assert snap_compare(app, terminal_size=SIZE, run_before=screen_ready("ctrl+s"))


def test_snapshot_memory_screen(snapshot_engine, snap_compare, monkeypatch):
    """Version records as learning leaves them (the store only: no overlay files), and the
    diff of the active one as the engine would work it out."""
    engine, session_id = snapshot_engine
    monkeypatch.setattr("store.store.now", lambda: "2025-05-01T09:30:00.000+00:00")
    status = MemoryStatus(overlay_active=True, overlay_version=3, cells_enabled=True,
                          learning_message="memory updated: v3 learned session 2 (2 facts, "
                                           "locality 0.981)", cell_magnitudes=[0.0, 0.3, 0.7])
    engine.memory_status = lambda session_id=None: status

    def learned(session: int, locality: float, status: str, reason: str | None = None):
        return engine.store.add_overlay_version(
            engine.profile.id, f"overlays/fake-{session}", engine.runtime.model.sha256,
            parent_id=1 if session == 2 else None, sessions=[1, session], status=status,
            reason=reason,
            trainable_params=2560 * session, metrics={
                "event": "learn", "locality": locality, "threshold": 0.95, "kl_neutral": 0.0021,
                "learned": {str(session): {"facts": [], "corrections": []}}})

    def versions() -> None:
        v1 = learned(1, 0.998, "active")
        learned(2, 0.912, "rejected", "locality 0.912 < 0.95")
        v3 = learned(2, 0.981, "active")
        engine.memory_diff = lambda version_id: VersionDiff(
            v3, v1, [2], [], {1: (0.41, 0.41), 2: (0.0, 0.73), 3: (0.12, 0.35)}, (2560, 5120),
            [Probe(2, "Which language are my loops in?", "Python", "I am not sure.", "Python."),
             Probe(2, "What did I ask for after the loop?", "a list",
                   "A story about a dragon and a very long road home.", "A list.")])
        before = {(1, "ffn_down"): (np.array([12, 301]), np.array([0.30, 0.28]))}
        after = {**before, (2, "ffn_down"): (np.array([5, 1203, 44, 9, 870]),
                                              np.array([0.41, 0.52, 0.12, 0.33, 0.20])),
                 (3, "ffn_up"): (np.array([12, 640]), np.array([0.25, 0.24]))}
        engine.memory_neurons = lambda version_id: {v1.id: before, v3.id: after}[version_id]

    def ready(app) -> bool:
        screen = app.screen
        return isinstance(screen, MemoryScreen) and screen.query_one(MemoryPanel).status == status \
            and "Which language" in text_of(screen.query_one(VersionDiffView))

    async def run_before(pilot):
        await until(pilot, lambda: pilot.app.chat.runtime is not None, "the model to load")
        versions()
        await pilot.press("ctrl+o")
        await until(pilot, lambda: ready(pilot.app), "the memory screen")
        await pilot.pause()

    app = EngramApp(engine, session_id=session_id)
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
