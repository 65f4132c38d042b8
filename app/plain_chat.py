"""Line-based chat for pipes and plain terminals: one input line is one user message.

Replies stream to stdout; notices and per-reply stats go to stderr so pipes stay clean.
Ctrl+C stops the reply being written (its partial text is kept); at the prompt it quits.
"""

from __future__ import annotations

from typing import BinaryIO, TextIO

from app.terminal import inert
from engine.conversation import Conversation
from engine.engine import Engine
from engine.errors import ChatTemplateRefused, EngramError, InputTooLong


class StdinNotText(EngramError):
    pass


def read_lines(stream: BinaryIO):
    """Yield decoded input lines; refuse non-UTF-8 bytes with the line number."""
    for number, raw in enumerate(stream, start=1):
        try:
            yield raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise StdinNotText(
                f"input line {number} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                f"{exc.start + 1}); messages before it were saved"
            ) from None


def states_note(conversation: Conversation) -> str:
    """Why the session's saved state was not used (its history re-read), or ""."""
    states = conversation.states
    return states.problems.get(conversation.session.id, "") if states is not None else ""


def run(engine: Engine, session_id: int | None, private: bool,
        stdin: BinaryIO, out: TextIO, err: TextIO) -> int:
    if engine.store.read_only:  # before a line is read: no message is taken and then lost
        raise EngramError(f"{engine.store.read_only} (reading still works: `engram sessions`, "
                          "`engram memory show`)")
    interactive = stdin.isatty()
    engine.load()
    problem = engine.memory_status().problem
    if problem:
        print(f"[memory: {inert(problem)}]", file=err)
    session = engine.session(session_id) if session_id else engine.new_session(private)
    conversation = engine.conversation(session)
    if interactive:
        print(f"Engram · {engine.runtime.name} on {engine.runtime.device} · session "
              f"{session.id} · Ctrl+C stops a reply, Ctrl+D quits", file=err)
    lines = read_lines(stdin)
    shown = ""
    while True:
        if interactive:
            print("you> ", end="", file=err, flush=True)
        try:
            text = next(lines)
        except (StopIteration, KeyboardInterrupt):
            break
        if not text.strip():
            continue
        try:
            reply = conversation.send(text, engine.settings.sampling())
        except (InputTooLong, ChatTemplateRefused) as exc:  # the message was not kept either
            print(f"[not sent: {exc}]", file=err)
            continue
        if reply.stats.dropped_turns:
            print(f"[context full: the {reply.stats.dropped_turns} oldest messages are no longer "
                  "in the model's view]", file=err)
        if interactive:
            print("engram> ", end="", file=err, flush=True)
        try:
            for piece in reply:
                out.write(inert(piece))
                out.flush()
        except KeyboardInterrupt:
            print("\n[stopped]", file=err)
        out.write("\n")
        out.flush()
        if (note := states_note(conversation)) and note != shown:  # the saved state refused
            print(f"[{inert(note)}]", file=err)
            shown = note
        s = reply.stats
        print(f"[{s.prompt_tokens} prompt + {s.completion_tokens} generated tokens · "
              f"{s.tokens_per_s:.1f} tok/s · context {s.context_used:.0%} of {s.n_ctx}]", file=err)
    print(f"[session {conversation.session.id} saved]", file=err)
    return 0
