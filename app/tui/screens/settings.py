"""The profile's settings: the system prompt new sessions start with, and sampling.

``Engine.save_settings`` validates; its ValueError is shown here, and nothing is saved.
"""

from __future__ import annotations

from dataclasses import replace

from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static, TextArea

from app.terminal import inert
from engine.settings import Settings

FIELDS = (  # input id, label, Settings field, parse
    ("temperature", "Temperature (0–2: higher is more varied)", "temperature", float),
    ("top-p", "Top-p (0–1]", "top_p", float),
    ("max-tokens", "Max tokens per reply (1–8192)", "max_tokens", int),
    ("repeat-penalty", "Repeat penalty (1 = none – 2: higher repeats less)", "repeat_penalty",
     float),
)


class SettingsScreen(ModalScreen[bool]):
    """Dismisses with True once saved."""

    BINDINGS = [
        Binding("ctrl+s", "save", "Save"),
        Binding("escape", "dismiss(False)", "Cancel"),
    ]

    def __init__(self, engine):
        super().__init__(classes="dialog")
        self.engine = engine

    def compose(self):
        settings: Settings = self.engine.settings
        with VerticalScroll(classes="dialog-box", id="settings"):
            yield Static(Content(f"Settings · profile {inert(self.engine.profile.name)}"),
                         classes="dialog-title")
            yield Label(Content("System prompt for new sessions  (/system changes the open one)"))
            yield TextArea(settings.system_prompt, id="system-prompt", soft_wrap=True)
            for input_id, label, field, _ in FIELDS:
                yield Label(Content(label))
                yield Input(str(getattr(settings, field)), id=input_id)
            yield Static(id="settings-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save (ctrl+s)", variant="primary", id="save")
                yield Button("Cancel (esc)", id="cancel")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        else:
            self.dismiss(False)

    def action_save(self) -> None:
        changes = {"system_prompt": self.query_one("#system-prompt", TextArea).text.strip()}
        try:
            for input_id, label, field, parse in FIELDS:
                raw = self.query_one(f"#{input_id}", Input).value.strip()
                try:
                    changes[field] = parse(raw)
                except ValueError:
                    kind = "a whole number" if parse is int else "a number"
                    raise ValueError(f"{label.split(' (')[0].lower()} must be {kind}") from None
            self.engine.save_settings(replace(self.engine.settings, **changes))
        except ValueError as exc:
            error = self.query_one("#settings-error", Static)
            error.update(Content(f"Not saved: {inert(str(exc))}"))
            error.add_class("-shown")
            return
        self.app.notify("Settings saved")
        self.dismiss(True)
