"""What Engram writes is the user's alone: every directory 0700, every file 0600, whatever
the umask (here 0, so anything left to it would show as 0777 / 0666)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from engine.engine import Engine
from engine.learning.lock import profile_lock
from engine.runtime import Sampling


def modes(*roots: Path) -> dict[str, int]:
    found = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            found[str(path)] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_everything_written_is_private_whatever_the_umask(tmp_path, tiny_model, make_overlay,
                                                          isolated_cache):
    old = os.umask(0)
    try:
        home, exports = tmp_path / "nested" / "home", tmp_path / "exports"
        engine = Engine(home, profile="alice", model=tiny_model, n_ctx=256)
        engine.load()
        conversation = engine.conversation(engine.new_session())
        "".join(conversation.send("My cat is Pixel.", Sampling.greedy(8)))
        with profile_lock(engine.home, "alice", wait=1):
            engine.memory.commit(make_overlay(engine.runtime.model.sha256,
                                              [(1, "ffn_down", 4, conversation.session.id)]))
        os.umask(0o700)  # the user's chosen destination, made by them
        exports.mkdir()
        os.umask(0)
        written = [engine.export_memory(exports / name, fmt)
                   for name, fmt in (("m.zip", "archive"), ("m.gguf", "gguf"), ("peft", "peft"))]
        engine.close()
    finally:
        os.umask(old)
    tree = modes(tmp_path / "nested", *written, isolated_cache)
    names = {Path(p).name for p in tree}
    assert {"profiles", "alice", "overlays", "sessions", "learning.lock", "engram.db",
            "1.kv"} <= names, names  # the walk saw what a session leaves
    wrong = {p: oct(m) for p, m in tree.items()
             if m != (0o700 if Path(p).is_dir() else 0o600)}
    assert not wrong, wrong
