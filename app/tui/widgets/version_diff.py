"""What one memory version changed against its parent: the gate's verdict, the sessions it
learned or dropped, per-layer change magnitudes as bars, the questions derived from those
sessions answered before and after, side by side, and the neurons it changes.

The record (status, gate) shows at once; the diff follows from a worker, since asking the
questions means generating with two versions of the model.
"""

from __future__ import annotations

from textual.containers import Grid, VerticalScroll
from textual.content import Content
from textual.widgets import Static

from app import memory_text
from app.terminal import inert
from engine.learning import VersionDiff
from store.records import OverlayVersion


class VersionDiffView(VerticalScroll):
    def compose(self):
        yield Static(id="diff-summary")
        yield Static(Content("Change per layer (L2 norm, parent → this version)"),
                     classes="heading detail")
        yield Static(id="diff-layers", classes="detail")
        yield Static(Content("Questions from the sessions, asked before and after"),
                     classes="heading detail", id="probes-heading")
        yield Grid(id="diff-probes", classes="detail")
        yield Static(Content("Neurons changed: how many, how many new, the most changed"),
                     classes="heading detail")
        yield Static(id="diff-neurons", classes="detail")

    def _details(self, shown: bool) -> None:
        for widget in self.query(".detail"):
            widget.display = shown

    def show_message(self, text: str) -> None:
        self.query_one("#diff-summary", Static).update(Content(inert(text)))
        self._details(False)

    def show_version(self, version: OverlayVersion, note: str) -> None:
        """The version's own record, while its diff is worked out."""
        lines = [f"v{version.id} ({version.status}, {memory_text.when(version)})",
                 memory_text.what(version)]
        verdict = memory_text.gate(version) or version.reason
        if verdict:
            lines.append(verdict)
        self.show_message("\n".join([*lines, "", note]))

    async def show_diff(self, engine, d: VersionDiff, neurons: list[str]) -> None:
        """``neurons``: ``memory_text.neuron_lines`` of the version against its parent."""
        bars = memory_text.layer_bars(d) or ["no layer changed"]
        self.query_one("#diff-layers", Static).update(Content("\n".join(bars)))
        self.query_one("#diff-neurons", Static).update(
            Content("\n".join(neurons or ["no neuron changed"])))
        grid = self.query_one("#diff-probes", Grid)
        await grid.remove_children()
        if d.probes:
            parent = f"v{d.parent.id}" if d.parent else "the base model"
            cells = [Static(Content.styled(f"before ({parent})", "bold"), classes="probe-head"),
                     Static(Content.styled(f"after (v{d.version.id})", "bold"),
                            classes="probe-head")]
            for probe in d.probes:
                cells += [
                    Static(Content(inert(f"s{probe.session_id} · {probe.question}  "
                                           f"(expected: {probe.expected})")),
                           classes="probe-question"),
                    Static(Content(inert(probe.before or "(no answer)")), classes="probe-answer"),
                    Static(Content(inert(probe.after or "(no answer)")), classes="probe-answer"),
                ]
            await grid.mount_all(cells)
        self.query_one("#diff-summary", Static).update(
            Content(inert("\n".join(memory_text.diff_summary(engine, d)))))
        self._details(True)
        self.query_one("#probes-heading").display = grid.display = bool(d.probes)
