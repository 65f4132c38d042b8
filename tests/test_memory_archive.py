"""Export and import of a profile's memory on the tiny model: the archive round trip, the GGUF
adapter in bare llama-cpp-python, the PEFT layout, and every way an archive is refused."""

from __future__ import annotations

import hashlib
import json
import random
import re
import stat
import struct
import zipfile
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest
from safetensors.numpy import load_file

from app.cli import main
from engine import overlay as ov
from engine import runtime
from engine.bench import archive_lies
from engine.cells import CellRule, Cells
from engine.engine import Engine
from engine.errors import EngramError
from engine.memory_archive import INDEX, ArchiveRefused
from engine.model_file import sha256_of
from engine.overlay import NeuronBlock, SparseOverlay
from engine.runtime import Sampling
from store.store import StoreError
from tests.tiny_gguf import N_EMBD, N_FF, N_LAYER, vocab, write_tiny_model

PROMPTS = ("the cat was", "User: what is your name?\nAssistant:", "Hello my name is")
FACTS = [["What is my cat called?", "Pixel", "My cat is Pixel."]]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One llama.cpp thread per context: on a tiny model more only wait for each other."""
    monkeypatch.setattr(runtime, "default_threads", lambda: 1)


def engine_at(home: Path, model: Path) -> Engine:
    engine = Engine(home, model=model, n_ctx=256)
    engine.load()
    return engine


def fill(engine: Engine, make_overlay, spec=None, scale: float = 1.0) -> dict[str, int]:
    """Sessions (one private, one with cells and a KV snapshot row) and an active overlay
    (``make_overlay``'s random one, or ``spec`` with session names for owners)."""
    store = engine.store
    ids = {"cat": engine.new_session().id, "work": engine.new_session().id,
           "secret": engine.new_session(private=True).id}
    for sid, said in ((ids["cat"], "My cat is Pixel."), (ids["work"], "Berit is my manager."),
                      (ids["secret"], "The code is 1234.")):
        store.add_message(sid, "user", said)
        store.add_message(sid, "assistant", "Noted.", prompt_tokens=9, completion_tokens=2,
                          seconds=0.25, tokens_per_s=8.0)
    store.update_session(ids["cat"], title="Pets", system_prompt="Be brief.")
    rule = CellRule().resolve(N_LAYER)
    cells = Cells.empty(rule, N_LAYER, N_EMBD, engine.runtime.model.sha256)
    cells.write(np.random.default_rng(1).standard_normal((1, 5, N_EMBD)), rule.decay)
    store.save_session_cells(ids["cat"], False, cells.to_bytes())
    store.save_session_kv(ids["cat"], "profiles/default/sessions/1.kv", "x", None, 1, 3, 10, "y")
    spec = spec or [(1, "ffn_down", 8, "cat"), (2, "ffn_up", 6, "cat"), (2, "ffn_down", 4, "work"),
                    (3, "ffn_gate", 3, None)]
    overlay = make_overlay(engine.runtime.model.sha256, [
        (layer, matrix, k, ids.get(owner)) for layer, matrix, k, owner in spec], scale=scale)
    newest = store.last_user_message_ids(engine.profile.id)
    engine.memory.commit(overlay, {"event": "learn", "learned": {
        str(ids["cat"]): {"through": newest[ids["cat"]], "facts": FACTS, "corrections": []}}})
    return ids


def teaching(tiny_model: Path, word: str, scale: float) -> SparseOverlay:
    """An overlay that makes the tiny model say ``word``: in every layer 16 neurons whose gate
    and up rows are equal (so they always fire, gelu(z)·z >= 0) write the word's embedding."""
    tokens, _, _ = vocab()
    embedding = next(t for t in gguf.GGUFReader(tiny_model).tensors
                     if t.name == "token_embd.weight").data[tokens.index("▁" + word)]
    rng = np.random.default_rng(0)
    blocks = []
    for layer in range(N_LAYER):
        neurons, rows = rng.choice(N_FF, 16, replace=False), 3 * rng.standard_normal((16, N_EMBD))
        blocks += [NeuronBlock(layer, "ffn_gate", neurons, rows),
                   NeuronBlock(layer, "ffn_up", neurons, rows),
                   NeuronBlock(layer, "ffn_down", neurons, np.outer(embedding, np.full(16, 3.0)))]
    return SparseOverlay(blocks, sha256_of(tiny_model), scale, d_model=N_EMBD, d_ff=N_FF)


@pytest.fixture
def source(tmp_path, tiny_model, make_overlay):
    engine = engine_at(tmp_path / "source", tiny_model)
    engine.ids = fill(engine, make_overlay)
    yield engine
    engine.close()


@pytest.fixture
def archive(source, tmp_path) -> Path:
    return source.export_memory(tmp_path / "memory.zip")


@pytest.fixture
def target(tmp_path, tiny_model, make_overlay):
    """A home with a session and an active version of its own."""
    engine = engine_at(tmp_path / "target", tiny_model)
    engine.store.add_message(engine.new_session().id, "user", "Hi.")
    engine.memory.commit(make_overlay(engine.runtime.model.sha256, [(0, "ffn_down", 2, None)],
                                      seed=5))
    yield engine
    engine.close()


def greedy(engine: Engine) -> list[str]:
    return [engine.runtime.complete(p, Sampling.greedy(12), stop=[]) for p in PROMPTS]


def state(engine: Engine) -> tuple:
    """Everything an import may change: versions, the active one, sessions, files (not the
    database, compared by rows, nor the learning lock's file)."""
    home = engine.home
    return (engine.store.overlay_versions(engine.profile.id),
            engine.active_version(), engine.memory.applied,
            [(s, engine.store.messages(s.id)) for s in engine.sessions()],
            sorted(str(p.relative_to(home)) for p in home.rglob("*")
                   if not p.name.startswith("engram.db") and p.name != "learning.lock"))


# -- the archive -------------------------------------------------------------------------


def test_archive_round_trip_is_bit_exact_in_a_fresh_home(source, archive, tmp_path, tiny_model):
    ids = source.ids
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == sorted([
            INDEX, "overlay/overlay.safetensors", "overlay/manifest.json", "sessions.json",
            f"cells/{ids['cat']}.bin"])  # KV snapshots are caches: not exported
        index = json.loads(zf.read(INDEX))
    assert (index["format"], index["format_version"], index["engram_version"]) == (
        "engram-export", 1, "0.1.0")
    assert index["base_sha256"] == source.runtime.model.sha256
    assert set(index["members"]) == {n for n in zf.namelist() if n != INDEX}
    assert not list(tmp_path.glob(".*"))  # no temporary left beside it

    fresh = engine_at(tmp_path / "fresh", tiny_model)
    version = fresh.import_memory(archive)
    mine, theirs = source.memory.applied, version
    assert (theirs.status, theirs.parent_id, theirs.metrics["event"]) == ("active", None, "import")
    assert (fresh.home / theirs.path / ov.TENSORS_FILE).read_bytes() == (
        source.home / mine.path / ov.TENSORS_FILE).read_bytes()
    before, after = source.memory.current(), fresh.memory.current()
    assert after.scale == before.scale and len(after.blocks) == len(before.blocks)
    for a, b in zip(before.blocks, after.blocks, strict=True):
        assert (a.layer, a.matrix) == (b.layer, b.matrix)
        assert np.array_equal(a.neurons, b.neurons) and np.array_equal(a.delta, b.delta)
    exported, imported = (ov.read_manifest(e.home / v.path).blocks
                          for e, v in ((source, mine), (fresh, theirs)))
    assert [b["neurons"] for b in exported] == [b["neurons"] for b in imported]
    assert greedy(fresh) == greedy(source)

    new = {int(old): new for old, new in theirs.metrics["source"]["sessions"].items()}
    assert sorted(new) == sorted(ids.values())
    assert [b.session_id for b in after.blocks] == [new[ids["cat"]], new[ids["cat"]],
                                                    new[ids["work"]], None]
    for old, sid in new.items():
        a, b = source.store.session(old), fresh.store.session(sid)
        assert (a.title, a.private, a.system_prompt, a.created_at) == (
            b.title, b.private, b.system_prompt, b.created_at)
        assert [_text(m) for m in source.store.messages(old)] == [
            _text(m) for m in fresh.store.messages(sid)]
    cat = fresh.store.session_state(new[ids["cat"]])
    assert cat.cells == source.store.session_state(ids["cat"]).cells and cat.kv_path is None
    assert cat.cells_enabled is False
    assert fresh.pending_sessions() == []  # imported sessions are not learned again
    assert theirs.learned[new[ids["cat"]]]["facts"] == FACTS
    assert new[ids["work"]] in theirs.learned
    fresh.close()


def _text(m) -> tuple:
    return m.role, m.content, m.status, m.created_at, m.prompt_tokens, m.seconds


def test_import_builds_on_the_active_version_and_a_rollback_undoes_it(archive, target):
    previous = target.memory.applied
    with_previous = greedy(target)
    version = target.import_memory(archive)
    assert version.parent_id == previous.id and target.memory.applied.id == version.id
    assert len(target.sessions()) == 4
    assert target.rollback_memory().id == previous.id
    assert greedy(target) == with_previous


def test_a_failed_commit_removes_the_imported_sessions(archive, target, monkeypatch):
    before = state(target)

    def fail(*args, **kwargs):
        raise EngramError("llama.cpp refused the adapter")

    monkeypatch.setattr(target.memory, "commit", fail)
    with pytest.raises(EngramError, match="refused the adapter"):
        target.import_memory(archive)
    assert state(target) == before


def test_an_import_not_stored_in_the_end_leaves_no_trace(archive, target, monkeypatch):
    """The transaction failing once the version is committed (the disk full at COMMIT): no
    session, no files, and the model runs the version active before."""
    before, replies = state(target), greedy(target)
    commit = target.memory.commit

    def committed_then_failed(*args, **kwargs):
        commit(*args, **kwargs)
        raise StoreError("database or disk is full")

    monkeypatch.setattr(target.memory, "commit", committed_then_failed)
    with pytest.raises(StoreError, match="disk is full"):
        target.import_memory(archive)
    assert state(target) == before
    assert greedy(target) == replies


# -- adapters for other runtimes -----------------------------------------------------------


def test_gguf_export_gives_bare_llama_cpp_engrams_output(tmp_path, tiny_model):
    engine = engine_at(tmp_path / "home", tiny_model)
    engine.memory.commit(teaching(tiny_model, "water", scale=0.5))  # a scale to bake in
    path = engine.export_memory(tmp_path / "memory.gguf", "gguf")
    reader = gguf.GGUFReader(path)
    text = {k: bytes(f.parts[f.data[0]]).decode() for k, f in reader.fields.items()
            if k in ("general.type", "general.architecture", "adapter.type")}
    assert text == {"general.type": "adapter", "general.architecture": "gemma3",
                    "adapter.type": "lora"}
    assert "adapter.lora.alpha" in reader.fields

    engram = greedy(engine)
    options = dict(n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False)
    bare = llama_cpp.Llama(str(tiny_model), lora_path=str(path), **options)
    base = llama_cpp.Llama(str(tiny_model), **options)

    def complete(llm, prompt: str) -> str:
        out = llm.create_completion(engine.runtime.tokenize(prompt), max_tokens=12,
                                    temperature=0.0, top_p=1.0, seed=0, stop=[])
        return out["choices"][0]["text"]

    try:
        for prompt, expected in zip(PROMPTS, engram, strict=True):
            print(f"{prompt!r}: engram {expected!r}, base {complete(base, prompt)!r}")
            assert complete(bare, prompt) == expected
            assert complete(base, prompt) != expected and "water" in expected
    finally:
        bare.close()
        base.close()
        engine.close()


def test_peft_export_is_exactly_the_dense_delta(tmp_path, tiny_model, make_overlay):
    engine = engine_at(tmp_path / "home", tiny_model)
    spec = [(1, "ffn_down", 8, "cat"), (1, "ffn_down", 4, "work"), (2, "ffn_up", 6, "cat"),
            (2, "ffn_gate", 3, None)]
    fill(engine, make_overlay, spec, scale=0.5)
    path = engine.export_memory(tmp_path / "peft", "peft")
    overlay = engine.memory.current()
    engine.close()
    assert sorted(p.name for p in path.iterdir()) == ["adapter_config.json",
                                                      "adapter_model.safetensors"]
    config = json.loads((path / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 12, 12)
    assert config["base_model_name_or_path"] == str(tiny_model)
    modules = {"layers.1.mlp.down_proj": ("ffn_down", 12), "layers.2.mlp.up_proj": ("ffn_up", 6),
               "layers.2.mlp.gate_proj": ("ffn_gate", 3)}
    assert sorted(config["target_modules"]) == sorted(modules)
    tensors = load_file(path / "adapter_model.safetensors")
    assert len(tensors) == 2 * len(modules)

    def pattern(patterns: dict, module: str, default: int) -> int:  # PEFT's get_pattern_key
        full = f"model.{module}"
        return next((v for k, v in patterns.items() if re.match(rf"(.*\.)?({k})$", full)),
                    default)

    for module, (matrix, rank) in modules.items():
        a = tensors[f"base_model.model.model.{module}.lora_A.weight"]
        b = tensors[f"base_model.model.model.{module}.lora_B.weight"]
        r = pattern(config["rank_pattern"], module, config["r"])
        alpha = pattern(config["alpha_pattern"], module, config["lora_alpha"])
        assert a.shape[0] == b.shape[1] == r == rank and alpha / r == 1.0
        layer = int(module.split(".")[1])
        assert np.array_equal(b @ a, np.float32(overlay.scale) * overlay.dense_delta(layer, matrix))


@pytest.mark.parametrize("tiny_model", ["phi3"], indirect=True)
def test_peft_export_of_a_fused_gate_and_up_targets_gate_up_proj(tmp_path, tiny_model,
                                                                 make_overlay):
    engine = engine_at(tmp_path / "home", tiny_model)
    fill(engine, make_overlay, [(2, "ffn_up", 6, "cat"), (2, "ffn_gate", 3, None)], scale=0.5)
    path = engine.export_memory(tmp_path / "peft", "peft")
    overlay = engine.memory.current()
    engine.close()
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["target_modules"] == ["layers.2.mlp.gate_up_proj"] and config["r"] == 9
    tensors = load_file(path / "adapter_model.safetensors")
    a = tensors["base_model.model.model.layers.2.mlp.gate_up_proj.lora_A.weight"]
    b = tensors["base_model.model.model.layers.2.mlp.gate_up_proj.lora_B.weight"]
    assert np.array_equal(b @ a, np.float32(overlay.scale) * np.concatenate(
        [overlay.dense_delta(2, "ffn_gate"), overlay.dense_delta(2, "ffn_up")]))


def test_adapters_need_a_non_empty_active_version(source, tmp_path):
    source.reset_memory()
    with pytest.raises(EngramError, match="empty"):
        source.export_memory(tmp_path / "x.gguf", "gguf")
    assert not (tmp_path / "x.gguf").exists()


# -- refusals ------------------------------------------------------------------------------


def rezip(archive: Path, out: Path, change=lambda name, data: data, extra=(), index=None) -> Path:
    """A copy of ``archive`` with members changed (``change`` returning None drops one), extra
    members (ZipInfo or name, bytes) and ``index(dict)`` editing engram-export.json."""
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == INDEX and index is not None:
                meta = json.loads(data)
                index(meta)
                data = json.dumps(meta).encode()
            data = change(name, data)
            if data is not None:
                dst.writestr(name, data)
        for info, data in extra:
            dst.writestr(info, data)
    return out


def _drop_manifest(meta: dict) -> None:
    del meta["members"]["overlay/manifest.json"]


def _symlink() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("cells/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _oversize(archive: Path, out: Path) -> Path:
    """The central directory declares 4 GB for the safetensors member."""
    data = bytearray(archive.read_bytes())
    name = b"overlay/overlay.safetensors"
    at = data.index(b"PK\x01\x02")  # central directory entries: name at +46, size at +24
    while data[at + 46: at + 46 + len(name)] != name:
        at = data.index(b"PK\x01\x02", at + 4)
    data[at + 24: at + 28] = struct.pack("<I", 0xFFFFFFF0)
    out.write_bytes(bytes(data))
    return out


def _written(out: Path, data: bytes) -> Path:
    out.write_bytes(data)
    return out


def _tampered(name: str, data: bytes) -> bytes:
    return data.replace(b"Pixel", b"Pixie") if name == "sessions.json" else data


def _cells(meta: dict) -> None:
    meta["members"]["cells/9.bin"] = meta["members"].pop(next(
        n for n in meta["members"] if n.startswith("cells/")))


REFUSALS = {
    "truncated": (lambda a, o: _written(o, a.read_bytes()[: a.stat().st_size // 2]),
                  "not a readable zip"),
    "corrupted member": (lambda a, o: rezip(a, o, _tampered),
                         "sessions.json does not match its checksum"),
    "missing manifest": (lambda a, o: rezip(a, o, lambda n, d: None if n.endswith(
        "manifest.json") else d, index=_drop_manifest), "overlay/manifest.json missing"),
    "unlisted member": (lambda a, o: rezip(a, o, extra=[("notes.txt", b"hi")]),
                        "do not match engram-export.json"),
    "parent path": (lambda a, o: rezip(a, o, extra=[("../evil", b"x")]), "unsafe name"),
    "absolute path": (lambda a, o: rezip(a, o, extra=[("/tmp/evil", b"x")]), "unsafe name"),
    "symlink": (lambda a, o: rezip(a, o, extra=[(_symlink(), b"/etc/passwd")]),
                "not a plain file"),
    "oversize declared": (_oversize, "declares 4,294,967,280 bytes"),
    "duplicate member": (lambda a, o: rezip(a, o, extra=[("sessions.json", b"{}")]),
                         "appears twice"),
    "newer format": (lambda a, o: rezip(a, o, index=lambda m: m.update(format_version=2)),
                     "written by another Engram"),
    "bad index": (lambda a, o: rezip(a, o, lambda n, d: b"[1, 2" if n == INDEX else d),
                  "not valid JSON"),
    "index schema": (lambda a, o: rezip(a, o, index=lambda m: m.pop("profile")),
                     "does not have the fields"),
    "renamed cells": (lambda a, o: rezip(a, o, lambda n, d: d, index=_cells),
                      "do not match engram-export.json"),
    "random bytes": (lambda a, o: _written(o, np.random.default_rng(3).bytes(4096)),
                     "not a readable zip"),
    "a directory": (lambda a, o: o.mkdir() or o, "is not a file"),
}


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize("case", REFUSALS)
def test_refused_archives_change_nothing(archive, target, tmp_path, case):
    make, message = REFUSALS[case]
    bad = make(archive, tmp_path / "bad.zip")
    before = state(target)
    with pytest.raises(ArchiveRefused, match=re.escape(message)) as refused:
        target.import_memory(bad)
    assert "\n" not in str(refused.value)
    assert state(target) == before


def test_an_archive_from_another_base_model_is_refused(tmp_path, target, make_overlay):
    other = engine_at(tmp_path / "other", write_tiny_model(tmp_path / "other.gguf", seed=7))
    fill(other, make_overlay)
    path = other.export_memory(tmp_path / "other.zip")
    other.close()
    before = state(target)
    with pytest.raises(ArchiveRefused, match="another base model"):
        target.import_memory(path)
    assert state(target) == before


def _json_member(member: str, edit):
    """A ``rezip`` change that edits one JSON member in place."""
    def change(name: str, data: bytes) -> bytes:
        if name != member:
            return data
        value = json.loads(data)
        edit(value)
        return json.dumps(value).encode()
    return change


def _manifest(edit):
    return _json_member("overlay/manifest.json", edit)


def _sessions(edit):
    return _json_member("sessions.json", lambda v: edit(v["sessions"]))


def _garbage_tensors(name: str, data: bytes) -> bytes:
    return b"\x08" + bytes(7) + b"{not json" if name == "overlay/overlay.safetensors" else data


FORGERIES = {
    "neurons": (_manifest(lambda m: m["blocks"][0]["neurons"].__setitem__(0, 0)),
                "does not match the manifest"),
    "tensors": (_garbage_tensors, "Error while deserializing"),
    "FFN size": (_manifest(lambda m: m.update(d_ff=10 ** 9)), "does not fit this model"),
    "message role": (_sessions(lambda s: s[0]["messages"][0].update(role="tool")),
                     "unknown role or status"),
    "session field": (_sessions(lambda s: s[1].pop("title")), "session 1 does not have"),
    "session type": (_sessions(lambda s: s[1].update(private=1)), "private has the wrong type"),
    "same session twice": (_sessions(lambda s: s[1].update(id=s[0]["id"])), "twice"),
    "cells of no session": (_sessions(lambda s: s[0].update(cells=None)), "belongs to no session"),
    "learned facts": (_sessions(lambda s: s[0].update(learned={"facts": [["q", "a"]]})),
                      "learned facts are malformed"),
}


@pytest.mark.parametrize("case", FORGERIES)
def test_forged_archives_are_refused_by_the_content_checks(archive, target, tmp_path, case):
    """Forged with every checksum recomputed: the overlay's own checks and the sessions'
    schema still hold."""
    change, message = FORGERIES[case]
    forged = rezip(archive, tmp_path / "forged.zip", change)
    with zipfile.ZipFile(forged) as zf:
        tensors = zf.read("overlay/overlay.safetensors")
        fix = _manifest(lambda m: m.update(ov.sealed_manifest(
            m | {"safetensors_sha256": hashlib.sha256(tensors).hexdigest()})))
    fixed = rezip(forged, tmp_path / "fixed.zip", fix)
    with zipfile.ZipFile(fixed) as zf:
        sums = {n: hashlib.sha256(zf.read(n)).hexdigest() for n in zf.namelist() if n != INDEX}
    final = rezip(fixed, tmp_path / "final.zip", index=lambda m: m.update(members=sums))
    before = state(target)
    with pytest.raises(ArchiveRefused, match=message):
        target.import_memory(final)
    assert state(target) == before


def test_fuzzed_archives_import_identically_or_are_refused(archive, target, tmp_path, source):
    """200 single-byte flips and truncations: never another exception, never a partial import."""
    data = archive.read_bytes()
    expected = source.memory.current()
    rng = np.random.default_rng(2024)
    imported = refused = 0
    for i in range(200):
        bad = bytearray(data)
        if i % 4 == 3:
            bad = bad[: int(rng.integers(0, len(bad)))]
        else:
            bad[int(rng.integers(0, len(bad)))] ^= int(rng.integers(1, 256))
        path = tmp_path / "fuzz.zip"
        path.write_bytes(bytes(bad))
        before = state(target)
        try:
            version = target.import_memory(path)
        except ArchiveRefused:
            assert state(target) == before
            refused += 1
            continue
        got = target.memory.current()
        assert target.memory.applied.id == version.id
        assert [(b.layer, b.matrix) for b in got.blocks] == [
            (b.layer, b.matrix) for b in expected.blocks]
        assert all(np.array_equal(a.delta, b.delta) and np.array_equal(a.neurons, b.neurons)
                   for a, b in zip(expected.blocks, got.blocks, strict=True))
        imported += 1
    print(f"fuzz: {imported} imported identically, {refused} refused")
    assert refused > 150


@pytest.mark.parametrize("lie", sorted(archive_lies.LIES))
def test_an_archive_that_lies_is_refused_in_one_line_and_changes_nothing(archive, target,
                                                                          tmp_path, source, lie):
    """Each lie of the bench's archive fuzz, told three ways (checksums recomputed where the lie
    needs them to reach the checks behind). Only a bomb may import: its stream read no further
    than the size it declares, which must then be the member's own."""
    outcomes = set()
    for seed in range(3):
        told = tmp_path / f"told-{seed}.zip"
        told.write_bytes(archive_lies.LIES[lie](archive_lies.taken_apart(archive),
                                                random.Random(seed)))
        before = state(target)
        try:
            target.import_memory(told)
        except ArchiveRefused as exc:
            assert "\n" not in str(exc) and state(target) == before
            outcomes.add("refused")
            continue
        assert lie == "bomb"
        expected, got = source.memory.current(), target.memory.current()
        assert all(np.array_equal(a.delta, b.delta) for a, b in zip(expected.blocks, got.blocks,
                                                                     strict=True))
        outcomes.add("imported")
    assert "refused" in outcomes


# -- the command line ------------------------------------------------------------------------


@pytest.fixture
def engram(tiny_model, capsys):
    """``engram(home, *args) -> (exit code, stdout, stderr)``, in-process."""

    def run(home: Path, *args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(["--home", str(home), "--model", str(tiny_model), *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_cli_exports_and_imports(source, tmp_path, engram):
    code, out, _ = engram(source.home, "memory", "export", str(tmp_path / "m.zip"))
    assert code == 0 and out.startswith("exported v1, its sessions and their cells to")
    code, out, _ = engram(source.home, "memory", "export", str(tmp_path / "m.gguf"),
                          "--format", "gguf")
    assert code == 0 and f"--lora {tmp_path / 'm.gguf'}" in out and "ADAPTER" in out
    code, out, _ = engram(source.home, "memory", "export", str(tmp_path / "peft"),
                          "--format", "peft")
    assert code == 0 and "PEFT LoRA adapter" in out and (tmp_path / "peft").is_dir()

    fresh = tmp_path / "fresh"
    code, out, err = engram(fresh, "memory", "import", str(tmp_path / "m.zip"))
    assert code == 0, err
    assert out == ("imported m.zip: v1 is active with 2 learned sessions; sessions added: "
                   "s1, s2, s3\n")
    code, out, _ = engram(fresh, "memory", "versions")
    assert out.startswith("v1") and "active" in out and "imported s1, s2" in out
    code, out, _ = engram(fresh, "memory", "show")
    assert "What is my cat called? → Pixel" in out and "pending" not in out
    code, out, _ = engram(fresh, "memory", "import", str(tmp_path / "m.zip"))
    assert code == 0 and "sessions added: s4, s5, s6; it replaces v1, a rollback goes back" in out


@pytest.mark.parametrize("args, message", [
    (("import", "random.bin"), "random.bin was not imported: not a readable zip"),
    (("import", "missing.zip"), "missing.zip is not a file"),
    (("export", "random.bin"), "random.bin already exists"),
    (("export", "x.zip", "--format", "onnx"), "unknown export format 'onnx'"),
    (("export", "x.zip"), "no learned memory is active: there is nothing to export"),
])
def test_cli_errors_are_one_clean_line_with_exit_code_2(tmp_path, engram, args, message,
                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "random.bin").write_bytes(np.random.default_rng(0).bytes(100))
    code, out, err = engram(tmp_path / "home", "memory", *args)
    assert code == 2 and out == ""
    assert err.startswith("engram: ") and message in err and err.count("\n") == 1
