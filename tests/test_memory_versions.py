"""Overlay versions: commit, hot swap into llama.cpp, rollback, crashes, damaged and foreign
files at start-up, the store's v3 schema — on the tiny generated model."""

from __future__ import annotations

import llama_cpp
import numpy as np
import pytest
import sqlite_utils

from engine import llama_native
from engine import overlay as ov
from engine.engine import Engine
from engine.learning.ledger import ancestry_records
from engine.memory import OverlayMemory
from engine.overlay import OverlayError
from engine.runtime import Runtime
from store import paths
from store.migrations import LATEST, UPGRADES
from store.records import OverlayVersion
from store.store import Store, StoreError
from tests.tiny_gguf import write_tiny_model

SPEC = [(1, "ffn_down", 8, 1), (2, "ffn_up", 6, 1), (2, "ffn_down", 4, 2)]
TOKENS = [2] + list(range(300, 330))


@pytest.fixture(scope="module")
def runtime(tiny_model):
    rt = Runtime(tiny_model, n_ctx=128, n_threads=1)
    yield rt
    rt.close()


@pytest.fixture
def home(tmp_path):
    return paths.home(tmp_path / "home")


@pytest.fixture
def store(home):
    s = Store(paths.database(home))
    yield s
    s.close()


@pytest.fixture
def memory(store, home, runtime):
    return OverlayMemory(store, home, store.profile("me"), runtime)


@pytest.fixture
def overlays(runtime, make_overlay):
    """Three different overlays for this model."""
    return [make_overlay(runtime.model.sha256, SPEC, seed=seed) for seed in range(3)]


def active(memory: OverlayMemory):
    """The version the store records as active for the memory's model."""
    return memory.store.active_overlay(memory.profile.id, memory.base_sha256)


def last_logits(runtime) -> np.ndarray:
    runtime.invalidate_cache()
    runtime.llm.eval(TOKENS)
    return llama_native.last_logits(runtime.llm)


def test_commit_records_and_hot_swaps_the_new_version(tmp_path, home, store, memory, runtime,
                                                       overlays, merged_model):
    base = last_logits(runtime)
    v1 = memory.commit(overlays[0], metrics={"recall": 0.9}, sessions=[1, 2, 3])
    assert (v1.status, v1.parent_id, v1.sessions, v1.metrics) == ("active", None, [1, 2, 3],
                                                                  {"recall": 0.9})
    assert v1.base_sha256 == runtime.model.sha256 and v1.trainable_params == 64 * 18
    directory = home / v1.path
    assert not v1.path.startswith("/") and (directory / "overlay.safetensors").exists()
    assert v1.bytes == sum((directory / f).stat().st_size
                           for f in ("overlay.safetensors", "manifest.json"))
    assert (directory / "lora.gguf").exists()
    assert memory.applied == v1 and active(memory) == v1

    merged = llama_cpp.Llama(str(merged_model(overlays[0], tmp_path / "m.gguf")), n_ctx=128,
                             n_threads=1, verbose=False)
    merged.eval(TOKENS)
    applied = last_logits(runtime)
    diff = np.abs(applied - llama_native.last_logits(merged)).max()
    print(f"hot-swapped overlay vs dense-merged model: max |logit diff| {diff:.2e}")
    assert diff < 1e-3 and np.abs(applied - base).max() > 0.1
    merged.close()

    v2 = memory.commit(overlays[1])
    assert v2.parent_id == v1.id and v2.sessions == [1, 2]
    assert [v.status for v in memory.versions()] == ["active", "superseded"]
    assert ov.read_manifest(home / v2.path).parent_version == v1.id
    assert not np.array_equal(last_logits(runtime), applied)


def test_rollback_deactivate_and_reactivate(memory, runtime, overlays):
    base = last_logits(runtime)
    v1 = memory.commit(overlays[0])
    with_v1 = last_logits(runtime)
    v2 = memory.commit(overlays[1])

    assert memory.rollback() == memory.store.overlay_version(v1.id)
    assert np.array_equal(last_logits(runtime), with_v1)
    assert memory.store.overlay_version(v2.id).status == "superseded"
    assert memory.rollback() is None and memory.applied is None
    assert np.array_equal(last_logits(runtime), base)  # base weights, bit for bit
    with pytest.raises(OverlayError, match="nothing to roll back"):
        memory.rollback()

    assert memory.activate(v2.id).status == "active"
    assert memory.rollback(v1.id).id == v1.id
    memory.deactivate()
    assert active(memory) is None
    assert np.array_equal(last_logits(runtime), base)


def test_a_version_another_process_made_active_is_followed_and_a_damaged_one_said(
        home, store, memory, runtime, overlays):
    """Another process's change reaches this one only through the store: ``follow`` runs what
    is recorded there, writing nothing; a version whose files fail their checks is not run,
    the one before serves, and ``problem`` says so."""
    v1 = memory.commit(overlays[0])
    with_v1 = last_logits(runtime)
    v2 = memory.commit(overlays[1])
    store.set_active_overlay(memory.profile.id, memory.base_sha256, v1.id)  # "memory rollback"
    assert memory.follow() and memory.applied == active(memory)
    assert np.array_equal(last_logits(runtime), with_v1)

    tensors = home / v2.path / ov.TENSORS_FILE
    tensors.write_bytes(tensors.read_bytes()[:-8])
    store.set_active_overlay(memory.profile.id, memory.base_sha256, v2.id)
    assert not memory.follow() and memory.applied.id == v1.id
    assert memory.problem.startswith(f"overlay v{v2.id} is not in use: ")
    assert np.array_equal(last_logits(runtime), with_v1) and active(memory).id == v2.id


def test_forgetting_a_session_is_a_new_version(memory, overlays):
    memory.commit(overlays[0])
    before = memory.current()
    v2 = memory.commit(before.without_session(1))
    after = memory.current()
    assert v2.sessions == [2] and after.sessions == [2]
    assert not after.dense_delta(1, "ffn_down").any()
    assert np.array_equal(after.dense_delta(2, "ffn_down"), before.dense_delta(2, "ffn_down"))


def test_rejected_versions_are_kept_but_never_activated(home, memory, overlays):
    v1 = memory.commit(overlays[0])
    rejected = memory.record_rejected(overlays[1], "locality 0.61 < 0.9", {"locality": 0.61})
    assert (rejected.status, rejected.reason, rejected.parent_id) == (
        "rejected", "locality 0.61 < 0.9", v1.id)
    assert (home / rejected.path / "overlay.safetensors").exists()
    assert memory.applied.id == v1.id
    with pytest.raises(OverlayError, match="rejected"):
        memory.activate(rejected.id)
    with pytest.raises(StoreError, match="cannot be activated"):
        memory.store.set_active_overlay(memory.profile.id, memory.base_sha256, rejected.id)
    assert active(memory).id == v1.id


def _half_write(path, data):
    path.write_bytes(data[: len(data) // 2])
    raise OSError("power cut")


def _raising(exc: Exception):
    def fail(*args, **kwargs):
        raise exc
    return fail


@pytest.mark.parametrize("fault", ["tensor write", "rename", "store transaction", "llama.cpp"])
def test_a_crash_during_commit_keeps_the_previous_version(home, memory, runtime, overlays,
                                                          monkeypatch, fault):
    v1 = memory.commit(overlays[0])
    with_v1 = last_logits(runtime)
    before = sorted(p.name for p in memory.directory.iterdir())
    if fault == "tensor write":
        monkeypatch.setattr(ov, "_write", _half_write)
    elif fault == "rename":
        monkeypatch.setattr(ov.os, "replace", _raising(OSError("crash")))
    elif fault == "store transaction":  # after the row is inserted, before activation
        monkeypatch.setattr(memory.store, "_activate", _raising(OSError("disk I/O error")))
    else:
        monkeypatch.setattr(runtime, "set_overlay", _raising(OverlayError("llama.cpp refused")))

    with pytest.raises((OSError, OverlayError)):
        memory.commit(overlays[1])
    monkeypatch.undo()

    assert sorted(p.name for p in memory.directory.iterdir()) == before  # nothing half-made
    assert [v.id for v in memory.store.overlay_versions(memory.profile.id)] == [v1.id]
    assert active(memory).status == "active"
    assert memory.applied.id == v1.id
    assert np.array_equal(last_logits(runtime), with_v1)
    assert ov.load(home / v1.path, runtime.model.sha256).trainable_params > 0


def test_start_up_sets_damaged_versions_aside_and_uses_the_last_good_one(home, store, runtime,
                                                                         overlays, dead_pid):
    memory = OverlayMemory(store, home, store.profile("me"), runtime)
    v1 = memory.commit(overlays[0])
    with_v1 = last_logits(runtime)
    memory.commit(overlays[1])
    v3 = memory.commit(overlays[2])
    v2 = memory.store.overlay_version(v3.parent_id)
    data = bytearray((home / v3.path / "overlay.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (home / v3.path / "overlay.safetensors").write_bytes(bytes(data))
    (home / v2.path / "overlay.safetensors").write_bytes(b"")
    crashed = memory.directory / f".20250101T000000000000Z-abcdef.{dead_pid}.tmp"
    crashed.mkdir()  # left by a commit killed before its rename

    restarted = OverlayMemory(store, home, store.profile("me"), runtime)
    assert restarted.applied.id == v1.id and active(restarted).id == v1.id
    assert [v.status for v in restarted.versions()] == ["broken", "broken", "active"]
    assert f"v{v3.id} was set aside" in restarted.problem and "checksum" in restarted.problem
    assert np.array_equal(last_logits(runtime), with_v1)
    assert not crashed.exists()

    (home / v1.path / "manifest.json").write_text("{not json")
    again = OverlayMemory(store, home, store.profile("me"), runtime)
    assert again.applied is None and active(again) is None
    assert "unreadable manifest" in again.problem


def test_each_base_model_has_its_own_versions_and_active_one(tmp_path, home, store, runtime,
                                                             overlays, make_overlay):
    """A profile that switches models keeps each one's memory: another model starts on its
    base weights without a word, and its versions never replace the first model's."""
    v1 = OverlayMemory(store, home, store.profile("me"), runtime).commit(overlays[0])
    other = Runtime(write_tiny_model(tmp_path / "other.gguf", seed=7), n_ctx=64, n_threads=1)
    try:
        memory = OverlayMemory(store, home, store.profile("me"), other)
        assert (memory.applied, memory.problem, memory.versions()) == (None, "", [])
        theirs = memory.commit(make_overlay(other.model.sha256, SPEC))
        assert memory.versions() == [theirs] and active(memory) == theirs
        with pytest.raises(ov.ForeignOverlay):
            memory.activate(v1.id)
        assert active(memory) == theirs
    finally:
        other.close()
    assert store.overlay_version(v1.id).status == "active"  # still, for its own model
    mine = OverlayMemory(store, home, store.profile("me"), runtime)
    assert mine.applied == store.overlay_version(v1.id) and mine.versions() == [mine.applied]


def test_engine_restores_the_active_overlay_and_reports_it(home, tiny_model, make_overlay):
    engine = Engine(home, model=tiny_model, n_ctx=128)
    assert engine.memory_status().overlay_active is False
    engine.load()
    version = engine.memory.commit(make_overlay(engine.runtime.model.sha256, SPEC))
    status = engine.memory_status()
    assert (status.overlay_active, status.overlay_version) == (True, version.id)
    engine.close()

    engine = Engine(home, model=tiny_model, n_ctx=128)
    engine.load()
    assert engine.memory_status().overlay_version == version.id
    assert engine.memory.current().trainable_params == version.trainable_params
    engine.close()


def test_store_upgrade_from_v2_keeps_data_and_adds_overlay_versions(tmp_path):
    path = tmp_path / "v2.db"
    db = sqlite_utils.Database(path)
    for version in (1, 2):
        UPGRADES[version](db)
    db.execute("PRAGMA user_version = 2")
    db["profiles"].insert({"name": "ada", "created_at": "t", "settings": '{"n_ctx": 2048}'})
    db["sessions"].insert({"profile_id": 1, "title": "old", "created_at": "t", "updated_at": "t",
                           "model": "m", "system_prompt": None, "private": 1})
    db["messages"].insert({"session_id": 1, "role": "user", "content": "hi from v2",
                           "status": "complete", "created_at": "t"})
    db.conn.commit()
    db.conn.close()

    store = Store(path)
    assert store.schema_version == LATEST >= 3
    profile = store.profile("ada")
    assert profile.settings == {"n_ctx": 2048}
    [session] = store.sessions(profile.id)
    assert session.private and [m.content for m in store.messages(session.id)] == ["hi from v2"]
    assert store.overlay_versions(profile.id) == []
    assert store.active_overlay(profile.id, "f" * 64) is None
    v = store.add_overlay_version(profile.id, "profiles/ada/overlays/x", "f" * 64,
                                  sessions=[session.id], status="active")
    assert store.active_overlay(profile.id, "f" * 64) == v and v.sessions == [session.id]
    store.close()


def test_store_overlay_rows_are_checked_and_atomic(tmp_path, monkeypatch):
    store = Store(tmp_path / "e.db")
    me, other = store.profile("me"), store.profile("other")
    v1 = store.add_overlay_version(me.id, "a", "f" * 64, status="active")
    with pytest.raises(ValueError, match="status"):
        store.add_overlay_version(me.id, "b", "f" * 64, status="pending")
    with pytest.raises(StoreError, match="another profile"):
        store.set_active_overlay(other.id, "f" * 64, v1.id)
    monkeypatch.setattr(store, "_activate", _raising(OSError("disk I/O error")))
    with pytest.raises(OSError):
        store.add_overlay_version(me.id, "b", "f" * 64, parent_id=v1.id, status="active")
    monkeypatch.undo()
    assert [v.id for v in store.overlay_versions(me.id)] == [v1.id]  # the insert rolled back
    store.set_overlay_status(v1.id, "broken", "checksum")
    assert store.active_overlay(me.id, "f" * 64) is None
    assert store.overlay_version(v1.id).reason == "checksum"


def test_a_damaged_active_version_is_set_aside_and_the_status_says_so(tmp_path, tiny_model,
                                                                       make_overlay):
    """The next process finds the active version's tensors damaged: it runs on the base
    weights, marks the version broken, and the memory status the UI shows names why."""
    engine = Engine(home=tmp_path / "home", model=tiny_model, n_ctx=512)
    engine.load()
    version = engine.memory.commit(make_overlay(engine.runtime.model.sha256,
                                                [(1, "ffn_down", 4, 1)]))
    engine.close()
    tensors = tmp_path / "home" / version.path / "overlay.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF
    tensors.write_bytes(bytes(data))

    engine = Engine(home=tmp_path / "home", model=tiny_model, n_ctx=512)
    engine.load()
    status = engine.memory_status()
    engine.close()
    assert not status.overlay_active
    assert f"overlay v{version.id} was set aside" in status.problem and "checksum" in status.problem


def test_a_session_s_record_carries_later_versions_trims_until_it_is_learned_again():
    """A later version may take some of an earlier session's neurons out (the leak they
    gave: ``learning.trims``); the session's record says so along the ancestry, until the
    session is learned again with new neurons, and never along a branch without that trim."""
    def version(vid, parent, learned, trimmed=None):
        return OverlayVersion(vid, 1, parent, "", "", "b" * 64, [], {"trimmed": trimmed or {}},
                              "accepted", None, 0, 0, learned)

    daughter = {"facts": [["How old is my daughter?", "9", "My daughter is 9."]]}
    niece = ["Who is my niece?", "9", False]  # the trim cost the daughter's age too
    v1 = version(1, None, {4: daughter})
    v2 = version(2, 1, {5: {"facts": []}}, {"4": [niece]})
    v3 = version(3, 2, {4: daughter})  # session 4 learned again: its neurons are new
    v4 = version(4, 1, {6: {"facts": []}})  # a branch from v1 (after a rollback)
    versions = [v1, v2, v3, v4]
    assert ancestry_records(versions, v1)[4] == {**daughter, "trimmed": [], "unrecalled": []}
    assert ancestry_records(versions, v2)[4]["trimmed"] == [niece]
    assert ancestry_records(versions, v2)[4]["unrecalled"] == ["9"]
    for later in (v3, v4):
        assert ancestry_records(versions, later)[4]["trimmed"] == []
        assert ancestry_records(versions, later)[4]["unrecalled"] == []
