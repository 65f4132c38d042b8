"""How a reply reads to the user: does it contain the answer, does it loop, does it repeat
something the user taught in answer to a question nobody taught."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from engine import text

PHRASE_WORDS = 12  # the longest phrase (words and punctuation) whose repetition is a loop
LOOP_REPEATS = 3  # a word or phrase this many times in a row reads as a loop


@dataclass(frozen=True)
class LoopRule:
    """When a reply is a loop: a phrase of up to PHRASE_WORDS tokens come round ``rounds``
    times in a row (LOOP_REPEATS times if it is ``sentence`` tokens or longer and on one line,
    ``letterless`` times if it has no letter: "0, 0, 0"), or a token of
    ``piece_chars`` or more that is one short ``piece`` over and over ("2020…")."""

    rounds: int
    letterless: int
    sentence: int  # a phrase of this many tokens or more, with a letter, on one line, is a
    # loop at LOOP_REPEATS rounds: a sentence said three times running is not prose (on lines
    # of their own, the same lines may be what was asked for: "write it three times")
    piece_chars: int
    piece: str  # the characters such a piece is made of (a regex class)
    structure: bool  # code blocks and table rows repeat by design: not read for loops


# What reads as a loop (the issue's definition, the benchmarks' and the gate's).
SAID = LoopRule(LOOP_REPEATS, LOOP_REPEATS, PHRASE_WORDS + 1, 12, r"\S", structure=False)
# Where the chat ends a reply: a real loop runs on to the limit, while prose says "No, no,
# no", "Ho ho ho" or "x + x + x" and numbers repeat ("0, 0, 0, 0"); lines of "=" and "_"
# are rules; "Hahahahahaha" is a laugh. "I am a hobbyist." three times over is a loop.
CUT = LoopRule(6, 16, 5, 24, r"[^\W_]", structure=True)


def hit(reply: str, expected: str) -> bool:
    """The reply contains the expected text (case-insensitive), as the eval sets score."""
    return expected.lower() in reply.lower()


def mentions(reply: str, answer: str) -> bool:
    """The reply contains ``answer`` as whole words: "9" is in "she is 9", not in "1900"."""
    return _mention(reply, answer) is not None


def mention_span(reply: str, answer: str) -> tuple[int, int]:
    """Where ``reply`` first mentions ``answer`` (see ``mentions``, which must hold)."""
    found = _mention(reply, answer)
    assert found is not None, f"{reply!r} does not mention {answer!r}"
    return found.span()


def _mention(reply: str, answer: str) -> re.Match[str] | None:
    """Markup tags a model writes ("<em>", "</strong>") are blanked first, keeping every
    position: they are not words, and a taught "em" or "b" is not said by them."""
    words_only = re.sub(r"</?[a-z][^<>]*>", lambda tag: " " * len(tag[0]), reply.lower())
    return re.search(rf"(?<!\w){re.escape(answer.lower())}(?!\w)", words_only)


def loops(reply: str) -> bool:
    """A word or phrase repeated LOOP_REPEATS times in a row ("Mos Mos Mos", "I have a lot of
    weeds. I have a lot of weeds. …"), or a token that is one short piece over and over
    ("2020202020…"). A run of punctuation is one token: an ellipsis ("...") is not a loop."""
    return _watched(reply).looped


def loop_span(reply: str) -> tuple[int, int]:
    """Where a looping ``reply`` (see ``loops``, which must hold) first goes round again: the
    first token of its second round."""
    watch = _watched(reply)
    assert watch.looped, f"{reply!r} does not loop"
    found = TOKEN.search(reply, watch.shown)
    assert found is not None
    return found.span()


def _watched(reply: str) -> LoopWatch:
    """``reply`` read whole by a watch of what reads as a loop (``SAID``)."""
    watch = LoopWatch(SAID)
    watch.add(reply)
    watch.finish()
    return watch


class LoopWatch:
    """Reads a reply as it streams and says how much of it a user may be shown: all of it up
    to where a loop (by ``rule``) goes round for the first time. Text that may be the start
    of a second round is held back until the model moves on, so a user reads "My cat is
    Mosel." where the model wrote "My cat is Mosel. Mosel. Mosel. …", never a repeat that is
    then taken back. Each token is compared with the PHRASE_WORDS before it once."""

    def __init__(self, rule: LoopRule = CUT) -> None:
        self.rule = rule
        self.text = ""
        self.looped = False
        self._shown = 0  # characters of ``text`` passed on
        self._scan = 0  # where the next token may start
        self._plain = -1  # the start of a token being written that is known not to repeat
        self._tokens: list[tuple[str, int, int]] = []  # complete tokens: text, start, end
        self._runs = [0] * (PHRASE_WORDS + 1)  # per phrase size s: the tokens so far that
        # each repeat the one s before
        self._code = False  # inside a fenced code block
        self._table = False  # on a line that starts as a table row does

    def add(self, piece: str) -> str:
        """Take the next piece; returns what may now be shown ("" once it looped)."""
        if self.looped:
            return ""
        self.text += piece
        last = None
        for match in TOKEN.finditer(self.text, self._scan):
            if match.end() == len(self.text):  # it may go on in the next piece
                last = match
                break
            if (cut := self._read(match)) is not None:
                return self._stop(cut)
        self._scan = len(self.text) if last is None else last.start()
        held = len(self.text)
        if last is not None and last.start() != self._plain:
            if (cut := self._repeated_piece(last)) is not None:
                return self._stop(cut)
            if self._may_repeat(last[0].lower()):
                held = last.start()
            else:
                self._plain = last.start()
        return self._pass(min([held] + [self._before(run) for run in self._runs[1:] if run]))

    @property
    def shown(self) -> int:
        """How many characters of the text may be shown so far (once looped: up to where
        the loop first goes round again)."""
        return self._shown

    def finish(self) -> str:
        """The reply has ended: what is left to show."""
        if self.looped:
            return ""
        for match in TOKEN.finditer(self.text, self._scan):
            if (cut := self._read(match)) is not None:
                return self._stop(cut)
        return self._pass(len(self.text))

    def _read(self, match: re.Match[str]) -> int | None:
        """Take one complete token; where to cut if it completes a loop."""
        token = match[0].lower()
        if self.rule.structure:
            if not self._tokens or "\n" in self.text[self._tokens[-1][2]:match.start()]:
                self._table = token.startswith("|")
            if token.startswith("```"):
                self._code = not self._code
        self._tokens.append((token, match.start(), match.end()))
        if self._code or self._table:
            self._runs = [0] * len(self._runs)
            return None
        if (cut := self._repeated_piece(match)) is not None:
            return cut
        n = len(self._tokens)
        for size in range(1, PHRASE_WORDS + 1):
            same = n > size and self._tokens[n - 1 - size][0] == token
            self._runs[size] = self._runs[size] + 1 if same else 0
            rounds = self.rule.rounds
            if size >= self.rule.sentence and self._runs[size] >= (LOOP_REPEATS - 1) * size \
                    and "\n" not in self.text[self._tokens[n - self._runs[size] - size][1]:
                                              match.start()]:
                rounds = LOOP_REPEATS
            if self._runs[size] >= (rounds - 1) * size and (
                    self._runs[size] >= (self.rule.letterless - 1) * size
                    or any(c.isalpha() for t, _, _ in self._tokens[n - size:] for c in t)):
                return self._before(self._runs[size])
        return None

    def _repeated_piece(self, token: re.Match[str]) -> int | None:
        """Where to cut a token that is one short piece over and over: after the first."""
        if self._code or self._table or len(token[0]) < self.rule.piece_chars:
            return None
        found = re.fullmatch(rf"({self.rule.piece}{{1,4}}?)\1{{3,}}", token[0].lower())
        return token.start() + len(found[1]) if found else None

    def _may_repeat(self, partial: str) -> bool:
        """A token still being written may be a repeat: the start of one of the last
        PHRASE_WORDS tokens, or a short piece over and over so far. Any other is shown as it
        comes (a long word or a line of "=" is not held back)."""
        return (any(t.startswith(partial) for t, _, _ in self._tokens[-PHRASE_WORDS:])
                or (re.fullmatch(rf"{self.rule.piece}+", partial) is not None and any(
                    partial == (partial[:k] * len(partial))[:len(partial)]
                    for k in range(1, 5))))

    def _before(self, run: int) -> int:
        """Where the first round of a repeat ``run`` tokens long ends: what precedes it."""
        return self._tokens[len(self._tokens) - run - 1][2]

    def _pass(self, upto: int) -> str:
        shown, self._shown = self.text[self._shown:upto], max(self._shown, upto)
        return shown

    def _stop(self, cut: int) -> str:
        self.looped = True
        return self._pass(cut)


TOKEN = re.compile(r"\w+|[^\w\s]+")


def degenerate(reply: str, ran_to_limit: bool) -> bool:
    """What a user reads as broken: a loop, or a reply that only stopped at the token limit."""
    return ran_to_limit or loops(reply)


def untaught(questions: list[str], said: list[str], asked: Sequence[str] = ()) -> list[str]:
    """The personal questions about nothing the user said: none of their content words
    (lemmas) occurs in what was said ("What is my brother called?" stays only if no brother,
    and no name, was ever mentioned), and none asks what one of the ``asked`` questions
    (those a fact is taught with) asks: the same words ("Who am I?", which has no content
    word to compare), or its content words and only modifiers besides ("What's my full
    name?" asks what "What is my name?" does; "What's my dad's name?" does not). A question
    taught both ways teaches neither."""
    heard = set().union(*(text.content_lemmas(s) for s in said)) if said else set()
    taught = [lemmas for lemmas in map(text.content_lemmas, asked) if lemmas]
    same = {text.normalise(q) for q in asked}
    return [q for q, about in zip(questions, map(text.content_lemmas, questions), strict=True)
            if not about & heard and text.normalise(q) not in same
            and not any(lemmas <= about and all(map(text.can_modify, about - lemmas))
                        for lemmas in taught)]
