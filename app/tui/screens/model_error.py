"""Shown over the chat when the model cannot be loaded: the reason and the ways out. One needs
no restart: F3 opens the chat's own model picker, and the chosen model loads in the
background; once it serves, this screen is dismissed with its runtime and the chat goes on."""

from __future__ import annotations

from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer, Static

from app.terminal import inert
from app.tui.screens import model_picker
from app.tui.screens.model_picker import Choice, ModelPicker, ModelRefused, ModelSwitched
from engine.engine import Engine
from engine.runtime import Runtime

EXIT_CODE = 2  # the CLI's code for an error the user can fix

HOW_TO_FIX = """How to fix it:
  • press F3 to choose another model (or the built-in one) and chat on now
  • or start Engram with a GGUF model file:  engram --model PATH/TO/MODEL.gguf
  • or rebuild the built-in model:  engram setup  (then start engram again)
Your sessions are safe: nothing in them was changed."""


class ModelErrorScreen(Screen[Runtime]):
    BINDINGS = [Binding("f3", "choose_model", "Choose a model"),
                Binding("q,escape", "quit", "Quit")]

    def __init__(self, engine: Engine, reason: str):
        super().__init__()
        self.engine, self.reason = engine, reason
        self.chosen: Choice | None = None  # a model chosen here, until it serves or fails

    def compose(self):
        with Vertical(id="model-error"):
            yield Static(Content("Engram could not load the model"), classes="error-title")
            yield Static(Content(inert(self.reason)), id="error-reason")
            yield Static(Content(HOW_TO_FIX), id="error-fix")
            yield Static(id="error-loading")
        yield Footer()

    def action_choose_model(self) -> None:
        if self.chosen is not None:
            self.notify(f"{self.chosen.name} is loading; wait for it, or quit.", markup=False)
            return
        self.app.push_screen(ModelPicker(self.engine.settings.model_folders, None), self._load)

    def _load(self, choice: Choice | None) -> None:
        if choice is None:
            return
        self.chosen = choice
        self.query_one("#error-loading", Static).update(Content(f"loading {inert(choice.name)}…"))
        model_picker.load(self, self.engine, choice)

    def on_model_switched(self, event: ModelSwitched) -> None:
        self.dismiss(event.runtime)

    def on_model_refused(self, event: ModelRefused) -> None:
        self.chosen = None
        self.query_one("#error-loading", Static).update("")
        self.notify(f"{event.choice.name} could not be loaded: {event.reason}",
                    title="Still no model", severity="error", timeout=15, markup=False)

    def action_quit(self) -> None:
        self.app.exit(return_code=EXIT_CODE)
