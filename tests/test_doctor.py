"""`engram doctor` on the tiny model: each figure is the one the engine itself would use."""

from __future__ import annotations

import hashlib
import json
import os
import re

import llama_cpp
import numpy as np
import torch

from engine import overlay as ov
from engine.engine import Engine
from engine.learning.lock import profile_lock
from tests.test_cli import engram


def test_doctor_reports_the_build_the_model_and_the_store(tiny_model, engine_home):
    out = engram("doctor", "--json", "--model", str(tiny_model), home=engine_home)
    assert out.returncode == 0, out.stderr.decode()
    result = json.loads(out.stdout)
    offload = bool(llama_cpp.llama_supports_gpu_offload())
    assert result["llama_cpp"]["gpu_offload"] is offload
    assert result["llama_cpp"]["n_gpu_layers"] == (-1 if offload else 0)
    assert result["torch"]["cuda"] is torch.cuda.is_available()
    assert result["torch"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert result["memory"]["ram_free"] > 0
    assert result["model"] == {"path": str(tiny_model), "architecture": "gemma3",
                               "sha256": hashlib.sha256(tiny_model.read_bytes()).hexdigest(),
                               "learnable": True}
    assert result["store"]["integrity"] == "ok"
    assert result["caches"]["entries"]["model-files.json"] > 0  # the header and sha256 memo


def test_doctor_text_names_each_section(tiny_model, engine_home):
    out = engram("doctor", "--model", str(tiny_model), home=engine_home)
    text = out.stdout.decode()
    assert out.returncode == 0
    assert all(f"{section}:\n" in text
               for section in ("llama_cpp", "torch", "memory", "caches", "model", "store",
                               "leftovers"))


def _killed_writes(home, pid):
    """What writers killed before their rename leave: a version's temporary folder and a KV
    snapshot's temporary file (of a dead pid), a version folder renamed into place but never
    recorded, and a temporary whose writer (``pid`` = this test) still runs."""
    profile = home / "profiles" / "default"
    version = ov.NeuronBlock(1, "ffn_down", np.arange(2), np.ones((64, 2)))
    unrecorded = profile / "overlays" / "20250101T000000000000Z-abcdef"
    ov.save(ov.SparseOverlay([version], "0" * 64, d_model=64, d_ff=128), unrecorded)
    dead = [profile / "overlays" / f".20250102T000000000000Z-012345.{pid}.tmp",
            profile / "sessions" / f".1.kv.{pid}.tmp"]
    dead[0].mkdir()
    (dead[0] / "overlay.safetensors").write_bytes(b"half")
    dead[1].write_bytes(b"half a snapshot")
    running = profile / "sessions" / f".2.kv.{os.getpid()}.tmp"
    running.write_bytes(b"being written")
    return dead, running, unrecorded


def test_doctor_lists_what_killed_writes_left_and_the_next_start_tidies_it(
        tiny_model, engine_home, dead_pid):
    assert engram("chat", "--plain", "--model", str(tiny_model), stdin=b"hello\n",
                  home=engine_home).returncode == 0
    dead, running, unrecorded = _killed_writes(engine_home, dead_pid)
    out = engram("doctor", "--json", "--model", str(tiny_model), home=engine_home)
    assert out.returncode == 0, out.stderr.decode()
    found = json.loads(out.stdout)["leftovers"]
    in_home = [p for p in found["temporary_files"] if p.startswith(str(engine_home))]
    assert in_home == sorted(str(p) for p in dead)  # the cache is shared by the tests
    assert found["unrecorded_versions"] == [str(unrecorded)]
    assert all(p.exists() for p in [*dead, running, unrecorded])  # the doctor changes nothing

    assert engram("chat", "--plain", "--model", str(tiny_model), stdin=b"again\n",
                  home=engine_home).returncode == 0
    assert not any(p.exists() for p in dead) and running.exists()
    [aside] = unrecorded.parent.glob(f"{unrecorded.name}.unrecorded-*")  # moved, not deleted
    assert ov.read_manifest(aside).trainable_params == 128 and not unrecorded.exists()
    out = engram("doctor", "--model", str(tiny_model), home=engine_home)
    leftovers, listed = out.stdout.decode().split("leftovers:")[1].split("set_aside:")
    assert str(engine_home) not in leftovers and "unrecorded_versions: none" in leftovers
    assert f"a version folder of profile default: {aside} (set aside on " in listed


def test_an_unrecorded_version_is_left_alone_while_another_process_changes_the_memory(
        tiny_model, engine_home, dead_pid):
    """It may be that process's commit, renamed into place and about to be recorded."""
    assert engram("chat", "--plain", "--model", str(tiny_model), stdin=b"hello\n",
                  home=engine_home).returncode == 0
    _, _, unrecorded = _killed_writes(engine_home, dead_pid)
    with profile_lock(engine_home, "default", wait=0):
        assert engram("chat", "--plain", "--model", str(tiny_model), stdin=b"again\n",
                      home=engine_home).returncode == 0
    assert unrecorded.exists()


def set_aside_anchors() -> None:
    """A damaged anchors cache, read as learning reads it: moved aside."""
    from engine.bench import reliability
    from engine.learning.anchors import cached_anchors
    from store import paths

    path = paths.private_dir(paths.anchors_cache()) / "a.safetensors"
    reliability.sample_anchors(path, seed=0)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    assert cached_anchors(path, torch.device("cpu"), reliability.ANCHOR_LAYERS) is None


def test_doctor_says_what_was_set_aside_when_and_what_was_done_instead(
        tiny_model, engine_home, make_overlay, monkeypatch, tmp_path):
    """A damaged database (started anew), a damaged version (kept, marked broken, rolled back
    from) and a damaged cache (rebuilt when next needed): each listed, where and when."""
    monkeypatch.setenv("ENGRAM_CACHE", str(tmp_path / "cache"))  # this test's own
    chat = ("chat", "--plain", "--model", str(tiny_model))
    assert engram(*chat, stdin=b"hello\n", home=engine_home).returncode == 0
    database = engine_home / "engram.db"
    database.write_bytes(database.read_bytes()[:5000])
    out = engram("sessions", home=engine_home)
    assert out.returncode == 2 and "moved aside" in out.stderr.decode()

    engine = Engine(engine_home, model=tiny_model)
    engine.load()
    version = engine.memory.commit(make_overlay(engine.runtime.model.sha256,
                                                [(1, "ffn_down", 2, None)]))
    engine.close()
    (engine_home / version.path / "overlay.safetensors").write_bytes(b"damaged")
    assert engram(*chat, stdin=b"again\n", home=engine_home).returncode == 0  # v1 set aside
    set_aside_anchors()

    out = engram("doctor", "--json", "--model", str(tiny_model), home=engine_home)
    assert out.returncode == 0, out.stderr.decode()
    items = {item["what"]: item for item in json.loads(out.stdout)["set_aside"]["items"]}
    assert set(items) == {"the database", "overlay v1 of profile default", "the anchors cache"}
    [aside] = engine_home.glob("engram.db.damaged-*")
    assert items["the database"]["path"] == str(aside)
    assert "a new, empty one was started" in items["the database"]["then"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", items["the database"]["when"])
    assert "does not match its checksum" in items["overlay v1 of profile default"]["why"]
    assert items["overlay v1 of profile default"]["then"].endswith("runs on the base model")
    assert items["the anchors cache"]["then"] == "rebuilt when learning next runs"

    text = engram("doctor", "--model", str(tiny_model), home=engine_home).stdout.decode()
    listed = text.split("set_aside:\n")[1].splitlines()
    assert len(listed) == 3 and listed[0].startswith(f"  the database: {aside} (set aside on ")
