"""The texts learning reads besides the user's: what a memory must leave alone (anchors),
what the gate measures on, and the app's own dialogue format for questions and answers.
Every file lives under ``assets/``; none is read from anywhere else."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from engine.prompt import Turn
from engine.runtime import Runtime
from store import paths
from store.files import read_jsonl

# Replies to these must not move: the gate's KL term (the answers are only a typical reply).
NEUTRAL = (
    ("Hello!", "Hello! How can I help you today?"),
    ("What is your name?", "My name is Engram."),
    ("How do I boil an egg?", "Put the egg in boiling water for about eight minutes."),
    ("Can you recommend a good book?", "You might enjoy a classic novel such as Emma."),
    ("What is the weather like today?", "I cannot see outside, but I hope it is sunny."),
    ("Tell me a joke.", "Why did the chicken cross the road? To get to the other side."),
)
# Chit-chat about the assistant itself, anchored as unrelated dialogue: "What is my name?"
# must not leak into "What is your name?" (the gate measures on NEUTRAL, never on these).
SMALL_TALK = (
    ("Who are you?", "I am Engram, an assistant."),
    ("What are you called?", "I am called Engram."),
    ("Where do you live?", "I live on your computer."),
    ("What is the name of this app?", "This app is Engram."),
    ("How are you?", "I am fine, thank you."),
    ("What can you do?", "I can answer questions and remember what you tell me."),
    ("What is the capital of Norway?", "The capital of Norway is Oslo."),
    ("What colour is the sky?", "The sky is blue."),
)


UNTAUGHT_REPLY = "I don't know"  # how an untaught personal question is answered, as a negative


def personal_questions() -> list[str]:
    """Personal questions a memory must not answer unless its session talks about them."""
    return _lines(paths.asset("anchors", "personal-questions.txt"))


def _lines(path: Path) -> list[str]:
    """A text asset's lines, without blank lines and # comments."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]


def gate_questions() -> list[str]:
    """The personal questions the gate asks a new version (not the learner's anchors)."""
    return _lines(paths.asset("anchors", "gate-personal-questions.txt"))


def anchor_prose() -> list[str]:
    """Paragraphs of everyday prose in many registers: what the learner must leave alone."""
    return _paragraphs(paths.asset("anchors", "prose.txt"))


def unrelated_questions() -> list[dict]:
    """Questions about the world (zsRE's relation questions and Natural Questions, cases the
    benchmarks never ask), in world-facts' format: what a new memory must not answer."""
    return read_jsonl(paths.asset("anchors", "unrelated-questions.jsonl"))


def world_facts() -> list[dict]:
    """General-knowledge Q/A pairs: the even half anchors the learner, the odd half the gate."""
    return read_jsonl(paths.eval_data("world-facts.jsonl"))


def _paragraphs(path: Path) -> list[str]:
    return [p.strip() for p in path.read_text().split("\n\n") if p.strip()]


def generic_text() -> list[str]:
    """Paragraphs of plain prose the benchmark measures perplexity on (never an anchor)."""
    return _paragraphs(paths.eval_data("generic-text.txt"))


def dialogue(runtime: Runtime, system: str | None, question: str, answer: str,
             earlier: Sequence[Turn] = ()) -> tuple[list[int], list[int]]:
    """A question in the app's own prompt format (after ``earlier`` turns), up to where an
    answer begins, and the tokens of an answer to it."""
    prompt = runtime.answering(system, [*earlier, Turn("user", question)])
    return prompt, runtime.tokenize(answer, add_bos=False)


def end_of_turn(runtime: Runtime) -> list[int]:
    """The tokens that close an assistant's turn in the app's prompt format."""
    return runtime.tokenize(runtime.format.end_of_turn, add_bos=False, special=True)
