"""Keys and ``/`` commands, generated from the command table so it is never out of date."""

from __future__ import annotations

from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Static

from app.tui.commands import COMMANDS
from app.tui.widgets.prompt import NEWLINE_KEYS

WHERE = {"sessions": " (sessions list)", "memory": " (memory screen)"}
PROMPT_KEYS = (
    ("enter", "send the message"),
    (" / ".join(NEWLINE_KEYS), "new line in the message"),
    ("up / down", "earlier prompts (on the first line of an empty prompt)"),
    ("tab", "move between the sessions list, messages and the prompt"),
    ("ctrl+p", "command palette: every command by name"),
    ("ctrl+q", "quit (everything is saved as you go)"),
)


def help_text() -> str:
    width = 22
    lines = ["Prompt"] + [f"  {key:<{width}}{what}" for key, what in PROMPT_KEYS] + ["", "Commands"]
    slashes = [f"/{c.slash} {c.argument}".rstrip() if c.slash else "" for c in COMMANDS]
    slash_width = max(map(len, slashes)) + 2
    for c, slash in zip(COMMANDS, slashes, strict=True):
        key = (c.key or "") + WHERE.get(c.scope, "")
        lines.append(f"  {key:<{width}}{slash:<{slash_width}}{c.help}")
    lines += ["", "A message that starts with / is a command; "
                  "start it with a space to send it as text."]
    return "\n".join(lines)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "dismiss(None)", "Close")]

    def __init__(self):
        super().__init__(classes="dialog")

    def compose(self):
        with VerticalScroll(classes="dialog-box", id="help"):
            yield Static(Content("Engram · keys and commands  (Esc closes)"),
                         classes="dialog-title")
            yield Static(Content(help_text()))
