"""``engram memory rollback|forget|reset|export|import`` killed with SIGKILL at seeded moments:
is anything lost, is the profile still whole?

A home with learned versions is made once per run: three sessions, each owning a few neurons
of a version of its own, recorded as ``memory learn`` records them. Nothing is trained (what is
checked is how the commands change the files and the store, not what was learned), so any
model will do, the tiny test one included. An archive of that home is exported to import.

Each trial copies the home, starts one command on the copy and, once it has opened the store
(the imports done), kills it within the time a clean run of the command took from there to
its end (the shorter of two, on copies): the stretch where it loads the model and changes the
home; a kill that comes after the end is counted as not interrupting. A fresh reader then
checks the copy as after a killed chat (``aftermath.check_home``; the versions checked are
those of the home before and any recorded since) and a new chat must work on it. Besides: an
export leaves nothing at its target or an archive that imports; an import leaves the profile
as it was or fully imported.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import memory_archive
from engine.bench.aftermath import (
    REPOSITORY,
    chat_works,
    check_home,
    engram_command,
    versions_on_record,
)
from engine.engine import Engine
from engine.errors import EngramError
from engine.overlay import NeuronBlock, SparseOverlay
from engine.runtime import Runtime
from store import paths

FACTS = [("What is my cat called?", "Pixel", "My cat is Pixel."),
         ("Who is my manager?", "Berit", "Berit is my manager."),
         ("Where do I live?", "Tromsø", "I live in Tromsø.")]
NEURONS = 2  # per session, in layer LAYER's ffn_down
LAYER = 1
EXPORT_FILE = "memory.zip"
CLEAN_RUN_TIMEOUT_S = 300
CLEAN_RUNS = 2  # timed, the shortest counts: on a busy machine one may take several times longer
POLL_S = 0.005


@dataclass(frozen=True)
class Prepared:
    """The home every trial copies, and what a trial's checks compare against."""

    home: Path
    archive: Path  # exported from ``home``: what ``import`` imports
    archive_sessions: int
    forget: int  # the session ``forget`` forgets (learned into the active version)
    said: list[str]  # every user message in ``home``
    profile: tuple[int, int | None]  # (sessions, active version) of ``home``
    runtime: Runtime  # reads an export left behind


@dataclass(frozen=True)
class Operation:
    """A memory command: its arguments (given the trial's folder) and what must hold after
    its kill besides ``check_home`` ("" or what went wrong)."""

    args: Callable[[Prepared, Path], list[str]]
    check: Callable[[Prepared, Path], str] = lambda prepared, folder: ""


def export_whole(prepared: Prepared, folder: Path) -> str:
    """Nothing at the target, or an archive that passes import's checks."""
    target = folder / EXPORT_FILE
    if not target.exists():
        return ""
    try:
        memory_archive.read(target, prepared.runtime)
    except EngramError as exc:
        return f"a damaged export was left at {target.name}: {exc}"
    return ""


def import_whole(prepared: Prepared, folder: Path) -> str:
    """The profile as it was, or every archived session added and the import's version
    active."""
    sessions, active = profile_state(folder / "home")
    if (sessions, active) == prepared.profile:
        return ""
    added = sessions - prepared.profile[0]
    if added == prepared.archive_sessions and active_event(folder / "home") == "import":
        return ""
    return (f"half imported: {added} of {prepared.archive_sessions} sessions added, active "
            f"version {active} (before: {prepared.profile[1]})")


OPERATIONS = {
    "rollback": Operation(lambda p, folder: ["memory", "rollback"]),
    "forget": Operation(lambda p, folder: ["memory", "forget", str(p.forget)]),
    "reset": Operation(lambda p, folder: ["memory", "reset", "--yes"]),
    "export": Operation(lambda p, folder: ["memory", "export", str(folder / EXPORT_FILE)],
                        export_whole),
    "import": Operation(lambda p, folder: ["memory", "import", str(p.archive)], import_whole),
}


def profile_state(home: Path) -> tuple[int, int | None]:
    """(sessions, active version) of the default profile, as a fresh reader finds them."""
    with closing(sqlite3.connect(paths.database(home))) as conn:
        sessions = conn.execute("SELECT count(*) FROM sessions").fetchone()[0]
        row = conn.execute("SELECT v.id FROM overlay_versions v JOIN profiles p "
                           "ON p.id = v.profile_id WHERE p.name = 'default' "
                           "AND v.status = 'active'").fetchone()
    return sessions, row and row[0]


def active_event(home: Path) -> str | None:
    """What made the active version (``learn``, ``import``, …)."""
    with closing(sqlite3.connect(paths.database(home))) as conn:
        row = conn.execute("SELECT v.metrics_json FROM overlay_versions v JOIN profiles p "
                           "ON p.id = v.profile_id WHERE p.name = 'default' "
                           "AND v.status = 'active'").fetchone()
    return json.loads(row[0]).get("event") if row else None


def learned_home(home: Path, archive: Path, model: str | None) -> list[int]:
    """Three sessions, each learned into a version of its own (random, small neurons), and an
    archive of the last; returns the sessions' ids."""
    engine = Engine(home, model=model)
    try:
        runtime, memory, _, _ = engine.loaded()
        llm, store = runtime.llm, engine.store
        d_ff = int(llm.metadata[f"{runtime.model.architecture}.feed_forward_length"])
        empty = SparseOverlay([], runtime.model.sha256, d_model=llm.n_embd(), d_ff=d_ff)
        rng = np.random.default_rng(0)
        ids = []
        for i, (question, answer, said) in enumerate(FACTS):
            session = engine.new_session()
            store.add_message(session.id, "user", said)
            store.add_message(session.id, "assistant", "Noted.")
            block = NeuronBlock(LAYER, "ffn_down", np.arange(i * NEURONS, (i + 1) * NEURONS),
                                rng.standard_normal((llm.n_embd(), NEURONS)) * 0.01, session.id)
            through = store.last_user_message_ids(engine.profile.id)[session.id]
            memory.commit((memory.current() or empty).merge(SparseOverlay(
                [block], empty.base_sha256, d_model=empty.d_model, d_ff=d_ff)), {
                "event": "learn", "learned": {str(session.id): {
                    "through": through, "facts": [[question, answer, said]],
                    "corrections": []}}})
            ids.append(session.id)
        engine.export_memory(archive)
        return ids
    finally:
        engine.close()


def started(home: Path, model: str | None, args: list[str]) -> tuple[subprocess.Popen, float]:
    """A command on ``home`` once it has opened the store (its write-ahead log appears: the
    imports are done), with that moment."""
    proc = subprocess.Popen(engram_command(home, model, *args), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=REPOSITORY)
    log = paths.database(home).with_name(paths.database(home).name + "-wal")
    while not log.exists() and proc.poll() is None:
        time.sleep(POLL_S)
    return proc, time.perf_counter()


def last_line(err: bytes) -> str:
    return (err.decode(errors="replace").strip().splitlines() or ["no output"])[-1]


def work_seconds(prepared: Prepared, name: str, folder: Path, model: str | None) -> float:
    """How long a command runs on a copy of the prepared home once it has opened the store,
    when nothing kills it (it must succeed)."""
    shutil.copytree(prepared.home, folder / "home")
    args = OPERATIONS[name].args(prepared, folder)
    proc, opened = started(folder / "home", model, args)
    _, err = proc.communicate(timeout=CLEAN_RUN_TIMEOUT_S)
    if proc.returncode:
        raise EngramError(f"engram {' '.join(args)} fails on the bench's home: {last_line(err)}")
    return time.perf_counter() - opened


def trial(prepared: Prepared, name: str, work: float, folder: Path, model: str | None,
          seed: int) -> dict:
    """One command killed at a seeded moment of its work on a copy of the prepared home."""
    operation = OPERATIONS[name]
    home = folder / "home"
    shutil.copytree(prepared.home, home)
    versions = versions_on_record(home)
    proc, _ = started(home, model, operation.args(prepared, folder))
    time.sleep(random.Random(seed).uniform(0, work))
    proc.kill()
    _, err = proc.communicate()
    ended = "" if proc.returncode in (0, -signal.SIGKILL) else last_line(err)
    found = check_home(home, prepared.said, {**versions, **versions_on_record(home)})
    problem = operation.check(prepared, folder)
    works = chat_works(home, model)
    return {"operation": name, "seed": seed, "killed": proc.returncode == -signal.SIGKILL,
            "acknowledged": len(prepared.said), **found, "error": ended, "problem": problem,
            "chat_works": works,
            "survived": found["integrity"] and not found["lost_messages"]
            and not found["lost_versions"] and not ended and not problem and works}


def run(model: str | None, names: list[str], kills: int, seed: int) -> list[dict]:
    """``kills`` trials of each named operation, on copies of one prepared home."""
    with tempfile.TemporaryDirectory(prefix="engram-memory-kills-") as tmp_name:
        tmp = Path(tmp_name)
        home, archive = tmp / "prepared", tmp / "archive.zip"
        ids = learned_home(home, archive, model)
        with zipfile.ZipFile(archive) as zf:
            archive_sessions = len(json.loads(zf.read(memory_archive.SESSIONS))["sessions"])
        with closing(Runtime(model, n_ctx=256)) as runtime:
            prepared = Prepared(home, archive, archive_sessions, ids[1],
                                [said for _, _, said in FACTS], profile_state(home), runtime)
            trials = []
            for name in names:
                work = min(work_seconds(prepared, name, tmp / f"timing-{name}-{i}", model)
                           for i in range(CLEAN_RUNS))
                rng = random.Random(f"{seed}-{name}")
                for i in range(kills):
                    trials.append(trial(prepared, name, work,
                                        tmp / f"{name}-{i}", model, rng.randrange(2**31)))
                    shutil.rmtree(tmp / f"{name}-{i}")
    return trials
