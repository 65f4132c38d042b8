"""Asks for a session's new title."""

from __future__ import annotations

from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Input, Static


class RenameDialog(ModalScreen[str | None]):
    """Dismisses with the new title, or None when cancelled."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, title: str):
        super().__init__(classes="dialog")
        self.current = title

    def compose(self):
        with Vertical(classes="dialog-box"):
            yield Static(Content("Rename session  (Enter saves, Esc cancels)"),
                         classes="dialog-text")
            yield Input(value=self.current, id="title")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)
