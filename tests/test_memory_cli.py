"""``engram memory …`` as a user runs it (in-process, on the tiny model): output and exit codes."""

from __future__ import annotations

import functools
import io
import re

import pytest

from app import memory_cli
from app.cli import main
from engine import cell_conversations, cell_training
from engine.engine import Engine
from engine.learning import CELLS_EVERY, Step
from tests.test_learning import said, small  # noqa: F401  (small is a fixture)


@pytest.fixture
def engram(small, tiny_model, engine_home, capsys):  # noqa: F811
    """``engram(*args) -> (exit code, stdout, stderr)`` on a home with two sessions."""
    engine = Engine(home=engine_home, model=tiny_model)
    engine.save_settings(engine.settings.with_gate(0.0))
    said(engine, "What is my cat called?|What is the name of my pet?|Pixel")
    said(engine, "Who is my manager?|Berit")
    engine.close()

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--home", str(engine_home), "--model", str(tiny_model), *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_learn_show_versions_diff_forget_rollback_reset(engram):
    code, out, err = engram("memory", "show")
    assert code == 0 and "learning on" in out and "pending: s1, s2" in out

    code, out, err = engram("memory", "learn")
    assert code == 0, err
    # the tiny model's three steps bring out nothing: kept, and said so
    assert "session 1 'New session': learned 0 facts, 1 not recalled yet → v1 (active)" in out
    assert "What is my cat called? → Pixel  (not recalled yet: asked, the memory" in out
    assert "What is the name of my pet? → Pixel" in out and "→ v2 (active)" in out
    assert re.search(r"locality [01]\.\d{3}, [01]\.\d{3} on decided answers \(threshold 0\) · "
                     r"KL on neutral prompts", out)
    assert "session 1 (1/2): finding what to remember" in err  # progress, one line a phase
    assert err.count("answer loss") <= 2

    code, out, _ = engram("memory", "learn")
    assert code == 0 and out.startswith("nothing to learn")

    code, out, _ = engram("memory", "show")
    assert "active: v2" in out and "Who is my manager? → Berit" in out and "pending" not in out

    code, out, _ = engram("memory", "versions")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("v2") and "active" in lines[0]
    assert "learned s2" in lines[0] and "superseded" in lines[1]

    code, out, _ = engram("memory", "diff")
    assert code == 0 and out.startswith("v2 (active") and "vs v1 (superseded)" in out
    assert "sessions learned: s2 'New session'" in out
    assert "layer  1" in out and "layer  2" in out and "parameters touched" in out
    assert "s2 · Who is my manager?  (expected: Berit)" in out
    assert "before:" in out and "after:" in out

    code, out, _ = engram("memory", "diff", "s1")
    assert code == 0 and out.startswith("v1 (superseded") and "vs the base model" in out

    code, out, _ = engram("memory", "forget", "1")
    assert code == 0 and out.startswith("forgot session 1: v3 is active")
    assert "s1 · What is my cat called?" in out and "after:" in out

    code, out, _ = engram("memory", "rollback")
    assert code == 0 and out.startswith("rolled back: v2 is active")
    code, out, _ = engram("memory", "rollback", "v1")
    assert code == 0 and "v1 is active" in out

    code, out, err = engram("memory", "reset")
    assert code == 2 and "--yes" in err
    code, out, _ = engram("memory", "reset", "--yes")
    assert code == 0 and out.startswith("memory reset: v4 is empty")
    code, out, _ = engram("memory", "show")
    assert "active: v4" in out and "0 sessions" in out


def test_pause_and_resume(engram):
    assert engram("memory", "pause")[1].startswith("learning paused")
    code, out, err = engram("memory", "learn")
    assert code == 2 and "paused" in err
    assert "learning paused" in engram("memory", "show")[1]
    assert engram("memory", "resume")[0] == 0
    assert "learning on" in engram("memory", "show")[1]


@pytest.mark.parametrize("args, message", [
    (("forget", "9"), "session 9 is not in the active memory"),
    (("rollback",), "nothing to roll back"),
    (("rollback", "42"), "no overlay version 42"),
    (("diff",), "no learned memory is active"),
    (("diff", "s5"), "no version of this model has learned session 5"),
    (("diff", "x7"), "neither a version"),
    (("learn", "--session", "99"), "no session 99"),
    (("reset", "--yes"), "nothing to reset"),
])
def test_errors_are_one_clean_line_with_exit_code_2(engram, args, message):
    code, out, err = engram("memory", *args)
    assert code == 2 and out == ""
    assert err.startswith("engram: ") and message in err and err.count("\n") == 1


def test_learn_says_when_a_long_session_taught_the_cells_read(engram, engine_home, tiny_model,
                                                              monkeypatch):
    monkeypatch.setattr(cell_training, "GateRecipe",
                        functools.partial(cell_training.GateRecipe, steps=2))
    dev = cell_conversations.dev_cases()[:2]
    monkeypatch.setattr(cell_conversations, "dev_cases", lambda: dev)
    engine = Engine(home=engine_home, model=tiny_model)
    session = engine.new_session()
    for i in range(CELLS_EVERY):
        engine.store.add_message(session.id, "user", f"the cat {i} was in the town")
        engine.store.add_message(session.id, "assistant", f"and the town {i}")
    engine.close()
    code, out, err = engram("memory", "learn")
    assert code == 0, err
    assert re.search(r"v\d+: learned the cells' read from 4 exchanges of long sessions", out)
    code, out, _ = engram("memory", "versions")
    assert out.splitlines()[0].startswith("v") and "learned the cells' read" in out.splitlines()[0]


def test_show_names_a_damaged_active_version(engram, engine_home):
    """A bit flipped in the versions' tensors: ``memory show`` says so (from the manifest's
    checksum, no model loaded) instead of listing the memory as if it were in use."""
    assert engram("memory", "learn")[0] == 0
    for tensors in engine_home.rglob("overlay.safetensors"):
        data = bytearray(tensors.read_bytes())
        data[-1] ^= 0xFF
        tensors.write_bytes(bytes(data))

    code, out, _ = engram("memory", "show")
    assert code == 0
    problem = next(line for line in out.splitlines() if line.startswith("problem:"))
    assert "does not match its checksum" in problem and "rollback" in problem


def test_the_line_chat_says_when_the_memory_was_set_aside(engram, engine_home, capsys,
                                                          monkeypatch):
    """A damaged active version: the plain chat runs on without it and says why on stderr."""
    import io

    assert engram("memory", "learn")[0] == 0
    for tensors in engine_home.rglob("overlay.safetensors"):
        data = bytearray(tensors.read_bytes())
        data[-1] ^= 0xFF
        tensors.write_bytes(bytes(data))
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"hi\n")))
    code, _, err = engram("chat", "--plain", "--private")
    assert code == 0 and "[memory: overlay v" in err and "set aside" in err


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_each_learning_phase_gets_a_bar_of_its_own():
    screen = Terminal()
    bar = memory_cli.ProgressBar(screen)
    bar(0.0, Step("finding what to remember", "deriving", 0.0))
    bar(0.05, Step("12 of 14 derived questions passed the check", "deriving", 1.0))
    bar(0.3, Step("step 3: answer loss 1.2", "training", 0.25, left_s=150))
    bar(0.5, Step("step 9: answer loss 0.4", "training", 0.75, left_s=20))
    bar(0.8, Step("checking that unrelated answers stay the same", "gate", 0.0))
    lines = [line.rsplit("\r", 1)[-1].rstrip() for line in screen.getvalue().split("\n")]
    assert [line.split()[0] for line in lines] == ["deriving", "training", "gate"]
    assert "100%" in lines[0] and "100%" in lines[1]  # a finished phase's bar stays, full
    assert lines[2].startswith("gate") and "  0% checking" in lines[2]
    assert "about 2 min left" in screen.getvalue() and "about 20 s left" in screen.getvalue()


def test_off_a_terminal_progress_is_a_line_per_new_message_not_per_step():
    out = io.StringIO()
    bar = memory_cli.ProgressBar(out)
    for step in range(1, 4):
        bar(step / 10, Step(f"step {step}: answer loss {1 / step:.3f}", "training", step / 3))
    bar(0.8, Step("checking that unrelated answers stay the same", "gate", 0.0))
    assert out.getvalue().splitlines() == [" 10% step 1: answer loss 1.000",
                                           " 80% checking that unrelated answers stay the same"]
