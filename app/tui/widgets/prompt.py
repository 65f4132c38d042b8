"""The multi-line prompt: Enter sends, Ctrl+J (or Shift+Enter where the terminal reports it)
adds a line, Up on the first line of an empty prompt walks back through earlier prompts."""

from __future__ import annotations

from textual import events
from textual.message import Message
from textual.widgets import TextArea

NEWLINE_KEYS = ("ctrl+j", "shift+enter")
WRAP_LIMIT = 20_000  # characters; beyond this the prompt stops soft-wrapping (see _fit_wrap)


class PromptInput(TextArea):
    class Submitted(Message):
        def __init__(self, text: str):
            super().__init__()
            self.text = text

    def __init__(self, **kwargs):
        super().__init__(soft_wrap=True, tab_behavior="focus", **kwargs)
        self.prompts: list[str] = []
        self._browsing: int | None = None  # index into history while walking through it

    def _on_key(self, event: events.Key) -> None:
        # Textual calls TextArea's own _on_key after this one unless the default is prevented.
        # TextArea inserts a newline on Enter; here Enter sends and the newline keys insert one.
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.post_message(self.Submitted(self.text))
        elif event.key in NEWLINE_KEYS and not self.read_only:
            event.stop()
            event.prevent_default()
            self.insert("\n")

    def _fit_wrap(self, length: int) -> None:
        """Soft-wrap only a prompt of sane size: TextArea re-wraps a long line on every
        keystroke, so a pasted megabyte would take seconds per key. Unwrapped it stays instant."""
        wrap = length <= WRAP_LIMIT
        if self.soft_wrap != wrap:
            self.soft_wrap = wrap

    def _on_paste(self, event: events.Paste) -> None:
        # Runs before TextArea's own _on_paste, which inserts the text.
        self._fit_wrap(len(self.text) + len(event.text))

    def remember(self, text: str) -> None:
        self.prompts.append(text)
        self._browsing = None

    def action_cursor_up(self, select: bool = False) -> None:
        on_first_line = self.cursor_location[0] == 0
        if not select and on_first_line and (self._browsing is not None or not self.text):
            self._recall(-1)
        else:
            super().action_cursor_up(select)

    def action_cursor_down(self, select: bool = False) -> None:
        on_last_line = self.cursor_location[0] == self.document.line_count - 1
        if not select and on_last_line and self._browsing is not None:
            self._recall(+1)
        else:
            super().action_cursor_down(select)

    def _recall(self, step: int) -> None:
        start = len(self.prompts) if self._browsing is None else self._browsing
        index = start + step
        if index < 0 or not self.prompts:
            return
        if index >= len(self.prompts):  # walked past the newest: back to an empty prompt
            self._browsing = None
            self.clear()
            return
        self._browsing = index
        self._fit_wrap(len(self.prompts[index]))
        self.load_text(self.prompts[index])
        self.move_cursor((0, len(self.document[0])))

    def _on_text_area_changed(self, event: TextArea.Changed) -> None:
        if not self.soft_wrap:
            self._fit_wrap(len(self.text))
        # Editing a recalled prompt makes it a new draft: Up moves the cursor again.
        if self._browsing is not None and self.text != self.prompts[self._browsing]:
            self._browsing = None
