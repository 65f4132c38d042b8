"""The Engram app: the chat screen, with the model loading behind it on a worker thread.

If the model cannot load, a screen over the chat says why and what to do, and lets the user
choose another model; once one serves, the chat goes on with it in a new session. Once a
model has loaded, the chat schedules the sessions left unlearned for background learning, and
each learning run ends in a notice of what it learned and whether the locality gate let it in.
"""

from __future__ import annotations

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.message import Message

from app import memory_text
from app.tui.commands import EngramCommands
from app.tui.screens.chat import ChatScreen
from app.tui.screens.model_error import ModelErrorScreen
from app.tui.screens.model_picker import ModelSwitched
from engine.errors import ModelError
from engine.learning import LearnResult
from engine.runtime import Runtime
from store import paths


class LearningFinished(Message):
    """Posted from the engine's learning thread when a background run ends."""

    def __init__(self, results: list[LearnResult]):
        super().__init__()
        self.results = results


class EngramApp(App[None]):
    TITLE = "Engram"
    CSS_PATH = paths.asset("styles", "engram.tcss")
    COMMANDS = App.COMMANDS | {EngramCommands}
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", priority=True)]

    def __init__(self, engine, session_id: int | None = None, private: bool = False):
        super().__init__()
        self.engine = engine
        self._session_id = session_id
        self._private = private

    def on_mount(self) -> None:
        self.chat = ChatScreen(self.engine, self._session_id, self._private)
        self.push_screen(self.chat)
        if self.engine.store.repaired:
            self.notify(self.engine.store.repaired, severity="warning", timeout=30, markup=False)
        if self.engine.store.read_only:  # sessions can be read; a message would not be sent
            self.notify(f"Nothing can be saved: {self.engine.store.read_only}",
                        severity="warning", timeout=30, markup=False)
        # post_message, not call_from_thread: the learning thread must never wait on the UI
        # (the engine joins it on close, after the UI has gone).
        self.engine.on_learned = lambda results: self.post_message(LearningFinished(results))
        self._load_model()

    @work(thread=True, exit_on_error=False)
    def _load_model(self) -> None:
        try:
            runtime = self.engine.load()
        except Exception as exc:  # any failure gets the error screen, never a traceback
            reason = str(exc) if isinstance(exc, ModelError) else f"{type(exc).__name__}: {exc}"
            self.call_from_thread(self.push_screen, ModelErrorScreen(self.engine, reason),
                                  self._chosen_model_serves)
            return
        self.call_from_thread(self.chat.model_ready, runtime)

    def _chosen_model_serves(self, runtime: Runtime | None) -> None:
        """The error screen's model has loaded: the chat takes it as one chosen with F3."""
        assert runtime is not None  # the screen is dismissed only with a model that serves
        self.chat.post_message(ModelSwitched(runtime))

    def on_learning_finished(self, event: LearningFinished) -> None:
        for result in event.results:
            if result.version is not None:  # "nothing to learn" stays in the memory panel
                self.notify(f"memory updated: {memory_text.describe(self.engine, result)}",
                            severity="information" if result.accepted else "warning",
                            timeout=15, markup=False)
