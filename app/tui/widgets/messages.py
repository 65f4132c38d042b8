"""The conversation: one focusable widget per message, replies streamed in as Markdown."""

from __future__ import annotations

from markdown_it import MarkdownIt
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownStream

from app.terminal import inert
from store.records import Message

EMPTY_HINT = ("Say something. Enter sends, Ctrl+J adds a line, Up recalls earlier prompts, "
              "/help lists the commands.")

NOTES = {
    "waiting": "thinking…",
    "pending": "writing…  (Esc stops)",
    "partial": "⏹ stopped (the partial reply is kept)",
    "error": "⚠ the reply failed",
    "interrupted": "⚠ interrupted: Engram stopped before this reply was finished",
}


class MessageView(Vertical):
    """One message. Focusable, so the copy keys know which message is meant."""

    can_focus = True

    def __init__(self, role: str, text: str, status: str = "complete"):
        super().__init__(classes=f"message -{role}")
        self.role = role
        self.text = text
        self.status = status
        self._stream: MarkdownStream | None = None

    @classmethod
    def of(cls, message: Message) -> MessageView:
        # A reply still "pending" in the store was cut off by a crash or kill: show it as such.
        status = "interrupted" if message.status == "pending" else message.status
        return cls(message.role, message.content, status)

    def compose(self):
        yield Static(Content("You" if self.role == "user" else "Engram"), classes="author")
        if self.role == "assistant":
            yield Markdown(inert(self.text), classes="body")
        else:
            yield Static(Content(inert(self.text)), classes="body")
        yield Static(classes="note")

    def on_mount(self) -> None:
        self._show_note()

    def _show_note(self, detail: str = "") -> None:
        note = NOTES.get(self.status, "")
        if detail:
            note = f"{note}: {detail}"
        widget = self.query_one(".note", Static)
        widget.update(Content(inert(note)))
        widget.display = bool(note)
        self.set_class(self.status == "partial", "-stopped")
        self.set_class(self.status in ("error", "interrupted"), "-failed")

    async def append(self, piece: str) -> None:
        """Stream a piece of the reply in (MarkdownStream batches fast pieces into one render)."""
        if self._stream is None:
            self._stream = Markdown.get_stream(self.query_one(Markdown))
            self.status = "pending"
            self._show_note()
        self.text += piece
        await self._stream.write(inert(piece))

    async def finish(self, status: str, text: str, detail: str = "") -> None:
        """End the stream and show ``text``, the reply as stored (trimmed), as history shows it."""
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        if text != self.text:
            self.text = text
            await self.query_one(Markdown).update(inert(text))
        self.status = status
        self._show_note(detail)

    def code_blocks(self) -> list[str]:
        tokens = MarkdownIt("commonmark").parse(self.text)
        return [t.content for t in tokens if t.type in ("fence", "code_block")]


class MessageList(VerticalScroll):
    """The open session's messages, kept scrolled to the newest while a reply streams."""

    async def show(self, messages: list[Message]) -> None:
        await self.remove_children()
        views = [MessageView.of(m) for m in messages if m.role in ("user", "assistant")]
        await self.mount_all(views or [Static(Content(EMPTY_HINT), classes="empty-hint")])
        self.anchor()

    async def add(self, *views: MessageView) -> None:
        await self.query(".empty-hint").remove()
        await self.mount_all(views)
        self.anchor()

    def views(self) -> list[MessageView]:
        return list(self.query_children(MessageView))

    def last_reply(self) -> MessageView | None:
        replies = [v for v in self.views() if v.role == "assistant"]
        return replies[-1] if replies else None
