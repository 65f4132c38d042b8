"""kill -9 during a streamed reply, a KV save and the memory commands, at seeded moments, and
two chats at once on one profile, on real processes and the tiny model: nothing acknowledged is
lost, the database stays whole, and the next chat works."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from contextlib import closing
from dataclasses import replace

import pytest

from engine.bench import memory_kills, reliability, state_kills
from engine.bench.aftermath import (
    REPOSITORY,
    chat_works,
    check_home,
    engram_command,
    versions_on_record,
)
from engine.bench.memory_kills import learned_home, profile_state
from engine.bench.reliability import concurrent_trial, crash_trial
from engine.engine import Engine
from engine.errors import EngramError
from engine.learning.lock import profile_lock
from engine.learning.service import LOCK_WAIT_S
from store.store import Store

WAITING = "waiting for it"


def test_killed_while_streaming_loses_nothing_acknowledged(tmp_path, tiny_model):
    home = tmp_path / "home"
    engine = Engine(home, model=tiny_model)
    engine.save_settings(replace(engine.settings, max_tokens=32))  # replies short enough to
    engine.close()                                                  # see some finish first
    trials = [crash_trial(home, str(tiny_model), seed, window=2.0) for seed in range(4)]
    assert all(t["survived"] for t in trials), trials
    assert sum(t["acknowledged"] for t in trials) >= 1, trials  # the check had work to do
    assert chat_works(home, str(tiny_model))


def test_two_chats_at_once_on_one_profile_keep_every_message(tmp_path, tiny_model):
    home = tmp_path / "home"
    engine = Engine(home, model=tiny_model)
    engine.save_settings(replace(engine.settings, max_tokens=16))
    engine.close()
    trial = concurrent_trial(home, str(tiny_model), seed=0, messages=4)
    assert trial["survived"] and trial["lost_messages"] == 0, trial
    engine = Engine(home, model=tiny_model)
    stored = [m.content for s in engine.sessions() for m in engine.messages(s.id)
              if m.role == "user"]
    engine.close()
    assert sorted(stored) == sorted(f"concurrent 0 chat {p} message {i}"
                                    for p in range(2) for i in range(4))


def test_import_killed_before_its_version_is_recorded_adds_no_sessions(tmp_path, tiny_model):
    """The one moment import's two steps used to split: its sessions stored, its version not
    yet (the process dies as the version is recorded). Now both are one transaction."""
    prepared, archive = tmp_path / "prepared", tmp_path / "archive.zip"
    learned_home(prepared, archive, str(tiny_model))
    before = profile_state(prepared)
    dies_on_record = ("import os, signal, sys; from engine.memory import OverlayMemory; "
                      "OverlayMemory._record = lambda *a: os.kill(os.getpid(), signal.SIGKILL); "
                      "from app.cli import main; sys.exit(main(sys.argv[1:]))")
    out = subprocess.run([sys.executable, "-c", dies_on_record, "--home", str(prepared),
                          "--model", str(tiny_model), "memory", "import", str(archive)],
                         capture_output=True, cwd=REPOSITORY, timeout=120)
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert profile_state(prepared) == before
    assert chat_works(prepared, str(tiny_model))


DIES_AFTER_ONE_WRITE = """
import os, signal, sys, zipfile
from engine import overlay

def dying(write):
    def written_then_killed(*args, **kwargs):
        write(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    return written_then_killed

zipfile.ZipFile.writestr = dying(zipfile.ZipFile.writestr)
overlay._write = dying(overlay._write)
from app.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("fmt", ["archive", "peft"])
def test_an_export_killed_midway_leaves_its_temporary_only_until_the_next_start(
        tmp_path, tiny_model, fmt):
    """Killed after its first member (a zip's) or file (a PEFT folder's): the temporary beside
    the target is listed by doctor and removed by the next command that opens the memory, here
    the next export, wherever it was: the home noted it while it was written."""
    home, out = tmp_path / "home", tmp_path / "exports"
    learned_home(home, tmp_path / "archive.zip", str(tiny_model))
    out.mkdir()
    engram = [sys.executable, "-c", DIES_AFTER_ONE_WRITE, "--home", str(home),
              "--model", str(tiny_model)]
    killed = subprocess.run([*engram, "memory", "export", str(out / "first"), "--format", fmt],
                            capture_output=True, cwd=REPOSITORY, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    [left] = out.iterdir()
    assert left.name.startswith(".first.") and left.name.endswith(".tmp")  # no "first"

    doctor = subprocess.run(engram_command(home, str(tiny_model), "doctor", "--json"),
                            capture_output=True, cwd=REPOSITORY, timeout=120)
    assert str(left) in json.loads(doctor.stdout)["leftovers"]["temporary_files"]
    assert left.exists()  # the doctor changes nothing

    again = subprocess.run(engram_command(home, str(tiny_model), "memory", "export",
                                          str(out / "second"), "--format", fmt),
                           capture_output=True, cwd=REPOSITORY, timeout=120)
    assert again.returncode == 0, again.stderr
    assert [p.name for p in out.iterdir()] == ["second"]
    assert list((home / "profiles" / "default" / "exports").iterdir()) == []


def test_memory_commands_killed_lose_nothing(tiny_model):
    operations = [op for op in memory_kills.OPERATIONS if op != "learn"]  # learn: below
    trials = memory_kills.run(str(tiny_model), operations, kills=2, seed=0)
    assert [t for t in trials if not t["survived"]] == []
    assert sorted({t["operation"] for t in trials}) == sorted(operations)
    assert sum(t["killed"] for t in trials) >= len(trials) // 2, trials  # most die mid-run


def test_a_chat_killed_while_saving_its_kv_state_keeps_a_whole_snapshot_or_refuses_it(
        tmp_path, tiny_model):
    """Killed inside the save of a seeded reply: with part of the snapshot written (9 %, 30 %,
    57 % of it), renamed into place but not recorded, recorded. Every message and reply
    before it is kept; the snapshot on record is whole or refused; the half-written temporary
    is refused by the decoder and, put where the snapshot belongs, the continued session says
    it re-read the history, replies, and saves a whole snapshot again."""
    prepared = state_kills.prepare(tmp_path / "prepared", str(tiny_model))
    trials = [state_kills.trial(prepared, tmp_path / f"kill-{seed}", seed)
              for seed in (0, 1, 2, 4, 5)]
    assert [t for t in trials if not t["survived"]] == []
    assert all(t["killed"] for t in trials), trials
    assert {t["point"] for t in trials} == set(state_kills.KILL_POINTS)
    assert [t["half_written_placed"] for t in trials] == [False, True, True, True, False]


SMALL_LEARNER = """
import functools, sys
from engine import derive, learner, runtime
from engine.learning import anchors, texts
from engine.learning.service import Learning

learner.Recipe = functools.partial(learner.Recipe, layers=(1, 2), neurons=4, steps=3,
                                   key_steps=5, phrasings=1, contrasts=0, retries=0)
derive.checked = lambda pairs, prefers: pairs
anchors.unrelated_questions = lambda: texts.unrelated_questions()[:50]
Learning.threshold = lambda self, twin=None: 0.0
runtime.default_threads = lambda: 1
from app.cli import main
sys.exit(main(sys.argv[1:]))
"""


def small_learner(home, model, *args: str) -> list[str]:
    """``engram`` learning as the tiny model allows, quickly: two of its four layers, a few
    steps, anchors from a few dialogues (not 2,000: built in seconds), every derived pair kept
    (the random model's own check keeps arbitrary ones), the gate open."""
    return [sys.executable, "-c", SMALL_LEARNER, "--home", str(home), "--model", str(model),
            *args]


def test_a_learning_job_killed_midway_leaves_its_session_pending_or_learned_whole(
        tmp_path, tiny_model):
    """``engram memory learn`` killed at seeded moments of its run (most while it holds the
    profile's learning lock): besides what every memory command must keep, the session is
    still pending with nothing recorded, or one whole version learned it; the next ``memory
    learn`` is not kept waiting by the dead job's lock, and learns what is left."""
    with memory_kills.prepared_home(tmp_path, str(tiny_model), small_learner) as prepared:
        work = memory_kills.work_seconds(prepared, "learn", tmp_path / "timing")  # one: ~20 s
        trials = [memory_kills.trial(prepared, "learn", work, tmp_path / f"kill-{seed}", seed)
                  for seed in (0, 3)]  # at 84% and 24% of the clean run's work
    assert [t for t in trials if not t["survived"]] == []
    assert any(t["killed"] for t in trials), trials


def stderr_lines(proc: subprocess.Popen) -> list[str]:
    """The process's stderr lines as they come, read by a thread."""
    lines: list[str] = []
    assert proc.stderr is not None
    stream = proc.stderr
    threading.Thread(target=lambda: lines.extend(
        raw.decode(errors="replace").rstrip("\n") for raw in stream), daemon=True).start()
    return lines


def test_memory_learn_told_another_job_runs_waits_says_so_once_and_then_learns(
        tmp_path, tiny_model):
    """Another process holds the profile's learning lock (through the same API): a foreground
    ``engram memory learn`` says in one line that it waits, records nothing while it does,
    and learns the pending session once the lock is released."""
    home = tmp_path / "home"
    _, pending = learned_home(home, tmp_path / "archive.zip", str(tiny_model))
    before, versions = profile_state(home), versions_on_record(home)
    with profile_lock(home, "default", wait=0):
        learn = subprocess.Popen(small_learner(home, tiny_model, "memory", "learn"),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPOSITORY)
        lines = stderr_lines(learn)
        deadline = time.monotonic() + 120
        while not any(WAITING in line for line in lines) and time.monotonic() < deadline:
            assert learn.poll() is None, lines
            time.sleep(0.1)
        time.sleep(2)  # ten tries of the lock later, it still waits and has written nothing
        assert learn.poll() is None, lines
        assert profile_state(home) == before and versions_on_record(home) == versions
    out, _ = learn.communicate(timeout=600)
    assert learn.returncode == 0, lines
    assert [line for line in lines if WAITING in line] == [
        f"  0% another Engram process is changing this profile's memory: {WAITING} "
        f"(up to {LOCK_WAIT_S:.0f} s)"]
    assert f"session {pending}" in out.decode(), out
    assert len(versions_on_record(home)) == len(versions) + 1  # one version decided it
    with closing(Engine(home, model=tiny_model)) as engine:
        assert engine.pending_sessions() == []


GIVES_UP_SOON = """
import functools, sys
from engine.learning.service import Learning

Learning.run = functools.partialmethod(Learning.run, wait=float(sys.argv.pop(1)))
from app.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_memory_learn_whose_wait_runs_out_says_so_in_one_line_and_changes_nothing(
        tmp_path, tiny_model):
    """The lock never released within the wait (cut to 2 s for the test): one line says it
    waits, one line (the last, no traceback) that it gave up; the exit status is 2 and every
    message, version and pending session is as it was."""
    home = tmp_path / "home"
    _, pending = learned_home(home, tmp_path / "archive.zip", str(tiny_model))
    before, versions = profile_state(home), versions_on_record(home)
    with profile_lock(home, "default", wait=0):
        out = subprocess.run([sys.executable, "-c", GIVES_UP_SOON, "2", "--home", str(home),
                              "--model", str(tiny_model), "memory", "learn"],
                             capture_output=True, cwd=REPOSITORY, timeout=300)
    lines = out.stderr.decode().strip().splitlines()
    assert out.returncode == 2, lines  # as for every error a user can cause
    assert sum(WAITING in line for line in lines) == 1, lines
    assert lines[-1] == ("engram: another Engram process is changing this profile's memory "
                         "(still, after 2 s); try again when it is done")
    assert "Traceback" not in out.stderr.decode()
    assert profile_state(home) == before and versions_on_record(home) == versions
    said = [said for _, _, said in memory_kills.FACTS] + [memory_kills.PENDING]
    found = check_home(home, said, versions)
    assert found == {"integrity": True, "lost_messages": 0, "lost_versions": 0}, found
    with closing(Engine(home, model=tiny_model)) as engine:
        assert [s.id for s in engine.pending_sessions()] == [pending]


def test_the_bench_counts_each_operation_and_refuses_unknown_ones(tiny_model):
    heard: list[str] = []
    result = reliability.run(str(tiny_model), kills=1, fuzz=2, concurrent=0,
                             operations=["chat", "reset"], log=heard.append)
    assert result["crash_by_operation"].keys() == {"chat", "reset"}
    # each operation's tally is told as it ends: an hour's run is not silent until the end
    assert [line.split(" (")[0] for line in heard] == [
        "chat: 1/1 survived", "two chats at once: 0/0 survived", "reset: 1/1 survived",
        "fuzz: 2/2 refused cleanly or read identically"], heard
    assert all(c["trials"] == 1 for c in result["crash_by_operation"].values()), result
    assert result["crash_trials"] == 2 and result["crash_survived"] == 2, result
    assert result["chat_after_kills"] and not result["failures"], result
    with pytest.raises(EngramError, match="unknown operation 'rolback': choose from chat, "):
        reliability.run(str(tiny_model), operations=["rolback"])


def test_every_kind_of_damaged_file_is_refused_cleanly_or_read_identically(tmp_path, tiny_model):
    """A small run of the bench's fuzz: the database, an overlay's tensors and manifest, a KV
    snapshot, the twin's cached weights, the anchors cache and an export (damaged or lying),
    each read back by the app's own reader. Before their checksums, damaged twin and anchors
    caches were loaded with changed weights (or raised transformers' own errors); before the
    manifest's types were checked, an archive whose resealed manifest gave ``blocks`` as ``{}``
    imported no memory at all, and a number for its base model raised a TypeError."""
    database = tmp_path / "engram.db"
    store = Store(database)
    session = store.new_session(store.profile("default").id, "tiny")
    for i in range(3):
        store.add_message(session.id, "user", f"message {i}")
        store.add_message(session.id, "assistant", f"reply {i}")
    store.close()
    per_kind = 8
    cases = reliability.fuzz_cases(database, str(tiny_model),
                                   per_kind * len(reliability.FUZZ_KINDS), random.Random(0),
                                   tmp_path / "fuzz")
    assert [c for c in cases if not reliability.clean(c)] == []
    tally = reliability.fuzz_tally(cases)
    assert list(tally) == list(reliability.FUZZ_KINDS)
    assert all(t["cases"] == t["refused_cleanly"] == per_kind for t in tally.values()), tally
    refused = {c["kind"] for c in cases if c["outcome"] == "refused"}
    assert refused == set(reliability.FUZZ_KINDS)  # the damage was seen, not only read through


def test_the_twin_cache_is_read_back_whole_and_a_damaged_one_is_moved_aside(tmp_path):
    """Sealed with its files' checksums when written: read back with the same weights; one
    changed byte moves it aside (never deleted) and the caller rebuilds it; a cache from
    before the checksums is removed and rebuilt (nothing in it was the user's)."""
    import torch

    from engine import twin

    cache = tmp_path / "twin" / "sha"
    weights = reliability.sample_twin(cache, seed=0)
    found = twin.read_cache(cache).state_dict()
    assert all(torch.equal(found[k], weights[k]) for k in weights)
    config = cache / "config.json"
    layers = '"num_hidden_layers": 2'
    config.write_text(config.read_text().replace(layers, layers[:-1] + "3"))
    assert twin.read_cache(cache) is None and not cache.exists()
    [aside] = cache.parent.glob("sha.damaged-*")
    assert layers[:-1] + "3" in (aside / "config.json").read_text()
    reliability.sample_twin(cache, seed=0)
    (cache / "sha256sums.json").unlink()  # written by an Engram before the checksums
    assert twin.read_cache(cache) is None and not cache.exists()
    assert len(list(cache.parent.glob("sha.damaged-*"))) == 1


def test_the_aftermath_check_counts_a_message_left_without_its_checksum(tmp_path):
    """What the 504-kill run met: a row that reads as damaged is neither whole nor kept."""
    home = tmp_path / "home"
    home.mkdir()
    with closing(Store(home / "engram.db")) as store:
        session = store.new_session(store.profile("default").id, "m")
        store.add_message(session.id, "user", "kept")
        unsealed = store.add_message(session.id, "user", "unsealed")
        store.db.execute("UPDATE messages SET sha256 = NULL WHERE id = ?", [unsealed.id])
        store.db.conn.commit()
    found = check_home(home, ["kept", "unsealed"], {})
    assert found == {"integrity": False, "lost_messages": 1, "lost_versions": 0}, found
