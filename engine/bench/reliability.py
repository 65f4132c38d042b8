"""Does anything get lost when Engram is killed, or meets a damaged file? A seeded count.

Concurrency trials: two ``engram chat --plain`` on one profile at once, each sending its own
messages; all must be stored and both processes end cleanly.

Crash trials, ``kills`` per operation (``--kills N`` counts kill points per operation): each
operation is killed with SIGKILL at seeded moments. ``chat``: a real ``engram chat --plain`` on
a fresh-enough home is sent a few messages and killed at a random moment while it streams. A
user message counts as acknowledged once its reply's stats line came back (the message was
committed before the reply began). After each kill a fresh reader checks ``PRAGMA
integrity_check``, the foreign keys, every acknowledged message and every overlay version;
after the last, a new chat must work. ``learn``, ``rollback``, ``forget``, ``reset``,
``export``, ``import``: ``engram memory …`` on copies of a home with learned versions and a
session pending, checked the same way and more (``memory_kills``). ``kv-save``: a chat that
dies at a seeded point of saving its session's KV state; the snapshot it leaves must be whole
or refused, and the session continue (``state_kills``). Results are also counted per operation
(``crash_by_operation``: trials, survived, the seeds of the failures).

Fuzz cases (``--fuzz N`` in all, the kinds in turn, tallied per kind in ``fuzz_by_kind``):
copies of the database, of an overlay's safetensors and of its manifest, of a session's KV
snapshot, of the twin's cached weights and of the anchors cache, truncated or bit-flipped, each
read back through the code the app reads it with. They must be refused with an Engram error
(the caches: moved aside, to be rebuilt) or read back identically, never raise anything
else. ``archive``: an export, damaged so or made to lie (``archive_lies``), imported into a
home as ``engram memory import`` imports it: refused in one line with the home unchanged, or
imported with the same sessions and overlay as the export holds. A damaged database read
back with different rows (a flip inside row data that no check saw) is "accepted with
silent change": counted apart (``fuzz_silent_changes``) and listed with the failures, never
among the clean refusals.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine import memory_archive, session_state
from engine import overlay as overlay_files
from engine.bench import archive_lies, memory_kills, state_kills
from engine.bench.aftermath import (
    REPOSITORY,
    chat_works,
    check_home,
    engram_command,
    versions_on_record,
)
from engine.engine import Engine
from engine.errors import EngramError
from engine.memory_archive import Archive
from engine.overlay import NeuronBlock, SparseOverlay
from engine.runtime import KvSnapshot
from store import paths
from store.store import Store, StoreError

if TYPE_CHECKING:  # torch is imported only when the fuzz reaches the caches
    from engine.learner import Anchors

MESSAGES_PER_TRIAL = 3
KILL_WINDOW_S = 4.0  # the kill falls this long at most after the first reply began streaming
START_TIMEOUT_S = 300
OPERATIONS = ("chat", *memory_kills.OPERATIONS, state_kills.OPERATION)


def crash_trial(home: Path, model: str | None, seed: int,
                window: float = KILL_WINDOW_S) -> dict:
    """One chat killed at a seeded moment; what a fresh reader finds afterwards."""
    rng = random.Random(seed)
    texts = [f"trial {seed} message {i}" for i in range(MESSAGES_PER_TRIAL)]
    versions = versions_on_record(home)
    proc = subprocess.Popen(engram_command(home, model, "chat", "--plain"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPOSITORY)
    stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr
    assert stdin is not None and stdout is not None and stderr is not None  # all PIPE
    acknowledged: list[bytes] = []
    streaming = threading.Event()

    def drain() -> None:
        stdout.read(1)  # the first byte of the first reply (or the end, if it died)
        streaming.set()
        stdout.read()

    readers = [threading.Thread(target=lambda: acknowledged.extend(
                   line for line in stderr if b"tok/s" in line), daemon=True),
               threading.Thread(target=drain, daemon=True)]
    for reader in readers:
        reader.start()
    stdin.write("".join(t + "\n" for t in texts).encode())
    stdin.flush()
    streaming.wait(START_TIMEOUT_S)
    time.sleep(rng.uniform(0, window))
    seen = len(acknowledged)  # counted before the kill: only what the user saw
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for reader in readers:
        reader.join(timeout=5)
    found = check_home(home, texts[:seen], versions)
    return {"operation": "chat", "seed": seed, "killed": proc.returncode == -signal.SIGKILL,
            "acknowledged": seen, **found,
            "survived": found["integrity"] and not found["lost_messages"]
            and not found["lost_versions"]}


# -- concurrency -------------------------------------------------------------------------


def concurrent_trial(home: Path, model: str | None, seed: int, processes: int = 2,
                     messages: int = MESSAGES_PER_TRIAL) -> dict:
    """``processes`` chats on one profile at once, each sending its own messages: every one of
    them must be stored, every process must end cleanly, the database whole."""
    texts = [[f"concurrent {seed} chat {p} message {i}" for i in range(messages)]
             for p in range(processes)]
    procs = [subprocess.Popen(engram_command(home, model, "chat", "--plain"),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd=REPOSITORY)
             for _ in range(processes)]
    ended = [p.communicate("".join(t + "\n" for t in mine).encode(), timeout=START_TIMEOUT_S)
             for p, mine in zip(procs, texts, strict=True)]
    found = check_home(home, [t for mine in texts for t in mine], versions_on_record(home))
    errors = [err.decode(errors="replace").strip().splitlines()[-1:] for _, err in ended]
    clean = all(p.returncode == 0 for p in procs)
    return {"seed": seed, "processes": processes, "messages": processes * messages,
            "clean_exits": clean, **found,
            "survived": clean and found["integrity"] and not found["lost_messages"],
            "errors": [e for p, e in zip(procs, errors, strict=True) if p.returncode]}


# -- fuzz --------------------------------------------------------------------------------


def damage(data: bytes, rng: random.Random) -> bytes:
    """Truncated at a random point, or one to eight random bits flipped."""
    if rng.random() < 0.5:
        return data[:rng.randrange(len(data))]
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


SILENT_CHANGE = "accepted with silent change"


def _read_database(path: Path) -> dict[str, list]:
    """Everything a user could be shown, read as Engram reads it (the store's accessors,
    which verify every row's checksum): the profiles, each one's sessions, each session's
    messages and state, each profile's overlay versions."""
    store = Store(path)
    try:
        profiles = store.profiles()
        sessions = [s for p in profiles for s in store.sessions(p.id)]
        return {
            "profiles": profiles,
            "sessions": sessions,
            "messages": [m for s in sessions for m in store.messages(s.id)],
            "session_states": [store.session_state(s.id) for s in sessions],
            "overlay_versions": [v for p in profiles for v in store.overlay_versions(p.id)],
        }
    finally:
        store.close()


def fuzz_database(database: Path, rng: random.Random, scratch: Path) -> str:
    """``refused`` (an Engram error), ``identical``, ``accepted with silent change: <what>``
    or ``failed: …`` (anything else raised)."""
    original = _read_database(database)
    target = scratch / "engram.db"
    target.write_bytes(damage(database.read_bytes(), rng))
    try:
        found = _read_database(target)
        changed = [k for k in original if found[k] != original[k]]
        return f"{SILENT_CHANGE}: {', '.join(changed)}" if changed else "identical"
    except (StoreError, EngramError):
        return "refused"
    except Exception as exc:  # noqa: BLE001  (the point: nothing else may escape)
        return f"failed: {type(exc).__name__}: {exc}"
    finally:
        for leftover in scratch.glob("engram.db*"):  # the copy, or where it was quarantined
            leftover.unlink()


def sample_overlay(directory: Path, seed: int) -> str:
    """A small random overlay version written at ``directory``; returns its base hash."""
    rng = np.random.default_rng(seed)
    base = "0" * 64
    blocks = [NeuronBlock(1, "ffn_down", rng.choice(64, 4, replace=False),
                          rng.standard_normal((16, 4)), None)]
    overlay_files.save(SparseOverlay(blocks, base, 1.0, d_model=16, d_ff=64), directory)
    return base


def _judged(read: Callable[[], str]) -> str:
    """``read()``'s own verdict, ``refused`` if it raised an Engram error, ``failed: …`` if it
    raised anything else."""
    try:
        return read()
    except (StoreError, EngramError):
        return "refused"
    except Exception as exc:  # noqa: BLE001  (the point: nothing else may escape)
        return f"failed: {type(exc).__name__}: {exc}"


def fuzz_overlay(directory: Path, base: str, rng: random.Random, scratch: Path,
                 member: str = overlay_files.TENSORS_FILE) -> str:
    """One of a version's files (``member``: its tensors or its manifest) damaged, the version
    loaded as the app loads it: refused, or read back with the same manifest (which holds the
    tensors' checksum, so the same manifest means the same overlay)."""
    target = scratch / "overlay"
    shutil.copytree(directory, target)
    (target / member).write_bytes(damage((target / member).read_bytes(), rng))

    def read() -> str:
        overlay_files.load(target, base)
        same = overlay_files.read_manifest(target) == overlay_files.read_manifest(directory)
        return "identical" if same else f"failed: damaged {member} loaded"

    try:
        return _judged(read)
    finally:
        shutil.rmtree(target)


KV_MODEL, KV_OVERLAY = "0" * 64, 3


def sample_kv(seed: int) -> tuple[KvSnapshot, bytes, str]:
    """A small KV snapshot, its file's bytes and the payload digest the store records."""
    rng = np.random.default_rng(seed)
    snapshot = KvSnapshot(rng.integers(0, 256, 32).tolist(), rng.bytes(1024),
                          hashlib.sha256(rng.bytes(8)).hexdigest())
    blob, digest = session_state.encode(snapshot, KV_MODEL, KV_OVERLAY)
    return snapshot, blob, digest


def fuzz_kv(snapshot: KvSnapshot, blob: bytes, digest: str, rng: random.Random) -> str:
    """A damaged snapshot file decoded as a session's restore decodes it."""
    def read() -> str:
        found = session_state.decode(damage(blob, rng), KV_MODEL, KV_OVERLAY, digest)
        return "identical" if found == snapshot else "failed: damaged KV snapshot accepted"

    return _judged(read)


def sample_twin(directory: Path, seed: int) -> dict:
    """A tiny random Gemma 3 written as the twin's cache is (``twin.write_cache``); returns
    its weights."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from engine import twin

    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=1, num_key_value_heads=1, head_dim=8, sliding_window=8))
    twin.write_cache(model, directory)
    return {k: v.clone() for k, v in model.state_dict().items()}


def fuzz_twin(directory: Path, weights: dict, rng: random.Random, scratch: Path) -> str:
    """One file of a copy of the twin's cache damaged, read back as ``Twin.load`` reads it: a
    damaged cache must be moved aside (to be rebuilt), or read back with the same weights."""
    import torch

    from engine import twin

    target = scratch / "twin"
    shutil.copytree(directory, target)
    victim = rng.choice(sorted(p for p in target.iterdir() if p.is_file()))
    victim.write_bytes(damage(victim.read_bytes(), rng))

    def read() -> str:
        model = twin.read_cache(target)
        if model is None:
            moved = not target.exists() and any(scratch.glob("twin.damaged-*"))
            return "refused" if moved else "failed: a damaged twin cache was not moved aside"
        found = model.state_dict()
        same = found.keys() == weights.keys() and all(torch.equal(found[k], weights[k])
                                                       for k in weights)
        return "identical" if same else f"failed: damaged {victim.name} loaded"

    try:
        return _judged(read)
    finally:
        for leftover in scratch.glob("twin*"):
            shutil.rmtree(leftover)


ANCHOR_LAYERS = (1, 2)


def sample_anchors(path: Path, seed: int) -> Anchors:
    """Small random anchors, saved as learning saves them."""
    import torch

    from engine.learner import Anchors

    g = torch.Generator().manual_seed(seed)
    rows = {name: {l: torch.randn(8, 16, generator=g) for l in ANCHOR_LAYERS}
            for name in ("inputs", "prose", "answers", "start")}
    anchors = Anchors(**rows, out_energy={l: 1.0 + l for l in ANCHOR_LAYERS},
                      activity={l: torch.rand(32, generator=g) for l in ANCHOR_LAYERS})
    anchors.save(path)
    return anchors


def fuzz_anchors(path: Path, anchors: Anchors, rng: random.Random, scratch: Path) -> str:
    """A damaged copy of the anchors cache read as learning reads it: moved aside (to be
    rebuilt), or read back with the same tensors."""
    import torch

    from engine.learning.anchors import cached_anchors

    target = scratch / "anchors.safetensors"
    target.write_bytes(damage(path.read_bytes(), rng))

    def read() -> str:
        found = cached_anchors(target, torch.device("cpu"), ANCHOR_LAYERS)
        if found is None:
            moved = not target.exists() and any(scratch.glob("anchors.safetensors.damaged-*"))
            return "refused" if moved else "failed: a damaged anchors cache was not moved aside"
        same = all(getattr(found, name)[l] == getattr(anchors, name)[l] if name == "out_energy"
                   else torch.equal(getattr(found, name)[l], getattr(anchors, name)[l])
                   for name in anchors.names() for l in ANCHOR_LAYERS)
        return "identical" if same else "failed: damaged anchors loaded"

    try:
        return _judged(read)
    finally:
        for leftover in scratch.glob("anchors.safetensors*"):
            leftover.unlink()


def sample_archive(samples: Path, model: str | None) -> tuple[Path, Engine]:
    """An export of a home with learned versions (``memory_kills.learned_home``) and another
    home, loaded, to import it into."""
    archive = samples / "memory.zip"
    memory_kills.learned_home(samples / "exported", archive, model)
    target = Engine(samples / "importing", model=model, n_ctx=256)
    target.load()
    return archive, target


def _home(engine: Engine) -> tuple:
    """Everything an import may change: its files (by content, the database aside), the
    profile's versions, the active one and its sessions with their messages."""
    store, profile = engine.store, engine.profile.id
    files = sorted((str(p.relative_to(engine.home)), hashlib.sha256(p.read_bytes()).digest())
                   for p in engine.home.rglob("*")
                   if p.is_file() and not p.name.startswith(paths.database(engine.home).name))
    return (files, store.overlay_versions(profile), engine.active_version(),
            [(s, store.messages(s.id)) for s in store.sessions(profile)])


def _imports_the_same(a: Archive, b: Archive) -> bool:
    """Whether two archives that passed the checks import the same sessions and overlay."""
    def overlay(o: SparseOverlay) -> tuple:
        gates = None if o.cell_gates is None else np.asarray(o.cell_gates).tobytes()
        return (o.base_sha256, o.scale, o.d_model, o.d_ff, gates,
                [(b.layer, b.matrix, b.session_id, b.neurons.tobytes(), b.delta.shape,
                  b.delta.tobytes()) for b in o.blocks])

    informative = {k: v for k, v in a.index.items() if k != "members"}
    return (a.sessions == b.sessions and overlay(a.overlay) == overlay(b.overlay)
            and informative == {k: v for k, v in b.index.items() if k != "members"})


def fuzz_archive(archive: Path, original: Archive, target: Engine, rng: random.Random,
                 scratch: Path) -> str:
    """An export damaged (half the cases) or made to tell a lie, imported into ``target``:
    refused in one line with the home unchanged, or imported as the export would be."""
    path = scratch / "memory.zip"
    if rng.random() < 0.5:
        lie, data = "damaged", damage(archive.read_bytes(), rng)
    else:
        lie, data = archive_lies.told(archive, rng)
    path.write_bytes(data)
    before = _home(target)

    def read() -> str:
        try:
            target.import_memory(path)
        except (StoreError, EngramError) as exc:
            if "\n" in str(exc):
                return f"failed: a {lie} archive was refused in more than one line: {exc}"
            if _home(target) != before:
                return f"failed: a {lie} archive was refused but changed the home"
            raise
        same = _imports_the_same(memory_archive.read(path, target.load()), original)
        return "identical" if same else f"failed: a {lie} archive was imported"

    try:
        return _judged(read)
    finally:
        path.unlink()


FUZZ_KINDS = ("database", "overlay", "manifest", "kv", "twin", "anchors", "archive")


def fuzz_cases(database: Path, model: str | None, cases: int, rng: random.Random, tmp: Path,
               seed: int = 0) -> list[dict]:
    """``cases`` damaged files, the kinds taken in turn (FUZZ_KINDS), each with its own seed
    from ``rng``; samples of the small kinds are made here (under ``tmp``) from ``seed``, the
    archive's on ``model``."""
    kinds = [FUZZ_KINDS[i % len(FUZZ_KINDS)] for i in range(cases)]
    samples = paths.private_dir(tmp / "samples")
    scratch = paths.private_dir(tmp / "scratch")
    base = sample_overlay(samples / "overlay", seed)
    kv = sample_kv(seed)
    weights = sample_twin(samples / "twin", seed) if "twin" in kinds else {}
    anchors_file = samples / "anchors.safetensors"
    anchors = sample_anchors(anchors_file, seed) if "anchors" in kinds else None
    out = []
    with contextlib.ExitStack() as stack:
        if "archive" in kinds:
            archive, target = sample_archive(samples, model)
            stack.callback(target.close)
            original = memory_archive.read(archive, target.load())
        for kind in kinds:
            case_seed = rng.randrange(2**31)
            case_rng = random.Random(case_seed)
            if kind == "database":
                outcome = fuzz_database(database, case_rng, scratch)
            elif kind in ("overlay", "manifest"):
                outcome = fuzz_overlay(samples / "overlay", base, case_rng, scratch,
                                       overlay_files.TENSORS_FILE if kind == "overlay"
                                       else overlay_files.MANIFEST_FILE)
            elif kind == "kv":
                outcome = fuzz_kv(*kv, case_rng)
            elif kind == "twin":
                outcome = fuzz_twin(samples / "twin", weights, case_rng, scratch)
            elif kind == "anchors":
                assert anchors is not None  # made above for any run that has anchors cases
                outcome = fuzz_anchors(anchors_file, anchors, case_rng, scratch)
            else:
                outcome = fuzz_archive(archive, original, target, case_rng, scratch)
            out.append({"kind": kind, "seed": case_seed, "outcome": outcome})
    return out


def clean(case: dict) -> bool:
    """Refused cleanly, or read back identically."""
    return case["outcome"] in ("refused", "identical")


def fuzz_tally(cases: list[dict]) -> dict:
    """Per kind: cases, how many were clean, the seeds of the others."""
    return {kind: {"cases": sum(c["kind"] == kind for c in cases),
                   "refused_cleanly": sum(c["kind"] == kind and clean(c) for c in cases),
                   "failures": [c["seed"] for c in cases if c["kind"] == kind and not clean(c)]}
            for kind in FUZZ_KINDS if any(c["kind"] == kind for c in cases)}


# -- the run -----------------------------------------------------------------------------


def run(model: str | None, kills: int = 50, fuzz: int = 100, seed: int = 0,
        concurrent: int = 5, operations: list[str] | None = None,
        log: Callable[[str], None] = lambda line: None) -> dict:
    """``kills`` crash trials of each of ``operations`` (default: all of ``OPERATIONS``);
    ``log`` hears each operation's tally as it ends (a benchmark-size run takes an hour)."""
    operations = operations or list(OPERATIONS)
    if unknown := [op for op in operations if op not in OPERATIONS]:
        raise EngramError(f"unknown operation {unknown[0]!r}: choose from {', '.join(OPERATIONS)}")
    rng = random.Random(seed)
    started = time.monotonic()

    def tally(what: str, trials: list[dict]) -> list[dict]:
        log(f"{what}: {sum(t['survived'] for t in trials)}/{len(trials)} survived "
            f"({time.monotonic() - started:.0f} s in)")
        return trials

    with tempfile.TemporaryDirectory(prefix="engram-reliability-") as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "home"
        before = chat_works(home, model)  # a home with a session, as a user's would be
        trials = tally("chat", [crash_trial(home, model, rng.randrange(2**31))
                                for _ in range(kills if "chat" in operations else 0)])
        together = tally("two chats at once", [concurrent_trial(home, model, rng.randrange(2**31))
                                               for _ in range(concurrent)])
        after = chat_works(home, model)
        trials += memory_kills.run(model, [op for op in operations
                                           if op in memory_kills.OPERATIONS], kills, seed,
                                   done=tally)
        if state_kills.OPERATION in operations:
            trials += tally(state_kills.OPERATION, state_kills.run(model, kills, seed))
        cases = fuzz_cases(paths.database(home), model, fuzz, rng, tmp, seed)
        log(f"fuzz: {sum(map(clean, cases))}/{len(cases)} refused cleanly or read identically "
            f"({time.monotonic() - started:.0f} s in)")
    silent = [c for c in cases if c["outcome"].startswith(SILENT_CHANGE)]
    return {
        "crash_trials": len(trials),
        "crash_survived": sum(t["survived"] for t in trials),
        "crash_by_operation": {op: {
            "trials": sum(t["operation"] == op for t in trials),
            "survived": sum(t["operation"] == op and t["survived"] for t in trials),
            "interrupted": sum(t["operation"] == op and t["killed"] for t in trials),
            "failures": [t["seed"] for t in trials if t["operation"] == op and not t["survived"]],
        } for op in operations},
        "acknowledged_messages": sum(t["acknowledged"] for t in trials),
        "chat_after_kills": before and after and all(
            t["chat_works"] for t in trials if t["operation"] != "chat"),
        "fuzz_cases": len(cases),
        "fuzz_refused_cleanly": sum(map(clean, cases)),
        "fuzz_silent_changes": len(silent),
        "fuzz_by_kind": fuzz_tally(cases),
        "concurrent_trials": len(together),
        "concurrent_survived": sum(t["survived"] for t in together),
        "lost_messages": sum(t["lost_messages"] for t in trials + together),
        "lost_versions": sum(t["lost_versions"] for t in trials + together),
        "failures": [t for t in trials + together if not t["survived"]]
        + [c for c in cases if not clean(c)],
    }


def report(result: dict) -> str:
    lines = [
        f"crash: {result['crash_survived']}/{result['crash_trials']} kills survived "
        f"({result['acknowledged_messages']} acknowledged messages, {result['lost_messages']} "
        f"lost, {result['lost_versions']} versions lost); a chat afterwards "
        f"{'works' if result['chat_after_kills'] else 'FAILS'}",
        *(f"  {op}: {counts['survived']}/{counts['trials']} survived "
          f"({counts['interrupted']} killed before it ended)"
          for op, counts in result["crash_by_operation"].items()),
        f"concurrency: {result['concurrent_survived']}/{result['concurrent_trials']} runs of two "
        "chats at once on one profile kept every message and ended cleanly",
        f"fuzz: {result['fuzz_refused_cleanly']}/{result['fuzz_cases']} damaged files refused "
        f"cleanly or read identically, {result['fuzz_silent_changes']} accepted with a silent "
        "change",
        *(f"  {kind}: {counts['refused_cleanly']}/{counts['cases']}"
          for kind, counts in result["fuzz_by_kind"].items()),
    ]
    lines += [f"  failed: {f}" for f in result["failures"]]
    return "\n".join(lines)
