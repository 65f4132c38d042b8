"""Prompt formatting and fitting history into the context window."""

from __future__ import annotations

import pytest

from engine.errors import InputTooLong
from engine.prompt import PlainDialogue, Turn, fit


def words(text: str) -> list[int]:
    return list(range(len(text.split())))


def test_plain_dialogue_ends_on_assistant_cue():
    text = PlainDialogue().render("Be kind.", [Turn("user", "hi"), Turn("assistant", "hello"),
                                               Turn("user", "name?")])
    assert text == "Be kind.\n\nUser: hi\nAssistant: hello\nUser: name?\nAssistant:"


def test_fit_keeps_everything_when_it_fits():
    turns = [Turn("user", "a b"), Turn("assistant", "c"), Turn("user", "d")]
    fitted = fit(PlainDialogue(), None, turns, words, budget=100)
    assert fitted.dropped_turns == 0


def test_fit_drops_oldest_turns_and_says_how_many():
    turns = []
    for i in range(10):
        turns += [Turn("user", f"question {i} " + "x " * 20), Turn("assistant", "answer " * 20)]
    turns.append(Turn("user", "last one"))
    fmt = PlainDialogue()
    fitted = fit(fmt, None, turns, words, budget=100)
    assert 0 < fitted.dropped_turns < len(turns)
    assert turns[fitted.dropped_turns].role == "user"  # never starts mid-exchange
    assert len(fitted.tokens) <= 100
    # One more turn would not have fitted: the fit is as large as possible.
    earlier = [t for t in range(fitted.dropped_turns) if turns[t].role == "user"]
    if earlier:
        assert len(words(fmt.render(None, turns[earlier[-1]:]))) > 100


def test_a_message_that_cannot_fit_is_refused():
    with pytest.raises(InputTooLong, match="context window"):
        fit(PlainDialogue(), None, [Turn("user", "x " * 500)], words, budget=100)
