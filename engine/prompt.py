"""Turning a dialogue into a prompt that fits the context window.

A GGUF that carries a chat template is formatted with it. Base models without one
(the built-in Gemma 3 270M is a base model) get a plain ``User:`` / ``Assistant:``
dialogue, which they continue far better than their own turn tokens. A reasoning model's
reply may start with its thinking (Qwen 3's ``<think>…</think>``), or start inside it where the
template's generation prompt opens the block (Qwen 3 Thinking's, DeepSeek-R1's): the answer is
what follows; unless it may think (a profile's ``thinking``), its template is asked for no
thinking at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from engine.errors import ChatTemplateRefused, InputTooLong

if TYPE_CHECKING:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"  # a reasoning model's working (Qwen 3)


@dataclass(frozen=True)
class Turn:
    role: str  # "user" | "assistant"
    content: str


class PromptFormat(Protocol):
    stop: list[str]
    end_of_turn: str  # the text that closes an assistant's turn
    special: bool  # whether a rendered prompt's control-token text is parsed as those tokens
    # what the generation prompt has already begun a reply with: THINK_OPEN where it opens
    # the thinking block (the reply then starts inside it and closes it first), else ""
    reply_prefix: str

    def render(self, system: str | None, turns: list[Turn]) -> str:
        """The prompt text, ending where the assistant's reply begins."""

    def transcript(self, system: str | None, turns: list[Turn]) -> str:
        """The dialogue as a finished one, without the cue for a reply."""

    def answering(self, system: str | None, turns: list[Turn]) -> str:
        """The prompt text as the format writes a finished assistant turn, ending where its
        answer begins: what the model has seen before an answer (a reply may think first)."""


class PlainDialogue:
    """``User: …`` / ``Assistant: …`` lines; stops when the model starts the user's next line."""

    # the next line's speaker however the model punctuates it ("\n\nUser. I like …": a
    # learned answer that ends its sentence but not the turn)
    stop = ["\nUser:", "\nUser.", "\nUser,", "\nAssistant:", "\nAssistant.", "\nUSER:",
            "\n\n\n"]
    # what follows a finished reply as a base model writes it, and as learned answers end:
    # a blank line, then the user's (trained to end at "\n", a memory had never seen the
    # position after the "\n\n" the model prefers, and wrote "." there: "\n\n.\n\n.")
    end_of_turn = "\n\nUser:"
    special = False
    reply_prefix = ""

    def render(self, system: str | None, turns: list[Turn]) -> str:
        head = self.transcript(system, turns)
        return f"{head}\nAssistant:" if head else "Assistant:"

    def transcript(self, system: str | None, turns: list[Turn]) -> str:
        lines = [system.strip() + "\n"] if system else []
        for turn in turns:
            speaker = "User" if turn.role == "user" else "Assistant"
            lines.append(f"{speaker}: {turn.content.strip()}")
        return "\n".join(lines)

    def answering(self, system: str | None, turns: list[Turn]) -> str:
        return self.render(system, turns)


class ChatTemplate:
    """The GGUF's own Jinja chat template (``tokenizer.chat_template``). Its turn markers
    (``<|im_start|>``) are control tokens, so its prompts are tokenised with ``special``, as
    llama.cpp's own chat does: a user who types one gets it.

    The template is code from the model file. llama-cpp-python renders it in Jinja's
    immutable sandbox, which denies Python internals (``__class__``, ``__globals__``); a
    template that cannot format a one-message dialogue is refused with its model rather
    than swapped for another format: the model would then answer prompts in a shape it was
    never trained on, and learn from them, with nothing to say why its replies got worse.

    Without ``thinking`` every render tells the template ``enable_thinking=False``: Qwen 3's
    template (and those after it) then ends the generation prompt with the empty thinking
    block it writes before an answer given without thinking, so the model answers at once,
    after the very text the learner trains answers after (``answering``). A template that does
    not read the variable renders the same either way; with ``thinking``, it is not passed.

    A template whose generation prompt opens the thinking block itself (Qwen 3 Thinking's and
    DeepSeek-R1's end with ``<think>`` and a line break, whatever they are told) has
    ``reply_prefix``: its replies are read as starting with that ``<think>``. Told not to
    think, Qwen 3's writes the empty block there instead, which is closed: its replies start
    with the answer."""

    special = True

    def __init__(self, template: str, bos_token: str, eos_token: str, source: str,
                 thinking: bool = True):
        import jinja2
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._source = source
        try:
            self._formatter, self._finished = (
                Jinja2ChatFormatter(template=template, bos_token=bos_token, eos_token=eos_token,
                                    add_generation_prompt=cue) for cue in (True, False))
        except jinja2.TemplateError as exc:
            raise template_refused(source, exc) from exc
        self._bos = bos_token
        # what every render tells the template, besides the dialogue
        self._variables: dict[str, Any] = {} if thinking else {"enable_thinking": False}
        self.stop = [eos_token] if eos_token else []
        self.end_of_turn = eos_token
        cue = self.render(None, [Turn("user", "hello")]).rstrip()
        self.reply_prefix = THINK_OPEN if cue.endswith(THINK_OPEN) else ""

    def render(self, system: str | None, turns: list[Turn]) -> str:
        return self._apply(self._formatter, system, turns)

    def transcript(self, system: str | None, turns: list[Turn]) -> str:
        return self._apply(self._finished, system, turns)

    def _apply(self, formatter: Jinja2ChatFormatter, system: str | None,
               turns: list[Turn]) -> str:
        messages = [{"role": "system", "content": system}] if system else []
        messages += [{"role": t.role, "content": t.content} for t in turns]
        try:
            # llama-cpp-python types messages as TypedDicts with literal roles
            response = formatter(messages=messages,  # type: ignore[arg-type]
                                 **self._variables)
        except Exception as exc:  # the template's own code failed, whatever it raised
            raise template_refused(self._source, exc) from exc
        if response.stop:
            extra = response.stop if isinstance(response.stop, list) else [response.stop]
            self.stop = list(dict.fromkeys(self.stop + extra))
        # The tokenizer adds the model's bos itself (Llama 3's template writes it too).
        return response.prompt.removeprefix(self._bos) if self._bos else response.prompt

    def answering(self, system: str | None, turns: list[Turn]) -> str:
        """Qwen 3's template writes an empty thinking block before a final answer given
        without thinking, where its generation prompt leaves the model to open one. A space
        the template puts before the answer is dropped: the answer's tokens carry their own."""
        mark = "\uE000answer\uE000"  # private-use characters: no template writes them
        head, found, _ = self.render(system, turns + [Turn("assistant", mark)]).partition(mark)
        return head.rstrip(" ") if found else self.render(system, turns)


def template_refused(source: str, exc: Exception) -> ChatTemplateRefused:
    """The one-line error for a template that failed. Its message may be the template's own
    text (``raise_exception``), so it is quoted with escapes, never shown raw."""
    from jinja2.exceptions import SecurityError

    reason = "it reached outside its sandbox" if isinstance(exc, SecurityError) \
        else type(exc).__name__
    return ChatTemplateRefused(
        f"the chat template in {source} was refused, {reason}: {str(exc)[:200]!r}; nothing "
        "it asked for ran. Use another GGUF of this model")


def answer(reply: str, prefix: str = "") -> str:
    """A finished reply without the thinking block it starts with, if any: the model's
    working, not its answer. ``prefix``: the format's ``reply_prefix``, the start the prompt
    gave the reply (a block it opened). A block never closed is all the reply said, and the
    reply is kept as the model wrote it."""
    found = _answer_so_far(prefix + reply)
    return reply if found is None else found


def answered(reply: str) -> str:
    """What a finished reply answered, never its working: "" where it ran out inside the
    thinking block it opened. For a reply read as the model's answer and trained on (the
    pairs it writes), where working taken for an answer would be learned."""
    return _answer_so_far(reply) or ""


def without_thinking(pieces: Iterable[str], prefix: str = "") -> Iterator[str]:
    """A streamed reply's pieces as ``answer`` reads the whole: held back while the reply is
    in a leading thinking block, or may still open one. Once the answer has begun, the rest
    passes straight through (it is every reply's path, thinking or not)."""
    pieces = iter(pieces)
    raw = prefix
    for piece in pieces:
        raw += piece
        if found := _answer_so_far(raw):
            yield found
            yield from pieces
            return
    if _answer_so_far(raw) is None:
        yield raw[len(prefix):]


def _answer_so_far(reply: str) -> str | None:
    """The answer a reply has given so far; None while it is in a leading thinking block or
    may still open one. An answer only ever grows as the reply does."""
    start = reply.lstrip()
    if start.startswith(THINK_OPEN):
        _, closed, after = start.partition(THINK_CLOSE)
        return after.lstrip() if closed else None
    return None if THINK_OPEN.startswith(start) else reply


def turn_texts(fmt: PromptFormat, turns: list[Turn],
               tokenize: Callable[[str], list[int]]) -> list[str]:
    """Each turn's text as ``fmt`` writes it when the dialogue goes on after ``turns``: joined,
    they begin the prompt of ``turns`` and any later ones (system prompt none, contents
    stripped, as the store keeps them). A turn runs from its header through what closes it:
    what the format writes after a dialogue's last turn, as far as it writes that before the
    next turn too (Phi 3 ends a dialogue with an end-of-text, Qwen 3 opens a final answer with
    an empty thinking block), cut at a token boundary. The first turn carries what the format
    writes before any (a default system prompt).

    Found from the dialogue with marks for contents (private-use characters: no template
    writes them), so a content that looks like a role or a marker cannot move a boundary."""
    if not turns:
        return []
    marks = [f"\uE000{i}\uE000" for i in range(len(turns) + 1)]
    marked = [Turn(turn.role, marks[i]) for i, turn in enumerate(turns)]
    after = Turn("assistant" if turns[-1].role == "user" else "user", marks[-1])
    going_on = fmt.transcript(None, marked + [after])
    if not all(mark in going_on for mark in marks):
        raise ChatTemplateRefused("the chat template leaves a turn out of the dialogue")
    starts = [going_on.index(mark) for mark in marks]
    header, texts = going_on[: starts[0]], []
    for k, turn in enumerate(turns):
        between = going_on[starts[k] + len(marks[k]): starts[k + 1]]
        ended = fmt.transcript(None, marked[: k + 1]).partition(marks[k])[2]
        closing = len(os.path.commonprefix([between, ended]))
        while closing and (tokenize(between[:closing]) + tokenize(between[closing:])
                           != tokenize(between)):
            closing -= 1
        texts.append(header + turn.content.strip() + between[:closing])
        header = between[closing:]
    return texts


@dataclass(frozen=True)
class FittedPrompt:
    tokens: list[int]
    dropped_turns: int  # oldest turns left out to fit; the caller must tell the user


def fit(fmt: PromptFormat, system: str | None, turns: list[Turn],
        tokenize: Callable[[str], list[int]], budget: int) -> FittedPrompt:
    """Keep the newest turns that fit in ``budget`` tokens (the last turn must fit on its own)."""
    if not turns:
        raise ValueError("nothing to reply to")
    last = tokenize(fmt.render(system, turns[-1:]))
    if len(last) > budget:
        raise InputTooLong(
            f"the message is {len(last):,} tokens but the context window leaves room for "
            f"{budget:,}: shorten it, or start Engram with a larger --ctx"
        )
    whole = tokenize(fmt.render(system, turns))
    if len(whole) <= budget:
        return FittedPrompt(whole, 0)
    # Binary search over user-turn starts for the earliest that fits (fewer turns fit better).
    starts = [i for i, t in enumerate(turns) if t.role == "user" and i > 0] or [len(turns) - 1]
    lo, hi = 0, len(starts) - 1
    best, best_start = last, len(turns) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        tokens = tokenize(fmt.render(system, turns[starts[mid]:]))
        if len(tokens) <= budget:
            best, best_start, hi = tokens, starts[mid], mid - 1
        else:
            lo = mid + 1
    return FittedPrompt(best, best_start)
