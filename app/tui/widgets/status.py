"""One line under the chat: the model, where it runs, how fast the last reply came and how full
the context window is, so the user sees before it happens that old turns will fall out of view."""

from __future__ import annotations

from textual.content import Content
from textual.widgets import Static

from app.terminal import inert

METER_CELLS = 10
WARN_AT = 0.8


class StatusBar(Static):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.model = ""
        self.device = ""
        self.activity = "loading model…"
        self.tokens_per_s: float | None = None
        self.context_used: float | None = None
        self.dropped_turns = 0
        self.private = False

    def on_mount(self) -> None:
        self._show()

    def model_ready(self, name: str, device: str) -> None:
        self.model, self.device = name, device
        self.set_activity("")

    def set_activity(self, activity: str) -> None:
        self.activity = activity
        self._show()

    def set_reply(self, tokens_per_s: float | None, context_used: float | None,
                  dropped_turns: int = 0) -> None:
        """Figures of the last reply (None: unknown, e.g. a session opened before any reply)."""
        self.tokens_per_s = tokens_per_s or None
        self.context_used = context_used
        self.dropped_turns = dropped_turns
        self._show()

    def set_private(self, private: bool) -> None:
        self.private = private
        self._show()

    def _show(self) -> None:
        parts: list[Content] = []
        if self.model:
            parts.append(Content.styled(inert(self.model), "bold"))
            parts.append(Content(self.device))
        if self.activity:
            parts.append(Content.styled(self.activity, "italic"))
        if self.tokens_per_s:
            parts.append(Content(f"{self.tokens_per_s:.1f} tok/s"))
        if self.context_used is not None:
            parts.append(self._meter())
        if self.dropped_turns:
            parts.append(Content.styled(
                f"{self.dropped_turns} oldest messages dropped from the model's view", "bold"))
        if self.private:
            parts.append(Content.styled("private session: never learned from", "italic"))
        self.update(Content(" · ").join(parts))
        self.set_class(bool(self.dropped_turns) or (self.context_used or 0) >= WARN_AT, "-warn")

    def _meter(self) -> Content:
        used = min(max(self.context_used or 0.0, 0.0), 1.0)
        filled = round(used * METER_CELLS)
        bar = "▰" * filled + "▱" * (METER_CELLS - filled)
        text = f"context {bar} {used:.0%}"
        if used >= WARN_AT:
            return Content.styled(f"{text}: nearly full, old turns will be dropped", "bold")
        return Content(text)
