"""The memory panel: what the model has learned and is learning, from ``Engine.memory_status``.

It polls once a second while shown (on a worker thread, so a slow status never stalls typing),
redraws only when the status changed and then posts ``Changed``. Empty states say plainly that
nothing is there yet. The chat toggles it; the memory screen shows it always.
"""

from __future__ import annotations

from collections.abc import Callable

from textual import work
from textual.containers import VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.widgets import ProgressBar, Static

from app.terminal import duration, inert
from engine.memory_status import MemoryStatus

POLL_SECONDS = 1.0
BAR_CELLS = 12


class MemoryPanel(VerticalScroll):
    class Changed(Message):
        def __init__(self, status: MemoryStatus):
            super().__init__()
            self.status = status

    def __init__(self, status_of: Callable[[int | None], MemoryStatus], shown: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        self._status_of = status_of
        self._shown = shown
        self.session_id: int | None = None
        self.status: MemoryStatus | None = None

    def compose(self):
        yield Static(Content("Memory"), classes="panel-title")
        yield Static(Content("Learned memory"), classes="heading")
        yield Static(id="overlay")
        yield Static(Content("Learning"), classes="heading")
        yield Static(id="learning")
        yield ProgressBar(total=1.0, show_eta=False, id="learning-progress")
        yield Static(Content("Session cells"), classes="heading")
        yield Static(id="cells")

    def on_mount(self) -> None:
        self._timer = self.set_interval(POLL_SECONDS, self.poll, pause=True)
        self.display = False
        if self._shown:
            self.toggle()

    def toggle(self) -> None:
        self.display = not self.display
        if self.display:
            self.poll()
            self._timer.resume()
        else:
            self._timer.pause()

    def show_session(self, session_id: int | None) -> None:
        self.session_id = session_id
        if self.display:
            self.poll()

    @work(thread=True, exclusive=True, group="memory-poll", exit_on_error=False)
    def poll(self) -> None:
        try:
            status = self._status_of(self.session_id)
        except Exception as exc:  # a broken status must not take the chat down with it
            self.app.call_from_thread(self._unavailable, f"{type(exc).__name__}: {exc}")
            return
        self.app.call_from_thread(self.show, status)

    def _unavailable(self, reason: str) -> None:
        self.status = None
        self.query_one("#overlay", Static).update(
            Content(f"memory status unavailable ({inert(reason)})"))

    def show(self, status: MemoryStatus) -> None:
        if status == self.status:
            return
        self.status = status
        if status.overlay_active:
            overlay = f"overlay v{status.overlay_version} active" if status.overlay_version \
                is not None else "overlay active"
        else:
            overlay = "no learned memory yet"
        if status.problem:
            overlay += f" · ⚠ {inert(status.problem)}"
        self.query_one("#overlay", Static).update(Content(overlay))
        if status.learning and status.learning_phase:
            left = f" · about {duration(status.phase_left_s)} left" if status.phase_left_s else ""
            learning = (f"{status.learning_phase} {status.phase_progress or 0:.0%}{left} · "
                        f"{inert(status.learning_message)} · whole job "
                        f"{status.learning_progress or 0:.0%}")
        elif status.learning:
            learning = inert(status.learning_message) or "learning from your sessions…"
        elif status.learning_paused:
            learning = "paused: nothing is learned (/resume)"
        else:
            learning = inert(status.learning_message) or "not learning right now"
        self.query_one("#learning", Static).update(Content(learning))
        # Each phase has a bar of its own (dequantising and the anchors take minutes the first
        # time, training most of every run); without one, the whole job's.
        done = status.phase_progress if status.learning_phase else status.learning_progress
        progress = self.query_one(ProgressBar)
        progress.display = status.learning
        progress.update(total=1.0 if done is not None else None, progress=done or 0.0)
        self.query_one("#cells", Static).update(self._cells(status))
        self.post_message(self.Changed(status))

    @staticmethod
    def _cells(status: MemoryStatus) -> Content:
        if not status.cells_enabled:
            return Content("cells off")
        magnitudes = status.cell_magnitudes
        if not magnitudes:
            return Content("cells on · nothing held for this session yet")
        if not any(magnitudes):
            return Content("cells on · holding what left the window; not read yet (the read "
                           "is learned in the background once you have a long session)")
        top = max(magnitudes)
        rows = []
        for layer, value in enumerate(magnitudes):
            bar = "█" * round(BAR_CELLS * value / top)
            rows.append(f"layer {layer:>2} {bar:<{BAR_CELLS}} {value:.2f}")
        return Content("\n".join(rows))
