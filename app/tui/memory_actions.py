"""Changes to the memory, asked for from the chat's ``/`` commands or the memory screen.

Each change runs on a worker thread (it first stops a running learning job, which can take a
moment), ends in a notice worded as ``engram memory …`` prints it, and a failure is a notice
too, never a traceback. Forgetting and resetting ask first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from textual.app import App

from app import memory_text
from app.tui.screens.confirm import ConfirmDialog
from engine.errors import EngramError
from store.store import StoreError

T = TypeVar("T")
USER_ERRORS = (EngramError, StoreError)


def failure(exc: Exception) -> str:
    """An exception as a notice shows it: a user's error by its message, a bug by its type too."""
    return str(exc) if isinstance(exc, USER_ERRORS) else f"{type(exc).__name__}: {exc}"


def in_background(app: App, change: Callable[[], T], said: Callable[[T], str],
                  then: Callable[[T], object] | None = None) -> None:
    """Run ``change`` on a worker thread; notify ``said(result)``, then call ``then(result)``
    on the UI thread. A failure is notified and nothing else happens."""

    def run() -> None:
        try:
            result = change()
        except Exception as exc:  # shown as a notice; the memory is unchanged
            app.call_from_thread(app.notify, failure(exc), title="Not done",
                                 severity="error", timeout=10, markup=False)
            return
        app.call_from_thread(done, result)

    def done(result: T) -> None:
        app.notify(said(result), timeout=10, markup=False)
        if then is not None:
            then(result)

    app.run_worker(run, thread=True, group="memory-change", exit_on_error=False)


def rollback(app: App, engine, version_id: int | None,
             then: Callable[[object], object] | None = None) -> None:
    """Make ``version_id`` (None: the active version's parent) the active version."""
    in_background(app, lambda: engine.rollback_memory(version_id), memory_text.rolled_back, then)


def forget(app: App, engine, session_id: int,
           then: Callable[[object], object] | None = None) -> None:
    """After a yes: a new active version without the session's neurons."""

    def answered(yes: bool | None) -> None:
        if yes:
            in_background(app, lambda: engine.forget_session(session_id),
                          lambda version: memory_text.forgot(session_id, version), then)

    app.push_screen(ConfirmDialog(
        f"Forget session {session_id} {memory_text.title(engine, session_id)}? A new memory "
        "version without what it taught becomes active; it is learned again only if it gets "
        "new messages. A rollback undoes this.", yes="Forget"), answered)


def reset(app: App, engine, then: Callable[[object], object] | None = None) -> None:
    """After a yes: a new, empty active version."""

    def answered(yes: bool | None) -> None:
        if yes:
            in_background(app, engine.reset_memory, memory_text.was_reset, then)

    app.push_screen(ConfirmDialog(
        f"Forget everything profile {engine.profile.name!r} has learned? The sessions so far "
        "will not be learned again. A rollback undoes this.", yes="Reset"), answered)


def pause(app: App, engine, paused: bool, then: Callable[[object], object] | None = None) -> None:
    """Pause (stopping a running job) or resume learning."""
    in_background(app, lambda: engine.pause_learning(paused),
                  lambda _: memory_text.learning_state(engine), then)
