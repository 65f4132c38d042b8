"""The TUI driven through Textual's Pilot against a real Engine and the tiny generated model.

Tests wait on conditions (``until``), never on fixed sleeps: the tiny model answers in
milliseconds, while a long reply (``max_tokens`` 4000) streams for many seconds, which
gives the stop and responsiveness tests a reply that is reliably still running.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import replace

import pytest
from textual import events
from textual.widgets import Input, OptionList, Static

from app.tui.app import EngramApp
from app.tui.screens.confirm import ConfirmDialog
from app.tui.screens.help import HelpScreen
from app.tui.screens.model_error import ModelErrorScreen
from app.tui.screens.rename import RenameDialog
from app.tui.screens.settings import SettingsScreen
from app.tui.widgets.memory import MemoryPanel
from app.tui.widgets.messages import MessageList
from app.tui.widgets.prompt import PromptInput
from app.tui.widgets.sessions import SessionList
from app.tui.widgets.status import StatusBar
from engine.engine import Engine
from engine.memory_status import MemoryStatus

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
        await pilot.press("ctrl+t")
        assert not panel.display


async def test_slash_commands(engine):
    async with running(engine) as (app, pilot):
        prompt = app.chat.query_one(PromptInput)

        async def slash(text):
            prompt.load_text(text)
            await pilot.press("enter")
            await pilot.pause()

        await slash("/help")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await slash("/memory")
        assert app.chat.query_one(MemoryPanel).display
        await slash("/model")
        assert any("--model PATH" in n for n in notices(app))
        await slash("/export")
        await slash("/reset")
        assert sum("arrives with the memory features" in n for n in notices(app)) == 2
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


# -- snapshots of whole screens (pytest --snapshot-update after a deliberate change) ------


@pytest.fixture
def snapshot_engine(engine, monkeypatch):
    """Saved history rather than live replies, and no GPU, so every run draws the same."""
    import llama_cpp

    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: False)
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
