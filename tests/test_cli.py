"""The ``engram`` command as a user runs it: real processes, pipes and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from app import __version__


def engram(*args: str, stdin: bytes = b"", home=None,
           timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "app.cli", *args]
    if home is not None:
        cmd[3:3] = ["--home", str(home)]
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout,
                          env=os.environ.copy())


def test_version():
    out = engram("--version")
    assert out.returncode == 0 and __version__ in out.stdout.decode()


def test_plain_chat_through_a_pipe_is_saved_and_listed(tiny_model, engine_home):
    out = engram("chat", "--plain", "--model", str(tiny_model),
                 stdin=b"hello\nthe cat\n", home=engine_home)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stderr.decode().count("tok/s") == 2  # per-reply stats
    listed = engram("sessions", "--json", home=engine_home)
    [session] = json.loads(listed.stdout)
    assert session["title"] == "hello" and session["message_count"] == 4

    # Continue the same session.
    out = engram("chat", "--plain", "--session", str(session["id"]), "--model", str(tiny_model),
                 stdin=b"more\n", home=engine_home)
    assert out.returncode == 0
    [session] = json.loads(engram("sessions", "--json", home=engine_home).stdout)
    assert session["message_count"] == 6


def test_non_utf8_stdin_is_refused_and_earlier_lines_kept(tiny_model, engine_home):
    out = engram("chat", "--plain", "--model", str(tiny_model),
                 stdin=b"hello\n\xff\xfe bad\n", home=engine_home)
    assert out.returncode == 2
    err = out.stderr.decode()
    assert "line 2 is not UTF-8" in err and "Traceback" not in err
    [session] = json.loads(engram("sessions", "--json", home=engine_home).stdout)
    assert session["message_count"] == 2


def test_megabyte_paste_is_refused_not_crashed(tiny_model, engine_home):
    big = b"cat " * 262_144 + b"\nhello\n"
    out = engram("chat", "--plain", "--model", str(tiny_model), "--ctx", "512",
                 stdin=big, home=engine_home)
    assert out.returncode == 0
    assert "not sent" in out.stderr.decode()
    [session] = json.loads(engram("sessions", "--json", home=engine_home).stdout)
    assert session["message_count"] == 2  # only "hello" and its reply


def test_missing_model_is_a_clear_error(engine_home, tmp_path):
    out = engram("chat", "--plain", "--model", str(tmp_path / "nope.gguf"), home=engine_home)
    assert out.returncode == 2
    assert "model file not found" in out.stderr.decode() and "Traceback" not in out.stderr.decode()


def test_unreadable_database_is_a_clear_error(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "engram.db").write_bytes(b"garbage" * 1000)
    out = engram("sessions", home=home)
    assert out.returncode == 2 and "not a readable Engram database" in out.stderr.decode()


def test_profile_name_that_leaves_profiles_is_refused_and_nothing_created(tmp_path, engine_home):
    for name in ("../../x", "a/b", "..", ".hidden", "a\\b", "x\x1b"):
        out = engram("--profile", name, "chat", "--plain", home=engine_home)
        err = out.stderr.decode()
        assert out.returncode == 2 and "cannot be a profile name" in err, (name, err)
        assert "Traceback" not in err
    assert not engine_home.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_home_that_is_a_file_is_a_one_line_error(tmp_path):
    afile = tmp_path / "passwd"
    afile.write_text("root:x:0:0\n")
    for home in (afile, afile / "below"):
        out = engram("sessions", home=home)
        err = out.stderr.decode()
        assert out.returncode == 2 and err.count("\n") == 1 and "is a file" in err, err
    assert afile.read_text() == "root:x:0:0\n"


def test_context_size_out_of_range_is_refused(engine_home):
    for ctx in ("-5", "0", "10", str(10**12), "many"):
        out = engram("--ctx", ctx, "sessions", home=engine_home)
        err = out.stderr.decode()
        assert out.returncode == 2 and "--ctx" in err and "Traceback" not in err, err
    assert not engine_home.exists()


def test_hostile_text_is_stored_as_typed_and_shown_inertly(tiny_model, engine_home):
    typed = "\x1b]0;pwned\x07hi\x00there \x1b[2J[bold]x[/bold] \x9b31m"
    out = engram("chat", "--plain", "--model", str(tiny_model),
                 stdin=typed.encode() + b"\n", home=engine_home)
    assert out.returncode == 0, out.stderr.decode()
    for shown in (out.stdout, engram("sessions", home=engine_home).stdout):
        assert not any(b in shown for b in (b"\x1b", b"\x07", b"\x00", "\x9b".encode()))
    listed = engram("sessions", home=engine_home).stdout.decode()
    assert "\u241b]0;pwned\u2407hi\u2400there" in listed
    from store.store import Store

    store = Store(engine_home / "engram.db")
    [session] = store.sessions(store.profile("default").id)
    assert store.messages(session.id)[0].content == typed
