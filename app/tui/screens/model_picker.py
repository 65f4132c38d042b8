"""The model picker (F3, /model): the GGUF models on this machine, as ``engram models`` lists
them, plus the built-in model; the one in use is marked. Enter chooses, Esc closes.

Finding the models reads each file's GGUF header (seconds for a large vocabulary the first
time, memoised after), so the list is filled from a worker thread; the chosen one loads on
another (``load``), for the chat and for the error screen shown when the model would not load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual import work
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Static

from app.terminal import inert
from app.tui.memory_actions import failure
from engine import model_catalog
from engine.engine import Engine
from engine.model_catalog import Found, Model
from engine.runtime import Runtime

CURRENT = "●"
HINT = ("Each model keeps its own learned memory. Choosing one loads it in the background "
        "and starts a new session; your sessions stay in the list.")


@dataclass(frozen=True)
class Choice:
    name: str
    path: Path | None  # None: the built-in model, assembled from its package when chosen


class ModelSwitched(Message):
    """The chosen model has loaded and serves now."""

    def __init__(self, runtime: Runtime):
        super().__init__()
        self.runtime = runtime


class ModelRefused(Message):
    """The chosen model did not load; what served before (if anything) still does."""

    def __init__(self, choice: Choice, reason: str):
        super().__init__()
        self.choice, self.reason = choice, reason


def load(screen: Screen, engine: Engine, choice: Choice) -> None:
    """Serve ``choice`` (the engine's ``switch_model``) on a worker thread: loading takes
    seconds to minutes. ``screen`` is then posted ModelSwitched, or ModelRefused with the
    reason in one line."""

    def run() -> None:
        try:
            runtime = engine.switch_model(choice.path)
        except Exception as exc:  # shown by the screen in one line, never a traceback
            screen.post_message(ModelRefused(choice, failure(exc)))
            return
        screen.post_message(ModelSwitched(runtime))

    screen.run_worker(run, thread=True, group="model", exit_on_error=False)


class ModelPicker(ModalScreen[Choice | None]):
    """``current``: the model in use, marked and listed even when found nowhere else (None:
    none is in use, as when the model would not load)."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Close")]

    def __init__(self, folders: list[str], current: Path | None):
        super().__init__(classes="dialog")
        self.folders = folders
        self.current = current.resolve() if current is not None else None
        self.choices: list[Choice] = []

    def compose(self):
        with Vertical(classes="dialog-box", id="model-picker"):
            yield Static(Content("Models  (Enter loads the highlighted one · Esc closes)"),
                         classes="dialog-title")
            yield DataTable(id="models", cursor_type="row", zebra_stripes=True)
            yield Static(Content(HINT), classes="dialog-text", id="model-hint")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns(" ", *model_catalog.COLUMNS)
        table.loading = True
        self._find()

    @work(thread=True, exit_on_error=False)
    def _find(self) -> None:
        models = model_catalog.listing(self.folders)
        if self.current is not None and not any(self._is_current(m) for m in models):
            # a --model path outside those places
            found = model_catalog.describe(Found(self.current.stem, "--model", self.current))
            models = ([found] if found else []) + models
        self.app.call_from_thread(self._show, models)

    def _is_current(self, model: Model) -> bool:
        return self.current is not None and Path(model.path).resolve() == self.current

    def _show(self, models: list[Model]) -> None:
        table = self.query_one(DataTable)
        for model in models:
            mark = CURRENT if self._is_current(model) else ""
            table.add_row(mark, *map(inert, model_catalog.cells(model)))
            self.choices.append(Choice(model.name, Path(model.path)))
        if not any(m.source == "engram" for m in models):  # not assembled yet
            table.add_row("", "built-in", *["?"] * 7, "engram (assembled when chosen)")
            self.choices.append(Choice("built-in", None))
        current = [i for i, m in enumerate(models) if self._is_current(m)]
        table.move_cursor(row=current[0] if current else 0)
        table.loading = False
        table.focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.dismiss(self.choices[event.cursor_row])
