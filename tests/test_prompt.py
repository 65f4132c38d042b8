"""Prompt formatting and fitting history into the context window."""

from __future__ import annotations

import re

import pytest

from engine.errors import InputTooLong
from engine.prompt import (
    ChatTemplate,
    PlainDialogue,
    Turn,
    answer,
    fit,
    turn_texts,
    without_thinking,
)
from tests.tiny_gguf import (
    CHATML_TEMPLATE,
    LLAMA3_TEMPLATE,
    PHI3_TEMPLATE,
    QWEN3_TEMPLATE,
    QWEN3_THINKING_TEMPLATE,
)

# DeepSeek-R1's (distills'), cut to a chat without tools: the system prompt first, an answer
# kept without its thinking, and a generation prompt that opens the thinking block
R1_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
    "{% else %}{{ '<｜Assistant｜>' + m['content'].split('</think>')[-1] + "
    "'<｜end▁of▁sentence｜>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\n' }}{% endif %}")


def words(text: str) -> list[int]:
    return list(range(len(text.split())))


def test_plain_dialogue_ends_on_assistant_cue():
    text = PlainDialogue().render("Be kind.", [Turn("user", "hi"), Turn("assistant", "hello"),
                                               Turn("user", "name?")])
    assert text == "Be kind.\n\nUser: hi\nAssistant: hello\nUser: name?\nAssistant:"


@pytest.mark.parametrize("reply", ["Mosel.\nUser: and you?", "Mosel.\n\nUser. I like it.",
                                   "Mosel.\nAssistant. Yes", "Mosel.\n\n\n\n.",
                                   f"Mosel.{PlainDialogue.end_of_turn} and you?"])
def test_a_plain_reply_stops_where_the_model_starts_the_next_line_of_the_dialogue(reply):
    cut = min(reply.find(s) for s in PlainDialogue.stop if s in reply)
    assert reply[:cut].strip() == "Mosel."


def test_a_plain_reply_goes_on_through_lines_that_only_begin_like_a_speaker():
    reply = "Two ways:\nUsers can reset it.\nAssistant managers can too."
    assert not any(s in reply for s in PlainDialogue.stop)


def markers(text: str) -> list[str]:
    """A tokenizer for these tests: a chat template's markers are a token each, as control
    tokens are, and so is a lone ``<``."""
    return re.findall(r"<\|[a-z_]+\|>|[^<]+|<", text)


DIALOGUE = [Turn("user", "my cat is called assistant"), Turn("assistant", "<|im_end|>"),
            Turn("user", "name?")]


def test_the_plain_dialogue_s_turns_are_its_lines():
    texts = turn_texts(PlainDialogue(), DIALOGUE, markers)
    assert texts == ["User: my cat is called assistant", "\nAssistant: <|im_end|>",
                     "\nUser: name?"]
    assert "".join(texts) + "\nAssistant:" == PlainDialogue().render(None, DIALOGUE)
    assert turn_texts(PlainDialogue(), [], markers) == []


@pytest.mark.parametrize("template, eos, turn", [
    (CHATML_TEMPLATE, "<|im_end|>", "<|im_start|>{role}\n{content}<|im_end|>\n"),
    # an assistant's last answer opens with an empty thinking block, not one that goes on
    (QWEN3_TEMPLATE, "<|im_end|>", "<|im_start|>{role}\n{content}<|im_end|>\n"),
    # a dialogue ends with an end-of-text, which shares "<|" with the next turn's marker
    (PHI3_TEMPLATE, "<|end|>", "<|{role}|>\n{content}<|end|>\n"),
    (LLAMA3_TEMPLATE, "<|eot_id|>",
     "<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>"),
], ids=["chatml", "qwen3", "phi3", "llama3"])
def test_a_chat_template_s_turn_runs_from_its_header_to_what_closes_it(template, eos, turn):
    """Whatever a turn says (a role's name, a marker), wherever it is (last or not)."""
    fmt = ChatTemplate(template, "<|begin_of_text|>", eos, "test")
    for turns in (DIALOGUE, DIALOGUE[:2], DIALOGUE[:1]):
        texts = turn_texts(fmt, turns, markers)
        assert texts == [turn.format(role=t.role, content=t.content) for t in turns]
        later = [Turn("assistant", "Pixel"), Turn("user", "and?")][turns[-1].role == "assistant":]
        assert fmt.render(None, turns + later).startswith("".join(texts))


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


@pytest.mark.parametrize("prefix, reply, shown", [
    ("", "<think>\n\n</think>\n\nPixel.", "Pixel."),
    ("", "\n<think>\nThe user asks about the cat.\n</think>\n\nIt is Pixel.", "It is Pixel."),
    ("", " Pixel, not <think>this</think>", " Pixel, not <think>this</think>"),  # leading only
    ("", "<b>Pixel</b>", "<b>Pixel</b>"),
    ("", "<think>\nStill thinking when it was stopped",
     "<think>\nStill thinking when it was stopped"),
    ("", "", ""),
    # after a prompt that opened the block: the reply starts inside it
    ("<think>", "\nThe user asks about the cat.\n</think>\n\nIt is Pixel.", "It is Pixel."),
    ("<think>", "</think>Pixel, not <think>this</think>", "Pixel, not <think>this</think>"),
    ("<think>", "\n\n</think>\n\n", ""),  # closed at the very end: no answer
    ("<think>", "The cat is Pixel.</think>", ""),
    ("<think>", "\nStill thinking when it was stopped", "\nStill thinking when it was stopped"),
    ("<think>", "Pixel.", "Pixel."),  # never closed: kept as the model wrote it
    ("<think>", "", ""),
])
def test_a_reply_is_shown_and_kept_without_its_thinking_block(prefix, reply, shown):
    """The same whether the reply is read whole or streamed, in any pieces."""
    assert answer(reply, prefix) == shown
    for size in (1, 2, 3, 7, len(reply) or 1):
        assert "".join(without_thinking((reply[i:i + size]
                                         for i in range(0, len(reply), size)), prefix)) == shown


@pytest.mark.parametrize("template, eos", [
    (QWEN3_THINKING_TEMPLATE, "<|im_end|>"), (R1_TEMPLATE, "<｜end▁of▁sentence｜>"),
    ("{% for m in messages %}{{ m['content'] }}{% endfor %}[assistant]<think>", ""),
    ("{% for m in messages %}{{ m['content'] }}{% endfor %}[assistant]<think> \n\n", ""),
], ids=["qwen3-thinking", "deepseek-r1", "no-newline", "whitespace"])
def test_a_template_that_opens_the_thinking_block_starts_its_replies_inside_it(template, eos):
    """Whatever it is told (it does not read ``enable_thinking``). What the learner trains and
    the model writes its pairs after (``answering``) is where an answer begins, outside it."""
    turns = [Turn("user", "What is my cat called?")]
    for thinking in (True, False):
        fmt = ChatTemplate(template, "", eos, "test", thinking=thinking)
        assert fmt.reply_prefix == "<think>"
        assert not fmt.answering("Be kind.", turns).rstrip().endswith("<think>")


@pytest.mark.parametrize("template, eos", [
    (CHATML_TEMPLATE, "<|im_end|>"), (QWEN3_TEMPLATE, "<|im_end|>"), (PHI3_TEMPLATE, "<|end|>"),
    (LLAMA3_TEMPLATE, "<|eot_id|>"),
    ("{% for m in messages %}{{ m['content'] }}{% endfor %}[assistant]<think></think>", ""),
    ("{% for m in messages %}{{ m['content'] }}{% endfor %}<think>[assistant]", ""),
], ids=["chatml", "qwen3", "phi3", "llama3", "closed", "before-the-cue"])
def test_a_template_that_does_not_open_the_block_starts_its_replies_outside(template, eos):
    """Qwen 3's, told not to think, ends its prompt with the empty block, which is closed;
    let think, it leaves the model to open one itself (``answer`` reads that)."""
    for thinking in (True, False):
        assert ChatTemplate(template, "", eos, "test", thinking=thinking).reply_prefix == ""
    assert PlainDialogue().reply_prefix == ""


def test_an_answer_is_learned_where_the_template_puts_it():
    """Qwen 3 writes an empty thinking block before an answer given without thinking, where it
    prompts one told not to think; where a template writes nothing there, the answer follows
    the generation prompt."""
    turns = [Turn("user", "What is my cat called?")]
    qwen3 = ChatTemplate(QWEN3_TEMPLATE, "", "<|im_end|>", "qwen3")
    assert qwen3.render(None, turns).endswith("<|im_start|>assistant\n")
    assert qwen3.answering(None, turns) == qwen3.render(None, turns) + "<think>\n\n</think>\n\n"
    direct = ChatTemplate(QWEN3_TEMPLATE, "", "<|im_end|>", "qwen3", thinking=False)
    assert direct.render(None, turns) == direct.answering(None, turns) \
        == qwen3.answering(None, turns)
    chatml = ChatTemplate(CHATML_TEMPLATE, "", "<|im_end|>", "chatml")
    spaced = ChatTemplate("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n"
                          "{% endfor %}[assistant]", "", "", "spaced")
    for fmt in (chatml, spaced, PlainDialogue()):
        assert fmt.answering("Be kind.", turns) == fmt.render("Be kind.", turns)


@pytest.mark.parametrize("template, eos", [
    (CHATML_TEMPLATE, "<|im_end|>"), (PHI3_TEMPLATE, "<|end|>"), (LLAMA3_TEMPLATE, "<|eot_id|>"),
], ids=["chatml", "phi3", "llama3"])
def test_a_template_that_does_not_read_enable_thinking_is_unaffected_by_it(template, eos):
    turns = [Turn("user", "My cat is called Pixel."), Turn("assistant", "Hello!"),
             Turn("user", "What is my cat called?")]
    may_think, direct = (ChatTemplate(template, "", eos, "test", thinking=thinking)
                         for thinking in (True, False))
    for write in ("render", "transcript", "answering"):
        assert getattr(direct, write)("Be kind.", turns) \
            == getattr(may_think, write)("Be kind.", turns)
