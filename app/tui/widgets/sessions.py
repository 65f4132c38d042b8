"""The sessions sidebar: a search box over the profile's sessions, newest first."""

from __future__ import annotations

from textual.containers import Vertical
from textual.content import Content
from textual.message import Message
from textual.widgets import Input, OptionList
from textual.widgets.option_list import Option

from app.terminal import inert
from app.tui import commands
from store.records import Session

TITLE_CELLS = 27  # what fits beside the marker in the sidebar's width (engram.tcss)


class SessionList(OptionList):
    """Rename and delete keys act on the highlighted row, which need not be the open session."""

    BINDINGS = commands.bindings("sessions")

    class Action(Message):
        """A session action asked for from the list (handled by the chat screen)."""

        def __init__(self, action: str, session_id: int):
            super().__init__()
            self.action = action
            self.session_id = session_id

    def _post_action(self, action: str) -> None:
        option = self.highlighted_option
        if option is not None and option.id is not None:
            self.post_message(self.Action(action, int(option.id)))

    def action_rename_session(self) -> None:
        self._post_action("rename_session")

    def action_delete_session(self) -> None:
        self._post_action("delete_session")


class SessionsSidebar(Vertical):
    class Opened(Message):
        def __init__(self, session_id: int):
            super().__init__()
            self.session_id = session_id

    def __init__(self, sessions, **kwargs):
        """``sessions(search)`` lists the sessions (the engine's, so the store stays the truth)."""
        super().__init__(**kwargs)
        self._sessions = sessions
        self.current_id: int | None = None

    def compose(self):
        yield Input(placeholder="Search sessions", id="session-search")
        yield SessionList(id="session-list")

    def reload(self, current_id: int | None = None) -> None:
        """Re-read the list (titles, order and counts change as the user chats)."""
        self.current_id = current_id
        search = self.query_one(Input).value.strip()
        rows = self._sessions(search or None)
        listing = self.query_one(SessionList)
        highlighted = listing.highlighted_option
        keep = highlighted.id if highlighted is not None else None
        listing.set_options([Option(self._label(s), id=str(s.id)) for s in rows])
        ids = [str(s.id) for s in rows]
        for wanted in (str(current_id), keep):
            if wanted in ids:
                listing.highlighted = ids.index(wanted)
                break
        if not rows:
            listing.add_option(Option(Content("no sessions match" if search else "no sessions yet"),
                                      disabled=True))

    def _label(self, session: Session) -> Content:
        marker = "● " if session.id == self.current_id else "  "
        count = f"{session.message_count} message{'s' if session.message_count != 1 else ''}"
        extra = " · private" if session.private else ""
        title = Content(inert(" ".join(session.title.split()))).truncate(TITLE_CELLS,
                                                                             ellipsis=True)
        title = Content(marker) + title
        return Content("\n").join([title, Content.styled(f"  {count}{extra}", "dim")])

    def focus_search(self) -> None:
        self.query_one(Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.reload(self.current_id)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.query_one(SessionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.post_message(self.Opened(int(event.option.id)))
