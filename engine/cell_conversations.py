"""Conversations whose early turns are out of the window: what the cells are trained and
measured on.

Each holds the dropped turns (what the cells are written from), the turns still in the window,
probes the dropped turns inform (a question and the expected answer), and a neutral question
they do not inform (for side effects). Built from files in ``user-facts.jsonl`` format padded
with filler turns (the bench, and the bundled dev set the learner starts from), or from a
user's own long sessions (each later exchange, predicted after the earlier ones left).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import EngramError
from engine.prompt import Turn
from store import paths
from store.files import read_jsonl

if TYPE_CHECKING:
    from engine.runtime import Runtime

FILLER_PER_CASE = 4  # filler exchanges in the window after a file's dropped turns
WINDOW_TURNS = 4  # turns in the window before a session's predicted exchange
SESSION_PROBES = 4  # at most, per session: its latest exchanges
ACKS = ("Got it.", "Noted, thanks for telling me.", "Good to know!")
DEV_FACTS = "user-facts-dev.jsonl"


@dataclass(frozen=True)
class Probe:
    question: str
    answer: str


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # "facts" | "topic" | "session"
    dropped: list[Turn]  # the turns out of the window
    kept: list[Turn]  # the turns still in it
    probes: list[Probe]
    neutral: Probe  # a general-knowledge question asked after the same window


def _jsonl(path: Path) -> list[dict]:
    try:
        return read_jsonl(path)
    except (OSError, ValueError) as exc:
        raise EngramError(f"cannot read {path}: {exc}") from None


def _world() -> list[dict]:
    return _jsonl(paths.eval_data("world-facts.jsonl"))


def cases(facts: Path | None = None, topics: Path | None = None) -> list[Case]:
    """Fact and topic conversations (``user-facts.jsonl`` format) padded with filler turns."""
    records = [(r, "facts") for r in _jsonl(facts or paths.eval_data("user-facts.jsonl"))]
    records += [(r, r.get("kind", "topic")) for r in
                _jsonl(topics or paths.eval_data("topic-conversations.jsonl"))]
    return _padded(records)


def dev_cases(facts: Path | None = None) -> list[Case]:
    """The fact conversations to learn the read from: ``facts`` (``user-facts.jsonl`` format),
    by default the bundled dev set (none of it is in the bench's eval set)."""
    return _padded([(r, "facts") for r in _jsonl(facts or paths.eval_data(DEV_FACTS))])


def _padded(records: list[tuple[dict, str]]) -> list[Case]:
    filler = [(Turn("user", f["turns"][0]), Turn("assistant", f["turns"][1]))
              for f in _jsonl(paths.eval_data("filler-turns.jsonl"))]
    world = _world()
    out = []
    for i, (record, kind) in enumerate(records):
        dropped = []
        for j, text in enumerate(record["turns"]):
            dropped += [Turn("user", text), Turn("assistant", ACKS[(i + j) % len(ACKS)])]
        kept = [turn for k in range(FILLER_PER_CASE)
                for turn in filler[(i * FILLER_PER_CASE + k) % len(filler)]]
        probes = [Probe(p["q"], p["a"]) for p in record["probes"]]
        neutral = world[i % len(world)]
        out.append(Case(record["id"], kind, dropped, kept, probes,
                        Probe(neutral["question"], neutral["answer"])))
    return out


def session_cases(session_id: int, turns: list[Turn]) -> list[Case]:
    """From a session's turns: for each of its latest user → assistant exchanges that has
    more than a window of turns before it, the reply predicted with only the last
    WINDOW_TURNS turns in the window and the rest dropped."""
    world = _world()
    out: list[Case] = []
    for j in range(len(turns) - 2, WINDOW_TURNS, -1):
        if len(out) == SESSION_PROBES:
            break
        question, reply = turns[j], turns[j + 1]
        if question.role != "user" or reply.role != "assistant" or not reply.content.strip():
            continue
        neutral = world[(session_id + j) % len(world)]
        out.append(Case(f"session-{session_id}-{j}", "session", turns[: j - WINDOW_TURNS],
                        turns[j - WINDOW_TURNS: j],
                        [Probe(question.content, reply.content.strip())],
                        Probe(neutral["question"], neutral["answer"])))
    return out


def asked(runtime: Runtime, turns: list[Turn], probe: Probe) -> tuple[list[int], list[int]]:
    """A probe's question after ``turns``, up to where its answer begins, and the answer's
    tokens: in the model's prompt format, as the learner asks (``learning.texts.dialogue``),
    without a system prompt (cells are written without one)."""
    from engine.learning.texts import dialogue  # the package loads the learner (torch)

    return dialogue(runtime, None, probe.question, f" {probe.answer}", turns)
