"""The ``engram`` command as a user runs it: real processes, pipes and exit codes."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from app import __version__
from tests.tiny_gguf import write_tiny_model


def engram(*args: str, stdin: bytes = b"", home=None, timeout: float = 120,
           runner: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = [*runner, sys.executable, "-m", "app.cli", *(["--home", str(home)] if home else []),
           *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout,
                          env=os.environ.copy())


def bound_by_permissions() -> tuple[str, ...]:
    """A prefix under which permission bits bind, as they do for a user: root ignores them
    (CAP_DAC_OVERRIDE), so as root the command runs without that capability."""
    if os.geteuid() != 0:
        return ()
    runner = ("setpriv", "--inh-caps=-all",
              "--bounding-set=-dac_override,-dac_read_search,-fowner")
    if not shutil.which("setpriv") or subprocess.run([*runner, "true"]).returncode:
        pytest.skip("root here cannot drop the capability that ignores permission bits")
    return runner


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


def test_a_model_whose_chat_template_escapes_is_refused_in_one_line(tmp_path, engine_home):
    marker = tmp_path / "PWNED"
    model = write_tiny_model(tmp_path / "hostile.gguf", chat_template=(
        f"{{{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}}}"))
    out = engram("chat", "--plain", "--model", str(model), stdin=b"hello\n", home=engine_home)
    err = out.stderr.decode()
    assert out.returncode == 2 and err.count("\n") == 1 and "outside its sandbox" in err, err
    assert not marker.exists()


def test_a_message_the_chat_template_refuses_is_not_sent_and_chat_goes_on(tmp_path,
                                                                          engine_home):
    """A template may refuse one dialogue (real ones refuse a system turn or roles out of
    order): that message is not kept, and the chat goes on."""
    model = write_tiny_model(tmp_path / "strict.gguf", chat_template=(
        "{% for m in messages %}{% if 'secret' in m['content'] %}"
        "{{ raise_exception('no secrets') }}{% endif %}"
        "<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}<|assistant|>"))
    out = engram("chat", "--plain", "--model", str(model), stdin=b"hello\nsecret\nthe cat\n",
                 home=engine_home)
    err = out.stderr.decode()
    assert out.returncode == 0 and "[not sent: the chat template in strict.gguf" in err, err
    [session] = json.loads(engram("sessions", "--json", home=engine_home).stdout)
    assert session["message_count"] == 4  # "hello", "the cat" and their replies


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


def _set_writable(home, writable: bool) -> None:
    """``chmod -R u+w`` or ``chmod -R a-w``."""
    for path in [home, *home.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        path.chmod(mode | 0o200 if writable else mode & ~0o222)


def _files(home):
    return {p: (p.read_bytes() if p.is_file() else None, stat.S_IMODE(p.stat().st_mode))
            for p in sorted(home.rglob("*"))}


def test_a_read_only_home_is_read_and_chat_refuses_in_one_line(tiny_model, engine_home):
    """``chmod -R a-w`` on a home with a session: listing and ``memory show`` work, a chat
    refuses before it takes a line, and the home is exactly as it was (Engram used to make it
    writable again: it set 0700 and 0600 on what it found)."""
    assert engram("chat", "--plain", "--model", str(tiny_model), stdin=b"kept\n",
                  home=engine_home).returncode == 0
    runner = bound_by_permissions()
    _set_writable(engine_home, False)
    before = _files(engine_home)
    try:
        listed = engram("sessions", "--json", home=engine_home, runner=runner)
        assert listed.returncode == 0, listed.stderr.decode()
        assert [s["title"] for s in json.loads(listed.stdout)] == ["kept"]
        shown = engram("memory", "show", "--model", str(tiny_model), home=engine_home,
                       runner=runner)
        assert shown.returncode == 0 and "pending: s1" in shown.stdout.decode(), shown.stderr
        chat = engram("chat", "--plain", "--model", str(tiny_model), stdin=b"lost?\n",
                      home=engine_home, runner=runner)
        [line] = chat.stderr.decode().splitlines()
        assert chat.returncode == 2 and "cannot be written, so Engram cannot save" in line
        assert _files(engine_home) == before
    finally:
        _set_writable(engine_home, True)


def test_a_read_only_home_whose_log_holds_messages_shows_them(engine_home):
    """Killed before its log was folded into the database: in a read-only home the store
    reads the log too (an immutable read of the file alone would miss the message)."""
    writer = ("import os, sys; from store.store import Store; "
              "store = Store(sys.argv[1]); "
              "session = store.new_session(store.profile('default').id, 'm', title='in the log'); "
              "store.add_message(session.id, 'user', 'unfolded'); os._exit(0)")
    engine_home.mkdir(mode=0o700)
    subprocess.run([sys.executable, "-c", writer, str(engine_home / "engram.db")], check=True)
    assert (engine_home / "engram.db-wal").stat().st_size > 0
    runner = bound_by_permissions()
    _set_writable(engine_home, False)
    try:
        listed = engram("sessions", "--json", home=engine_home, runner=runner)
        assert listed.returncode == 0, listed.stderr.decode()
        assert [(s["title"], s["message_count"]) for s in json.loads(listed.stdout)] == [
            ("in the log", 1)]
    finally:
        _set_writable(engine_home, True)
