"""``engram memory learn|rollback|forget|reset|export|import`` killed with SIGKILL at seeded
moments: is anything lost, is the profile still whole?

A home with learned versions is made once per run: three sessions, each owning a few neurons
of a version of its own, recorded as ``memory learn`` records them, and a fourth left pending.
Nothing is trained for them (what is checked is how the commands change the files and the
store, not what was learned), so any model will do, the tiny test one included; only ``learn``
trains, the pending session, so it needs a model learning can edit (a test runs it on the tiny
one with a smaller recipe: ``run``'s ``engram``). An archive of that home is exported to import.

Each trial copies the home, starts one command on the copy and, once it has opened the store
(the imports done), kills it within the time a clean run of the command took from there to
its end (the shorter of two, on copies): the stretch where it loads the model and changes the
home; a kill that comes after the end is counted as not interrupting. A fresh reader then
checks the copy as after a killed chat (``aftermath.check_home``; the versions checked are
those of the home before and any recorded since) and a new chat must work on it. Besides: an
export leaves nothing at its target or an archive that imports; an import leaves the profile
as it was or fully imported; a learning job leaves the session pending or decided by one whole
new version, and the next ``memory learn`` runs (the killed job's lock is no one's).
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
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import memory_archive
from engine.bench.aftermath import (
    REPOSITORY,
    chat_works,
    check_home,
    engram_command,
    last_line,
    versions_on_record,
)
from engine.engine import Engine
from engine.errors import EngramError
from engine.learning.ledger import pending_sessions
from engine.overlay import NeuronBlock, SparseOverlay
from engine.runtime import Runtime
from store import paths
from store.records import OverlayVersion
from store.store import Store

FACTS = [("What is my cat called?", "Pixel", "My cat is Pixel."),
         ("Who is my manager?", "Berit", "Berit is my manager."),
         ("Where do I live?", "Tromsø", "I live in Tromsø.")]
PENDING = "My dog is called Rex."  # said after the last version: what ``learn`` learns
NEURONS = 2  # per session, in layer LAYER's ffn_down
LAYER = 1
EXPORT_FILE = "memory.zip"
CLEAN_RUN_TIMEOUT_S = 1800  # a learning job on the built-in model takes minutes on a busy CPU
CLEAN_RUNS = 2  # timed, the shortest counts: on a busy machine one may take several times longer
POLL_S = 0.005


@dataclass(frozen=True)
class Prepared:
    """The home every trial copies, and what a trial's checks compare against."""

    home: Path
    archive: Path  # exported from ``home``: what ``import`` imports
    archive_sessions: int
    forget: int  # the session ``forget`` forgets (learned into the active version)
    pending: int  # the session ``learn`` learns
    said: list[str]  # every user message in ``home``
    profile: tuple[int, int | None]  # (sessions, active version) of ``home``
    runtime: Runtime  # reads an export left behind
    model: str | None
    engram: Callable[..., list[str]]  # (home, model, *args) -> the command line of ``engram``


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


def learn_whole(prepared: Prepared, folder: Path) -> str:
    """The pending session still pending and no version recorded since, or one whole new
    version learned from it (active, or rejected by the gate); then the next ``memory learn``
    runs, not kept waiting by the killed job's lock, and leaves nothing pending."""
    home = folder / "home"
    new, pending = learned_since(prepared, home)
    if not new and pending != [prepared.pending]:
        return f"no version recorded, yet pending: {pending}"
    if new and (len(new) > 1 or new[0].status not in ("active", "rejected")
                or list(new[0].learned) != [prepared.pending] or pending):
        return (f"half learned: versions {[(v.id, v.status) for v in new]} recorded, "
                f"pending: {pending}")
    try:
        out = subprocess.run(prepared.engram(home, prepared.model, "memory", "learn"),
                             capture_output=True, timeout=CLEAN_RUN_TIMEOUT_S, cwd=REPOSITORY)
    except subprocess.TimeoutExpired:  # killed by run: kept waiting (a lock?) or hung
        return f"the next memory learn did not end within {CLEAN_RUN_TIMEOUT_S} s"
    if out.returncode:
        return f"the next memory learn fails: {last_line(out.stderr)}"
    if pending := learned_since(prepared, home)[1]:
        return f"the next memory learn left sessions pending: {pending}"
    return ""


OPERATIONS = {
    "learn": Operation(lambda p, folder: ["memory", "learn"], learn_whole),
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


def learned_since(prepared: Prepared, home: Path) -> tuple[list[OverlayVersion], list[int]]:
    """The versions recorded in ``home`` since it was prepared, and the sessions pending for
    the model, as a fresh process finds them."""
    with closing(Store(paths.database(home))) as store:
        profile = store.profile("default")
        since = prepared.profile[1] or 0
        return ([v for v in store.overlay_versions(profile.id) if v.id > since],
                [s.id for s in pending_sessions(store, profile, prepared.runtime.model.sha256)])


def active_event(home: Path) -> str | None:
    """What made the active version (``learn``, ``import``, …)."""
    with closing(sqlite3.connect(paths.database(home))) as conn:
        row = conn.execute("SELECT v.metrics_json FROM overlay_versions v JOIN profiles p "
                           "ON p.id = v.profile_id WHERE p.name = 'default' "
                           "AND v.status = 'active'").fetchone()
    return json.loads(row[0]).get("event") if row else None


def learned_home(home: Path, archive: Path, model: str | None) -> tuple[list[int], int]:
    """Three sessions, each learned into a version of its own (random, small neurons), an
    archive of the last, then a session left pending; returns the learned sessions' ids and
    the pending one's."""
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
        pending = engine.new_session()
        store.add_message(pending.id, "user", PENDING)
        return ids, pending.id
    finally:
        engine.close()


def started(prepared: Prepared, home: Path, args: list[str]) -> tuple[subprocess.Popen, float]:
    """A command on ``home`` once it has opened the store (its write-ahead log appears: the
    imports are done), with that moment."""
    proc = subprocess.Popen(prepared.engram(home, prepared.model, *args),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPOSITORY)
    log = paths.database(home).with_name(paths.database(home).name + "-wal")
    while not log.exists() and proc.poll() is None:
        time.sleep(POLL_S)
    return proc, time.perf_counter()


def work_seconds(prepared: Prepared, name: str, folder: Path) -> float:
    """How long a command runs on a copy of the prepared home once it has opened the store,
    when nothing kills it (it must succeed)."""
    shutil.copytree(prepared.home, folder / "home")
    args = OPERATIONS[name].args(prepared, folder)
    proc, opened = started(prepared, folder / "home", args)
    try:
        _, err = proc.communicate(timeout=CLEAN_RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise EngramError(f"engram {' '.join(args)} did not end within {CLEAN_RUN_TIMEOUT_S} s "
                          "on the bench's home") from None
    if proc.returncode:
        raise EngramError(f"engram {' '.join(args)} fails on the bench's home: {last_line(err)}")
    return time.perf_counter() - opened


def trial(prepared: Prepared, name: str, work: float, folder: Path, seed: int) -> dict:
    """One command killed at a seeded moment of its work on a copy of the prepared home."""
    operation = OPERATIONS[name]
    home = folder / "home"
    shutil.copytree(prepared.home, home)
    versions = versions_on_record(home)
    proc, _ = started(prepared, home, operation.args(prepared, folder))
    time.sleep(random.Random(seed).uniform(0, work))
    proc.kill()
    _, err = proc.communicate()
    ended = "" if proc.returncode in (0, -signal.SIGKILL) else last_line(err)
    found = check_home(home, prepared.said, {**versions, **versions_on_record(home)})
    problem = operation.check(prepared, folder)
    works = chat_works(home, prepared.model)
    return {"operation": name, "seed": seed, "killed": proc.returncode == -signal.SIGKILL,
            "acknowledged": len(prepared.said), **found, "error": ended, "problem": problem,
            "chat_works": works,
            "survived": found["integrity"] and not found["lost_messages"]
            and not found["lost_versions"] and not ended and not problem and works}


@contextmanager
def prepared_home(folder: Path, model: str | None,
                  engram: Callable[..., list[str]] = engram_command) -> Iterator[Prepared]:
    """The home every trial copies (made under ``folder``), run with ``engram``."""
    home, archive = folder / "prepared", folder / "archive.zip"
    ids, pending = learned_home(home, archive, model)
    with zipfile.ZipFile(archive) as zf:
        archive_sessions = len(json.loads(zf.read(memory_archive.SESSIONS))["sessions"])
    with closing(Runtime(model, n_ctx=256)) as runtime:
        yield Prepared(home, archive, archive_sessions, ids[1], pending,
                       [said for _, _, said in FACTS] + [PENDING], profile_state(home), runtime,
                       model, engram)


def run(model: str | None, names: list[str], kills: int, seed: int,
        engram: Callable[..., list[str]] = engram_command,
        done: Callable[[str, list[dict]], object] = lambda name, trials: None) -> list[dict]:
    """``kills`` trials of each named operation, on copies of one prepared home; ``done``
    hears each operation's trials as it ends."""
    with tempfile.TemporaryDirectory(prefix="engram-memory-kills-") as tmp_name:
        tmp = Path(tmp_name)
        with prepared_home(tmp, model, engram) as prepared:
            trials = []
            for name in names:
                work = min(work_seconds(prepared, name, tmp / f"timing-{name}-{i}")
                           for i in range(CLEAN_RUNS))
                rng = random.Random(f"{seed}-{name}")
                mine = []
                for i in range(kills):
                    mine.append(trial(prepared, name, work, tmp / f"{name}-{i}",
                                      rng.randrange(2**31)))
                    shutil.rmtree(tmp / f"{name}-{i}")
                done(name, mine)
                trials += mine
    return trials
