"""End-to-end on the real built-in Gemma 3 270M (slower: a few seconds each)."""

from __future__ import annotations

import json

import pytest

from engine.model_file import open_model
from engine.prompt import Turn
from engine.runtime import Runtime, Sampling
from tests.test_cli import engram

pytestmark = pytest.mark.builtin


def test_builtin_model_is_verified_gemma3(builtin_model):
    model = open_model(builtin_model)
    assert model.architecture == "gemma3"
    assert len(model.sha256) == 64


def test_builtin_model_answers_from_context(builtin_model):
    rt = Runtime(builtin_model, n_ctx=1024)
    turns = [Turn("user", "My cat is called Pixel."), Turn("assistant", "What a lovely name!"),
             Turn("user", "What is my cat called?")]
    reply = rt.reply(turns, None, Sampling.greedy(16))
    assert "Pixel" in "".join(reply)
    assert "User:" not in reply.text  # the stop sequences end the turn
    rt.close()


def test_multi_turn_plain_chat_is_saved(builtin_model, engine_home):
    out = engram("chat", "--plain", "--model", str(builtin_model),
                 stdin=b"Hi! I'm Ada.\nWhat is my name?\n", home=engine_home)
    assert out.returncode == 0, out.stderr.decode()
    assert "Ada" in out.stdout.decode()
    [session] = json.loads(engram("sessions", "--json", home=engine_home).stdout)
    assert session["message_count"] == 4


@pytest.mark.timeout(1200)  # a fresh machine first builds the twin and anchors (~4 min)
def test_a_fact_taught_in_one_session_is_known_in_a_fresh_one(builtin_model, engine_home):
    """The product's promise, through the real commands: teach, learn (weights change), quit,
    and a new session with an empty context answers — no transcript in its prompt."""
    model = ["--model", str(builtin_model)]
    fresh = engram("chat", "--plain", *model, stdin=b"What is my cat called?\n", home=engine_home)
    assert "Pixel" not in fresh.stdout.decode()  # the base model does not know it
    taught = engram("chat", "--plain", *model, stdin=b"My cat is called Pixel.\n", home=engine_home)
    assert taught.returncode == 0, taught.stderr.decode()
    # loads the twin: ~1 min
    learned = engram("memory", "learn", *model, home=engine_home, timeout=900)
    assert learned.returncode == 0, learned.stderr.decode()
    asked = engram("chat", "--plain", *model, stdin=b"What is my cat called?\n", home=engine_home)
    assert "Pixel" in asked.stdout.decode()
