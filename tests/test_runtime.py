"""The llama.cpp runtime and conversations, for real, on the tiny generated model."""

from __future__ import annotations

from dataclasses import replace

import pytest

from engine.conversation import Conversation
from engine.engine import Engine
from engine.errors import ChatTemplateRefused, InputTooLong, ModelError
from engine.learning.texts import dialogue
from engine.prompt import ChatTemplate, PlainDialogue, Turn
from engine.runtime import Runtime, Sampling
from store.store import Store
from tests.tiny_gguf import QWEN3_THINKING_TEMPLATE, write_tiny_model


@pytest.fixture(scope="module")
def runtime(tiny_model):
    rt = Runtime(tiny_model, n_ctx=512)
    yield rt
    rt.close()


def test_streams_tokens_and_reports_stats(runtime):
    reply = runtime.reply([Turn("user", "hello")], None, Sampling.greedy(12))
    pieces = list(reply)
    assert pieces and "".join(pieces) == reply.text
    s = reply.stats
    assert s.prompt_tokens > 0 and 0 < s.completion_tokens <= 13
    assert s.first_token_s is not None and s.seconds >= s.first_token_s
    assert 0 < s.context_used < 1 and s.n_ctx == 512
    assert not s.stopped


def test_greedy_is_deterministic(runtime):
    texts = {"".join(runtime.reply([Turn("user", "the cat")], None, Sampling.greedy(10)))
             for _ in range(2)}
    assert len(texts) == 1


def test_a_reply_that_would_end_before_saying_anything_says_its_next_likeliest_start(
        runtime, monkeypatch):
    """A first token that ends the turn (here: the start of a stop string) is ruled out once
    the reply comes back empty; a reply with words is left as it was."""
    said = runtime.reply([Turn("user", "the cat")], None, Sampling.greedy(10))
    words = "".join(said)
    first = words[:len(words) - len(words.lstrip()) + 1]  # its first letter, as a stop string
    assert first.strip()
    monkeypatch.setattr(runtime.format, "stop", [*runtime.format.stop, first])
    text = "".join(runtime.reply([Turn("user", "the cat")], None, Sampling.greedy(10)))
    assert text.strip() and not text.startswith(first)
    monkeypatch.undo()
    assert "".join(runtime.reply([Turn("user", "the cat")], None, Sampling.greedy(10))) == words


def test_cancel_stops_at_the_next_token(runtime):
    reply = runtime.reply([Turn("user", "hello")], None, Sampling(temperature=1.0, max_tokens=200))
    seen = 0
    for _ in reply:
        seen += 1
        if seen == 3:
            reply.cancel()
    assert reply.stats.stopped and seen == 3


def test_plain_dialogue_for_base_models_and_template_when_present(tmp_path, runtime):
    assert isinstance(runtime.format, PlainDialogue)
    path = write_tiny_model(tmp_path / "chat.gguf", chat_template=(
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}<|assistant|>"))
    rt = Runtime(path, n_ctx=256)
    assert isinstance(rt.format, ChatTemplate)
    assert (rt.format.render("sys", [Turn("user", "hi")])
            == "<|system|>sys\n<|user|>hi\n<|assistant|>")
    rt.close()


@pytest.mark.parametrize("tiny_model", ["llama", "phi3", "qwen2"], indirect=True)
def test_a_chat_template_s_turn_markers_are_control_tokens(tiny_model):
    """Llama 3's, Phi 3's and Qwen 2's turn markers are single control tokens, the bos comes once
    (Llama 3's template writes it and the tokenizer adds it), and a reply stops at the
    end-of-turn token rather than at once (an empty stop string matched everything)."""
    rt = Runtime(tiny_model, n_ctx=256, n_threads=1)
    try:
        tokens = rt.prompt("sys", [Turn("user", "hi")])
        eot = rt.llm.token_eos()
        head = rt.tokenize("")  # [bos] where the model adds one
        assert tokens[:len(head)] == head and tokens.count(rt.llm.token_bos()) == len(head)
        assert tokens.count(eot) == 2  # closing the system's and the user's turns
        assert rt.tokenize(rt.format.end_of_turn, add_bos=False, special=True) == [eot]
        assert rt.format.stop == [rt.format.end_of_turn] and rt.format.end_of_turn
        reply = rt.reply([Turn("user", "hi")], None, Sampling.greedy(4))
        list(reply)
        assert reply.stats.completion_tokens > 0
    finally:
        rt.close()


TURN = {"llama": "<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>",
        "qwen2": "<|im_start|>{role}\n{content}<|im_end|>\n",
        "qwen3": "<|im_start|>{role}\n{content}<|im_end|>\n"}


@pytest.mark.parametrize("tiny_model", list(TURN), indirect=True)
def test_a_dialogue_s_turns_are_spans_of_the_chat_s_own_prompt(tiny_model, request):
    """Each turn's tokens are the template's text for it, and together they begin the
    prompt the chat writes for the same turns and later ones."""
    rt = Runtime(tiny_model, n_ctx=256, n_threads=1)
    try:
        turns = [Turn("user", "My cat is called Pixel."), Turn("assistant", "Hello!"),
                 Turn("user", "What is my cat called?")]
        tokens, spans = rt.turn_spans(turns)
        later = [Turn("assistant", "Pixel."), Turn("user", "And?")]
        assert rt.prompt(None, turns + later)[:len(tokens)] == tokens
        assert [start for start, _ in spans] == [len(rt.tokenize(""))] + [
            end for _, end in spans[:-1]] and spans[-1][1] == len(tokens)
        turn = TURN[request.node.callspec.params["tiny_model"]]
        assert [rt.llm.detokenize(tokens[start:end], special=True).decode()
                for start, end in spans] == [turn.format(role=t.role, content=t.content)
                                             for t in turns]
    finally:
        rt.close()


def test_old_turns_dropped_are_reported(runtime):
    turns = []
    for i in range(30):
        turns += [Turn("user", f"the cat {i} " * 8), Turn("assistant", "hello " * 8)]
    turns.append(Turn("user", "hi"))
    reply = runtime.reply(turns, None, Sampling.greedy(8))
    list(reply)
    assert reply.dropped_turns > 0
    assert reply.stats.prompt_tokens <= runtime.n_ctx


def test_huge_message_is_refused_before_generation(runtime):
    with pytest.raises(InputTooLong):
        runtime.reply([Turn("user", "cat " * 250_000)], None, Sampling.greedy(8))


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing.gguf", "not found"),
    (lambda p: (p / "t.txt").write_text("hello") and p / "t.txt", "not a GGUF"),
    (lambda p: write_tiny_model(p / "alien.gguf", arch="nosucharch", layers_like="gemma3"),
     "could not load"),
])
def test_bad_model_files_get_a_clear_error(tmp_path, make, message):
    with pytest.raises(ModelError, match=message):
        Runtime(make(tmp_path), n_ctx=128)


ESCAPES = [  # each would create MARKER if the template ran outside Jinja's sandbox
    "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "{{ ''.__class__.__mro__[1].__subclasses__()[0].__init__.__globals__['__builtins__']"
    "['__import__']('os').system('touch MARKER') }}",
    "{{ joiner.__init__.__globals__['os'].system('touch MARKER') }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.popen("
    "'touch MARKER').read() }}",
    "{{ messages.__class__.__base__.__subclasses__() }}",
    "{% set x = namespace() %}{{ x.__init__.__globals__.os.system('touch MARKER') }}",
]


@pytest.mark.parametrize("escape", ESCAPES)
def test_a_chat_template_that_reaches_outside_its_sandbox_is_refused_and_runs_nothing(
        tmp_path, monkeypatch, escape):
    """The model is refused at load with one line that names the file, rather than chatted
    with in another format (see ``ChatTemplate``); the sandbox denied every step out (as a
    SecurityError, or an undefined attribute where the object hides it)."""
    marker = tmp_path / "PWNED"
    monkeypatch.chdir(tmp_path)
    path = write_tiny_model(tmp_path / "hostile.gguf", chat_template=(
        "{% for m in messages %}" + escape.replace("MARKER", str(marker))
        + "{{ m['content'] }}{% endfor %}"))
    with pytest.raises(ChatTemplateRefused, match="hostile.gguf was refused") as refused:
        Runtime(path, n_ctx=128, n_threads=1)
    assert "\n" not in str(refused.value)
    assert not marker.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["hostile.gguf"]


@pytest.mark.parametrize("template, reason", [
    ("{% for m in messages %}{{ m['content'] }", "TemplateSyntaxError"),
    ("{{ raise_exception('\x1b[2Jno chat here') }}", "ValueError"),
    ("{{ messages[0]['content'] / 0 }}", "TypeError"),
])
def test_a_broken_chat_template_is_a_clear_error_with_its_text_escaped(tmp_path, template,
                                                                       reason):
    path = write_tiny_model(tmp_path / "broken.gguf", chat_template=template)
    with pytest.raises(ChatTemplateRefused, match=reason) as refused:
        Runtime(path, n_ctx=128, n_threads=1)
    assert "\x1b" not in str(refused.value) and "\n" not in str(refused.value)


def test_user_message_is_committed_before_generation_and_reply_after(tmp_path, runtime):
    store = Store(tmp_path / "e.db")
    profile = store.profile("p")
    conversation = Conversation(store, runtime, store.new_session(profile.id, "tiny"))
    reply = conversation.send("hello there", Sampling.greedy(6))
    assert [(m.role, m.status) for m in store.messages(conversation.session.id)] == [
        ("user", "complete"), ("assistant", "pending")]
    list(reply)
    user, assistant = store.messages(conversation.session.id)
    assert assistant.status == "complete" and assistant.content == reply.text.strip()
    assert assistant.completion_tokens == reply.stats.completion_tokens
    assert store.session(conversation.session.id).title == "hello there"


def test_stopped_and_crashed_replies_keep_their_text(tmp_path, runtime, monkeypatch):
    store = Store(tmp_path / "e.db")
    profile = store.profile("p")
    conversation = Conversation(store, runtime, store.new_session(profile.id, "tiny"))
    reply = conversation.send("hello", Sampling(temperature=1.0, max_tokens=100))
    for i, _ in enumerate(reply):
        if i == 2:
            reply.cancel()
    assert store.messages(conversation.session.id)[-1].status == "partial"

    def exploding(*args, **kwargs):
        yield {"choices": [{"text": "half a"}]}
        raise RuntimeError("GPU fell over")

    monkeypatch.setattr(runtime.llm, "create_completion", exploding)
    reply = conversation.send("again", Sampling.greedy(10))
    with pytest.raises(RuntimeError):
        list(reply)
    last = store.messages(conversation.session.id)[-1]
    assert (last.status, last.content) == ("error", "half a")


@pytest.mark.parametrize("tiny_model", ["qwen2"], indirect=True)
def test_a_reply_that_loops_ends_where_the_loop_begins_and_the_model_stops(tiny_model):
    """This random model's greedy reply to "hello" goes "firsfirsfirs…" to the limit: the user
    reads one round of it, and llama.cpp stops generating there (its stream closed at once:
    the stats are final)."""
    rt = Runtime(tiny_model, n_ctx=512, n_threads=1)
    try:
        reply = rt.reply([Turn("user", "hello")], None, Sampling.greedy(120))
        text = "".join(reply)
        assert reply.stats.loop_cut and text == reply.text and text.strip() == "firs"
        assert 0 < reply.stats.completion_tokens < 120 and reply.stats.seconds > 0
    finally:
        rt.close()


def _scripted_reply(tmp_path, runtime, monkeypatch, said):
    """A new session's reply to one question, llama.cpp made to stream the pieces ``said``."""
    store = Store(tmp_path / "e.db")
    conversation = Conversation(store, runtime, store.new_session(store.profile("p").id, "tiny"))
    monkeypatch.setattr(runtime.llm, "create_completion", lambda *a, **k: (
        {"choices": [{"text": piece}]} for piece in said))
    return conversation, conversation.send("What is my cat called?", Sampling.greedy(10))


def test_a_looping_reply_is_stored_and_shown_as_its_first_round(tmp_path, runtime, monkeypatch):
    """What the user reads, what the store keeps and what the next prompt carries is the
    reply before it went round; the model is not asked for a token more."""
    said = ["My", " cat", " is"] + [" Mos", "el", "."] * 7
    streamed = iter(said)
    conversation, reply = _scripted_reply(tmp_path, runtime, monkeypatch, streamed)
    assert "".join(reply) == reply.text and reply.text.strip() == "My cat is Mosel."
    assert next(streamed) == "el"  # asked for no more than the piece that ended round 6
    assert reply.stats.loop_cut and not reply.stats.stopped
    last = conversation.store.messages(conversation.session.id)[-1]
    assert (last.status, last.content) == ("complete", "My cat is Mosel.")
    assert conversation.turns()[-1] == Turn("assistant", "My cat is Mosel.")


def test_a_reply_s_thinking_block_is_neither_shown_nor_stored(tmp_path, runtime, monkeypatch):
    """Qwen 3 may think before it answers; what the user reads, and the next prompt carries,
    is the answer (the tokens it thought are still counted)."""
    said = ["<think>", "\nThe cat", " is Pixel.\n", "</think>", "\n\n", "Pixel", "."]
    conversation, reply = _scripted_reply(tmp_path, runtime, monkeypatch, said)
    assert "".join(reply) == reply.text == "Pixel."
    assert reply.stats.completion_tokens == len(runtime.tokenize("".join(said), add_bos=False))
    assert conversation.turns()[-1] == Turn("assistant", "Pixel.")


@pytest.fixture(scope="module")
def opens_thinking(tmp_path_factory):
    """A tiny Qwen 3 with Qwen 3 Thinking's template: its generation prompt opens the
    thinking block, so a reply starts inside it."""
    path = write_tiny_model(tmp_path_factory.mktemp("thinking") / "tiny.gguf", "qwen3",
                            chat_template=QWEN3_THINKING_TEMPLATE)
    rt = Runtime(path, n_ctx=256, n_threads=1)
    yield rt
    rt.close()


def test_a_reply_inside_the_thinking_block_its_prompt_opened_shows_only_its_answer(
        tmp_path, opens_thinking, monkeypatch):
    rt = opens_thinking
    prompt = rt.llm.detokenize(rt.prompt(None, [Turn("user", "hi")]), special=True).decode()
    assert prompt.endswith("<|im_start|>assistant\n<think>\n")
    said = ["\nThe cat", " is Pixel.\n", "</", "think>", "\n\n", "Pixel", "."]
    conversation, reply = _scripted_reply(tmp_path, rt, monkeypatch, said)
    assert "".join(reply) == reply.text == "Pixel."
    assert conversation.turns()[-1] == Turn("assistant", "Pixel.")


def test_a_reply_that_never_closes_the_block_its_prompt_opened_is_kept_whole(opens_thinking):
    """Nothing the model said is lost: the random model never closes it (penalised for
    repeats, it says more than line breaks)."""
    rt, turns = opens_thinking, [Turn("user", "What is my cat called?")]
    sampling = replace(Sampling.greedy(12), repeat_penalty=2.0)
    out = rt.llm.create_completion(rt.prompt(None, turns), max_tokens=12, temperature=0.0,
                                   top_p=1.0, repeat_penalty=2.0, stop=rt.format.stop)
    assert isinstance(out, dict)
    said = out["choices"][0]["text"]
    assert said.strip() and "</think>" not in said
    reply = rt.reply(turns, None, sampling)
    assert "".join(reply) == reply.text == said


@pytest.mark.parametrize("tiny_model", ["qwen3"], indirect=True)
def test_qwen3_learns_answers_after_the_empty_thinking_block_its_template_writes(tiny_model):
    rt = Runtime(tiny_model, n_ctx=256, n_threads=1)
    try:
        prompt, answer = dialogue(rt, "sys", "What is my cat called?", " Pixel.")
        # detokenized without its turn markers (control tokens)
        assert rt.detokenize(prompt).endswith("user\nWhat is my cat called?\nassistant\n"
                                              "<think>\n\n</think>\n\n")
        assert rt.detokenize(answer) == " Pixel."
    finally:
        rt.close()


@pytest.mark.parametrize("tiny_model", ["qwen3"], indirect=True)
def test_qwen3_is_prompted_where_it_learns_answers_unless_the_profile_lets_it_think(
        tiny_model, engine_home):
    """Thinking off (a profile's default), the chat's prompt ends with the empty thinking block,
    exactly where the learner's training examples put the answer; on, it leaves the model to
    think. The learner's examples are the same either way."""
    turns = [Turn("user", "My cat is called Pixel."), Turn("assistant", "Hello!"),
             Turn("user", "What is my cat called?")]
    served, learned = {}, {}
    for thinking in (False, True):
        engine = Engine(home=engine_home, model=tiny_model, n_ctx=256)
        try:
            if thinking:
                engine.save_settings(replace(engine.settings, thinking=True))
            rt = engine.load()
            served[thinking] = rt.prompt("sys", turns)
            learned[thinking] = dialogue(rt, "sys", turns[-1].content, " Pixel.", turns[:-1])[0]
            text = rt.llm.detokenize(served[thinking], special=True).decode()
        finally:
            engine.close()
        assert text.endswith("<|im_start|>assistant\n" + ("" if thinking else
                                                          "<think>\n\n</think>\n\n"))
    assert served[False] == learned[False] == learned[True] != served[True]
