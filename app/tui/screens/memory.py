"""The memory screen: the overlay's version timeline, what the selected version changed, and
the controls (roll back, forget, reset, pause learning, this session's cells); above them, a
line when something was set aside as damaged.

The status panel beside the timeline polls the engine; when a learning run ends or another
process changes the active version, the timeline is read again.
"""

from __future__ import annotations

from dataclasses import replace

from textual import work
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer, OptionList, Static
from textual.worker import get_current_worker

from app import memory_text
from app.tui import commands, memory_actions
from app.tui.widgets.memory import MemoryPanel
from app.tui.widgets.version_diff import VersionDiffView
from app.tui.widgets.versions import VersionList
from engine import set_aside
from engine.learning import VersionDiff
from store.records import OverlayVersion

DIFF_DELAY = 0.3  # seconds a version stays highlighted before its diff is worked out
NO_VERSIONS = ("No memory versions yet. Engram learns from your sessions in the background "
               "after you chat; each run makes a version, listed here.")
ASKING = "Working out the change and asking the questions derived from the sessions, " \
         "before and after…"


class MemoryScreen(Screen):
    COMMAND_SCOPES = ("memory",)
    BINDINGS = [Binding("escape", "dismiss", "Close"), *commands.bindings("memory")]
    AUTO_FOCUS = "#versions"

    def __init__(self, engine, session_id: int | None, select: int | None = None):
        """``session_id``: the chat's open session, whose cells the cell keys act on."""
        super().__init__()
        self.engine = engine
        self.session_id = session_id
        self._select = select
        # By version: the diff and its neuron lines (the probe answers cost generations).
        self._diffs: dict[int, tuple[VersionDiff, list[str]]] = {}
        self._diff_timer = None

    def compose(self):
        yield Static(id="set-aside")
        with Horizontal(id="memory-body"):
            with Vertical(id="memory-side"):
                yield Static(Content("Memory versions"), classes="panel-title")
                yield VersionList(id="versions")
                yield MemoryPanel(self.engine.memory_status, shown=True, id="memory-status")
            yield VersionDiffView(id="diff")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one(MemoryPanel).show_session(self.session_id)
        self.reload(self._select)

    def reload(self, select: int | None = None) -> None:
        """Read the versions again, keeping the selection (or selecting ``select``), and what
        was set aside as damaged."""
        notice = set_aside.notice(self.engine.what_was_set_aside())
        self.query_one("#set-aside", Static).update(Content(notice))
        self.query_one("#set-aside").display = bool(notice)
        versions = self.engine.versions()
        self.query_one(VersionList).show(versions, select)
        if not versions:
            self.query_one(VersionDiffView).show_message(NO_VERSIONS)

    def selected(self) -> OverlayVersion | None:
        version_id = self.query_one(VersionList).selected_id
        return None if version_id is None else self.engine.version(version_id)

    # -- the selected version's diff ---------------------------------------------------

    async def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        version = self.selected()
        if version is None:
            return
        if self._diff_timer is not None:
            self._diff_timer.stop()
        if version.id in self._diffs:
            await self._show_diff(*self._diffs[version.id])
            return
        self.query_one(VersionDiffView).show_version(version, ASKING)
        self._diff_timer = self.set_timer(DIFF_DELAY, lambda: self._work_out_diff(version.id))

    @work(thread=True, exclusive=True, group="memory-diff", exit_on_error=False)
    def _work_out_diff(self, version_id: int) -> None:
        engine = self.engine
        try:
            d = engine.memory_diff(version_id)
            neurons = memory_text.neuron_lines(
                engine.memory_neurons(version_id),
                engine.memory_neurons(d.parent.id) if d.parent else {})
        except Exception as exc:  # shown in place of the diff, never a traceback
            if not get_current_worker().is_cancelled:
                self.app.call_from_thread(self._diff_failed, version_id,
                                          memory_actions.failure(exc))
            return
        if not get_current_worker().is_cancelled:
            self.app.call_from_thread(self._show_diff, d, neurons)

    async def _show_diff(self, d: VersionDiff, neurons: list[str]) -> None:
        self._diffs[d.version.id] = d, neurons
        if self.query_one(VersionList).selected_id == d.version.id:
            await self.query_one(VersionDiffView).show_diff(self.engine, self._fresh(d), neurons)

    def _fresh(self, d: VersionDiff) -> VersionDiff:
        """A diff with its versions' status as it is now (a rollback moves the statuses; what
        a version changed, and the answers, stay)."""
        engine = self.engine
        return replace(d, version=engine.version(d.version.id),
                       parent=d.parent and engine.version(d.parent.id))

    def _diff_failed(self, version_id: int, reason: str) -> None:
        if self.query_one(VersionList).selected_id == version_id:
            self.query_one(VersionDiffView).show_message(f"v{version_id}: {reason}")

    # -- changes ---------------------------------------------------------------------

    def on_memory_panel_changed(self, event: MemoryPanel.Changed) -> None:
        self.refresh_bindings()  # pause or resume
        if not event.status.learning:  # a run ended, or the active version moved
            self.reload()

    def _changed(self, version: OverlayVersion | None) -> None:
        if self.is_attached:
            self.reload(version.id if version else None)
            self.query_one(MemoryPanel).poll()

    def action_rollback(self) -> None:
        version = self.selected()
        if version is None:
            self.notify("No version to roll back to yet.")
        elif version.status == "active":
            self.notify(f"v{version.id} is already active.")
        else:
            memory_actions.rollback(self.app, self.engine, version.id, self._changed)

    def action_forget(self) -> None:
        version = self.selected()
        learned = list(version.learned) if version else []
        if not learned:
            self.notify("Select a version that learned a session (“learned s…”): its session is "
                        "the one forgotten.")
            return
        memory_actions.forget(self.app, self.engine, learned[0], self._changed)

    def action_reset(self) -> None:
        memory_actions.reset(self.app, self.engine, self._changed)

    def action_pause(self) -> None:
        memory_actions.pause(self.app, self.engine, True, self._status_changed)

    def action_resume(self) -> None:
        memory_actions.pause(self.app, self.engine, False, self._status_changed)

    def action_toggle_cells(self) -> None:
        session_id, engine = self._cells_session(), self.engine
        if session_id is None:
            return

        def toggle() -> bool:
            enabled = not engine.memory_status(session_id).cells_enabled
            engine.set_cells_enabled(session_id, enabled)
            return enabled

        memory_actions.in_background(
            self.app, toggle,
            lambda enabled: f"cells {'on' if enabled else 'off'} for session {session_id}",
            self._status_changed)

    def action_reset_cells(self) -> None:
        session_id = self._cells_session()
        if session_id is not None:
            memory_actions.in_background(
                self.app, lambda: self.engine.reset_cells(session_id),
                lambda _: f"cells of session {session_id} emptied", self._status_changed)

    def _cells_session(self) -> int | None:
        if self.session_id is None:
            self.notify("No session is open: cells belong to the session open in the chat.")
        return self.session_id

    def _status_changed(self, _) -> None:
        if self.is_attached:
            self.query_one(MemoryPanel).poll()
            self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("pause", "resume"):
            return self.engine.settings.learning_paused == (action == "resume")
        return True
