"""A model the twin cannot reproduce still chats; learning says so instead of crashing."""

from __future__ import annotations

import pytest

from engine.engine import Engine
from engine.errors import LearningUnavailable
from engine.learning.anchors import twin_for
from engine.model_file import LEARNABLE_ARCHITECTURES, open_model
from engine.runtime import Sampling
from engine.twin import Twin
from tests.test_cli import engram
from tests.tiny_gguf import write_tiny_model

MESSAGE = "chat works; learning is not available for exaone"


@pytest.fixture(scope="module")
def exaone_model(tmp_path_factory):
    """EXAONE 3: Llama's layers under another name, which llama.cpp serves and Engram does not
    learn on."""
    return write_tiny_model(tmp_path_factory.mktemp("exaone") / "exaone.gguf", arch="exaone",
                            layers_like="llama")


def test_chat_works_and_learning_says_why_not(exaone_model, engine_home):
    engine = Engine(home=engine_home, model=exaone_model, n_ctx=256)
    try:
        conversation = engine.conversation(engine.new_session())
        reply = conversation.send("my cat is called Pixel", Sampling.greedy(4))
        list(reply)
        assert engine.runtime.model.architecture == "exaone"
        assert reply.stats.completion_tokens > 0
        assert not engine.schedule_learning(conversation.session.id)
        with pytest.raises(LearningUnavailable, match=MESSAGE):
            engine.learn_now()
        with pytest.raises(LearningUnavailable, match=MESSAGE):
            twin_for(engine.runtime)
    finally:
        engine.close()


def test_memory_learn_is_one_line_not_a_traceback(exaone_model, engine_home):
    out = engram("chat", "--plain", "--model", str(exaone_model), stdin=b"my cat is Pixel\n",
                 home=engine_home)
    assert out.returncode == 0, out.stderr.decode()
    out = engram("memory", "learn", "--model", str(exaone_model), home=engine_home)
    assert out.returncode == 2 and out.stderr.decode().strip() == f"engram: {MESSAGE} " \
        f"(Engram learns on {', '.join(sorted(LEARNABLE_ARCHITECTURES))} models for now)"


def test_long_context_rotary_factors_the_twin_lacks_make_learning_say_why_not(tmp_path):
    """Phi 3 128k / 3.5: llama.cpp's long/short rotary factors, which the twin does not apply."""
    model = write_tiny_model(tmp_path / "phi3-128k.gguf", "phi3", rope_factors=True)
    with pytest.raises(LearningUnavailable, match="long-context rotary factors"):
        Twin.load(open_model(model))
