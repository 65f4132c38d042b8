"""``engram chat --plain`` killed while it saves a session's KV state: is anything lost, is a
half-written snapshot ever taken for a whole one?

A save is a few milliseconds against seconds of reply, so a kill from outside at a random
moment almost never lands in one. Each trial's process dies inside one instead: the real chat
runs under a wrapper (``DIES_IN_SAVE``, as the crash tests' wrappers) that sends itself
SIGKILL at a seeded point of a seeded reply's save: ``write`` (part of the snapshot written to
its temporary, a seeded share of its bytes), ``rename`` (renamed into place, not yet recorded
in the store) or ``record`` (recorded, before the budget's pruning).

The home every trial copies holds a session with a saved snapshot; the chat continues that
session with a few messages. Afterwards a fresh reader checks the copy as after a killed chat
(``aftermath.check_home``: every message committed before the save began is there, each reply
before it complete), then the snapshot on record through the app's own decoder (whole, or
refused: never anything else), and a half-written temporary left behind must be refused by
it too. That temporary is then put where the snapshot belongs, as a writer without the
rename would have left it, and the session continued: the chat must say it re-read the
history, reply, tidy the temporary away and save a whole snapshot again.
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import tempfile
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path

from engine import session_state
from engine.bench.aftermath import (
    REPOSITORY,
    check_home,
    engram_command,
    last_line,
    versions_on_record,
)
from engine.engine import Engine
from engine.errors import EngramError
from engine.session_state import StateRefused
from store import paths
from store.store import Store

OPERATION = "kv-save"
KILL_POINTS = ("write", "rename", "record")
MESSAGES = 3  # per trial; the save of a seeded one of their replies is killed
MAX_TOKENS = 24  # replies short enough that a trial takes seconds on the built-in model
TIMEOUT_S = 600
HISTORY_RE_READ = b"history re-read"

DIES_IN_SAVE = """
import os, signal, sys
from engine import session_state
from store.store import Store

point, share, dying_save = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
del sys.argv[1:4]
saves = [0]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def dying():
    return saves[0] == dying_save + 1

def counted(save):
    def counting(self, session_id):
        saves[0] += 1
        return save(self, session_id)
    return counting

class PartWritten:
    def __init__(self, fh):
        self.fh = fh
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.fh.__exit__(*exc)
    def write(self, data):
        self.fh.write(data[:int(share * len(data))])
        self.fh.flush()
        die()

def opening(open_private):
    def opened(path, *args):
        fh = open_private(path, *args)
        return PartWritten(fh) if point == "write" and dying() else fh
    return opened

def before(point_here, call):
    def dies_first(*args, **kwargs):
        if point == point_here and dying():
            die()
        return call(*args, **kwargs)
    return dies_first

session_state.SessionStates.save = counted(session_state.SessionStates.save)
session_state.open_private = opening(session_state.open_private)
Store.save_session_kv = before("rename", Store.save_session_kv)
session_state.SessionStates._prune = before("record", session_state.SessionStates._prune)
from app.cli import main
sys.exit(main(sys.argv[1:]))
"""


@dataclass(frozen=True)
class Prepared:
    """The home every trial copies: one session, its snapshot saved."""

    home: Path
    session: int
    said: list[str]  # every user message in ``home``
    model: str | None


def chat(home: Path, model: str | None, session: int, texts: list[str],
         wrapper: list[str] | None = None) -> subprocess.CompletedProcess:
    """``engram chat --plain --session`` sent ``texts`` (under ``wrapper``: the dying one)."""
    command = engram_command(home, model, "chat", "--plain", "--session", str(session),
                             runner=wrapper or ("-m", "app.cli"))
    return subprocess.run(command, input="".join(t + "\n" for t in texts).encode(),
                          capture_output=True, timeout=TIMEOUT_S, cwd=REPOSITORY)


def prepare(home: Path, model: str | None) -> Prepared:
    """A home with one session whose snapshot a real chat saved; replies kept short."""
    engine = Engine(home, model=model)
    try:
        engine.save_settings(replace(engine.settings, max_tokens=MAX_TOKENS))
        session = engine.new_session().id
    finally:
        engine.close()
    said = ["My cat is called Pixel.", "She is three years old."]
    out = chat(home, model, session, said)
    if out.returncode or snapshot(home, session) is None:
        raise EngramError(f"the chat that prepares the kv-save trials failed: "
                          f"{last_line(out.stderr)}")
    return Prepared(home, session, said, model)


def snapshot(home: Path, session: int) -> tuple[Path, str, int | None, str] | None:
    """The snapshot a fresh process finds on record: its file, and the model, overlay version
    and digest recorded with it."""
    with closing(Store(paths.database(home))) as store:
        state = store.session_state(session)
    if state is None or state.kv_path is None or state.kv_model_sha256 is None:
        return None
    return (home / state.kv_path, state.kv_model_sha256, state.kv_overlay_id,
            state.kv_sha256 or "")


def decodes(blob: bytes, recorded: tuple[Path, str, int | None, str], digest: bool) -> bool:
    """Whether the app's decoder takes ``blob`` for a whole snapshot (against the recorded
    digest too, if ``digest``); anything but a refusal escapes."""
    _, model, overlay, sha256 = recorded
    try:
        session_state.decode(blob, model, overlay, sha256 if digest else None)
    except StateRefused:
        return False
    return True


def replies_complete(home: Path, session: int, texts: list[str]) -> str:
    """"" if each of ``texts`` is stored with a complete reply after it."""
    with closing(Store(paths.database(home))) as store:
        messages = store.messages(session)
    for i, m in enumerate(messages):
        if m.role == "user" and m.content in texts:
            after = messages[i + 1] if i + 1 < len(messages) else None
            if after is None or after.role != "assistant" or after.status != "complete":
                return f"the reply to {m.content!r} is {after and after.status}"
    return ""


def temporaries(home: Path, session: int) -> list[Path]:
    kv = session_state.kv_file(home, "default", session)
    return sorted(kv.parent.glob(f".{kv.name}.*.tmp"))


def check_snapshot(prepared: Prepared, home: Path) -> tuple[str, bool]:
    """What went wrong with the snapshot on record and any temporary left ("" if nothing), and
    whether a half-written one was put in its place."""
    recorded = snapshot(home, prepared.session)
    if recorded is None:
        return "no snapshot on record", False
    kv = session_state.kv_file(home, "default", prepared.session)
    if recorded[0] != kv:
        return f"the store records {recorded[0].name} as the snapshot", False
    decodes(kv.read_bytes(), recorded, digest=True)  # whole, or refused: nothing else
    left = temporaries(home, prepared.session)
    if len(left) > 1:
        return f"{len(left)} temporaries left", False
    if not left:
        return "", False
    half = left[0].read_bytes()
    if decodes(half, recorded, digest=False):
        return "a half-written snapshot decodes as a whole one", False
    kv.write_bytes(half)  # as a writer without the rename would have left it
    return "", True


def trial(prepared: Prepared, folder: Path, seed: int) -> dict:
    """One chat killed at a seeded point of a seeded reply's KV save, on a copy of the
    prepared home."""
    rng = random.Random(seed)
    point, share, dying_save = rng.choice(KILL_POINTS), rng.random(), rng.randrange(MESSAGES)
    home = folder / "home"
    shutil.copytree(prepared.home, home)
    versions = versions_on_record(home)
    texts = [f"kv trial {seed} message {i}" for i in range(MESSAGES)]
    out = chat(home, prepared.model, prepared.session, texts,
               ["-c", DIES_IN_SAVE, point, str(share), str(dying_save)])
    killed = out.returncode == -signal.SIGKILL
    ended = "" if out.returncode in (0, -signal.SIGKILL) else last_line(out.stderr)
    committed = texts[:dying_save + 1] if killed else texts  # the save follows its reply
    found = check_home(home, prepared.said + committed, versions)
    problem, placed = replies_complete(home, prepared.session, prepared.said + committed), False
    if not problem:
        try:
            problem, placed = check_snapshot(prepared, home)
        except Exception as exc:  # noqa: BLE001  (the point: nothing but a refusal may escape)
            problem = f"reading the snapshot raised {type(exc).__name__}: {exc}"
    resumed = chat(home, prepared.model, prepared.session, ["after"])
    works = resumed.returncode == 0 and b"tok/s" in resumed.stderr
    if works and not problem:
        problem = _after_resume(prepared, home, placed, resumed.stderr)
    return {"operation": OPERATION, "seed": seed, "point": point, "killed": killed,
            "acknowledged": len(prepared.said) + len(committed), **found, "error": ended,
            "problem": problem, "chat_works": works, "half_written_placed": placed,
            "survived": found["integrity"] and not found["lost_messages"]
            and not found["lost_versions"] and not ended and not problem and works}


def _after_resume(prepared: Prepared, home: Path, placed: bool, err: bytes) -> str:
    """"" if the continued session said it re-read a refused snapshot (one was put in place),
    left no temporary and saved a whole snapshot again."""
    if placed and HISTORY_RE_READ not in err:
        return "a half-written snapshot in place was not refused"
    if left := temporaries(home, prepared.session):
        return f"the next chat left {left[0].name}"
    recorded = snapshot(home, prepared.session)
    if recorded is None or not decodes(recorded[0].read_bytes(), recorded, digest=True):
        return "the next chat saved no whole snapshot"
    return ""


def run(model: str | None, kills: int, seed: int) -> list[dict]:
    """``kills`` trials on copies of one prepared home."""
    with tempfile.TemporaryDirectory(prefix="engram-state-kills-") as tmp_name:
        tmp = Path(tmp_name)
        prepared = prepare(tmp / "prepared", model)
        rng = random.Random(f"{seed}-{OPERATION}")
        trials = []
        for i in range(kills):
            trials.append(trial(prepared, tmp / f"trial-{i}", rng.randrange(2**31)))
            shutil.rmtree(tmp / f"trial-{i}")
    return trials
