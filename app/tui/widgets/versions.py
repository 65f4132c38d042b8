"""The memory's version timeline, newest first: what each version did, when, and what became
of it (active, superseded, rejected by the locality gate and why)."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from app import memory_text
from app.terminal import inert
from store.records import OverlayVersion


class VersionList(OptionList):
    def show(self, versions: list[OverlayVersion], select: int | None = None) -> None:
        """List ``versions``, keeping the highlighted one (or highlighting ``select``, else the
        active one, else the newest)."""
        keep = select or self.selected_id
        self.set_options([Option(self._label(v), id=str(v.id)) for v in versions])
        if not versions:
            self.add_option(Option(Content("no versions yet"), disabled=True))
            return
        ids = [v.id for v in versions]
        active = [v.id for v in versions if v.status == "active"]
        wanted = keep if keep in ids else (active or ids)[0]
        self.highlighted = ids.index(wanted)

    @property
    def selected_id(self) -> int | None:
        option = self.highlighted_option
        return None if option is None or option.id is None else int(option.id)

    @staticmethod
    def _label(version: OverlayVersion) -> Content:
        active = version.status == "active"
        head = f"{'● ' if active else '  '}v{version.id} · {version.status} · " \
               f"{memory_text.when(version)}"
        why = version.reason or memory_text.locality(version)
        detail = "  " + memory_text.what(version) + (f" · {why}" if why else "")
        return Content("\n").join([Content.styled(head, "bold") if active else Content(head),
                                   Content.styled(inert(detail), "dim")])
