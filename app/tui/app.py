"""The Engram app: the chat screen, with the model loading behind it on a worker thread.

If the model cannot load, the chat gives way to a screen that says why and what to do.
"""

from __future__ import annotations

from textual import work
from textual.app import App
from textual.binding import Binding

from app.tui.commands import EngramCommands
from app.tui.screens.chat import ChatScreen
from app.tui.screens.model_error import ModelErrorScreen
from engine.errors import ModelError
from store.paths import ASSETS


class EngramApp(App[None]):
    TITLE = "Engram"
    CSS_PATH = ASSETS / "styles" / "engram.tcss"
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
        self._load_model()

    @work(thread=True, exit_on_error=False)
    def _load_model(self) -> None:
        try:
            runtime = self.engine.load()
        except Exception as exc:  # any failure gets the error screen, never a traceback
            reason = str(exc) if isinstance(exc, ModelError) else f"{type(exc).__name__}: {exc}"
            self.call_from_thread(self.switch_screen, ModelErrorScreen(reason))
            return
        self.call_from_thread(self.chat.model_ready, runtime)
