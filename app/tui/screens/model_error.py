"""Shown instead of the chat when the model cannot be loaded: the reason and the way out."""

from __future__ import annotations

from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer, Static

from app.terminal import inert

EXIT_CODE = 2  # the CLI's code for an error the user can fix

HOW_TO_FIX = """How to fix it:
  • start Engram with a GGUF model file:  engram --model PATH/TO/MODEL.gguf
  • or rebuild the built-in model:  engram setup  (then start engram again)
Your sessions are safe: nothing in them was changed."""


class ModelErrorScreen(Screen):
    BINDINGS = [Binding("q,escape", "quit", "Quit")]

    def __init__(self, reason: str):
        super().__init__()
        self.reason = reason

    def compose(self):
        with Vertical(id="model-error"):
            yield Static(Content("Engram could not load the model"), classes="error-title")
            yield Static(Content(inert(self.reason)), id="error-reason")
            yield Static(Content(HOW_TO_FIX), id="error-fix")
        yield Footer()

    def action_quit(self) -> None:
        self.app.exit(return_code=EXIT_CODE)
