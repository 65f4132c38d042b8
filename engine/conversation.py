"""One session's dialogue: history from the store, replies from the runtime, every message
committed.

Each reply is computed with the memory version stored as active, even one another process
(``engram memory learn``) made active while the chat ran. The user's message is committed
before generation starts. The reply is committed as
``pending`` at once, its text flushed while it streams, and finally marked ``complete``,
``partial`` (stopped) or ``error`` (crashed): a reply is never silently lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from engine.memory import OverlayMemory
from engine.prompt import Turn
from engine.runtime import Reply, Runtime, Sampling
from engine.session_state import SessionStates
from store.records import Message, Session
from store.store import Store

FLUSH_SECONDS = 0.5
TITLE_CHARS = 60


class ChatReply:
    """A streaming reply that writes itself to the store as it goes."""

    def __init__(self, conversation: Conversation, reply: Reply, message: Message):
        self.conversation = conversation
        self.reply = reply
        self.message = message

    @property
    def stats(self):
        return self.reply.stats

    @property
    def text(self) -> str:
        return self.reply.text

    def cancel(self) -> None:
        self.reply.cancel()

    def __iter__(self) -> Iterator[str]:
        store = self.conversation.store
        status = "error"
        last_flush = time.monotonic()
        try:
            for piece in self.reply:
                yield piece
                if time.monotonic() - last_flush > FLUSH_SECONDS:
                    store.finish_message(self.message.id, self.reply.text, "pending")
                    last_flush = time.monotonic()
            status = "partial" if self.reply.stats.stopped else "complete"
        except (GeneratorExit, KeyboardInterrupt):
            status = "partial"  # the consumer stopped reading, or Ctrl+C: keep what was said
            raise
        finally:
            stats = self.reply.stats
            self.message = store.finish_message(
                self.message.id, self.reply.text.strip(), status,
                prompt_tokens=stats.prompt_tokens, completion_tokens=stats.completion_tokens,
                seconds=round(stats.seconds, 3), tokens_per_s=round(stats.tokens_per_s, 2),
            )
            if status != "error":
                self.conversation.save_state()
            if self.conversation.on_reply is not None:
                self.conversation.on_reply(self.conversation.session.id)


class Conversation:
    """``on_reply(session_id)`` is called after each reply is stored (the engine schedules
    learning from it)."""

    def __init__(self, store: Store, runtime: Runtime, session: Session,
                 on_reply: Callable[[int], object] | None = None,
                 states: SessionStates | None = None, memory: OverlayMemory | None = None):
        self.store = store
        self.runtime = runtime
        self.session = session
        self.on_reply = on_reply
        self.states = states  # the session's cells and saved KV cache (None: neither)
        self.memory = memory  # the profile's versions, followed before each reply (None: no)

    def messages(self) -> list[Message]:
        return self.store.messages(self.session.id)

    def turns(self) -> list[Turn]:
        return [Turn(m.role, m.content) for m in self.messages()
                if m.role in ("user", "assistant") and m.content]

    def send(self, text: str, sampling: Sampling) -> ChatReply:
        """Commit the user's message and start the reply (InputTooLong leaves nothing behind)."""
        text = text.strip()
        if not text:
            raise ValueError("empty message")
        turns = self.turns() + [Turn("user", text)]
        reply = self._reply(turns, sampling)
        if not any(m.role == "user" for m in self.messages()):
            self.session = self.store.update_session(self.session.id, title=_title(text))
        self.store.add_message(self.session.id, "user", text)
        return self._start(reply)

    def regenerate(self, sampling: Sampling) -> ChatReply:
        """Replace the last assistant reply with a new one."""
        messages = self.messages()
        if messages and messages[-1].role == "assistant":
            self.store.delete_message(messages[-1].id)
        turns = self.turns()
        if not turns or turns[-1].role != "user":
            raise ValueError("nothing to regenerate")
        return self._start(self._reply(turns, sampling))

    def _reply(self, turns: list[Turn], sampling: Sampling) -> Reply:
        if self.memory is not None:
            self.memory.follow()  # if it cannot, the version before serves and the panel says why
        states = self.states
        if states is None:
            return self.runtime.reply(turns, self.session.system_prompt, sampling)
        session_id = self.session.id
        return self.runtime.reply(
            turns, self.session.system_prompt, sampling, owner=states.key(session_id),
            prepare=lambda prompt: states.prepare(session_id, turns, prompt))

    def save_state(self) -> None:
        """Snapshot the session's KV cache after a reply; a failure only costs a re-read."""
        if self.states is not None:
            try:
                self.states.save(self.session.id)
            except OSError as exc:
                self.states.problems[self.session.id] = f"the session state was not saved: {exc}"

    def _start(self, reply: Reply) -> ChatReply:
        message = self.store.add_message(self.session.id, "assistant", "", status="pending",
                                         model=self.runtime.name)
        return ChatReply(self, reply, message)


def _title(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1] + "…"
