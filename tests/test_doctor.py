"""`engram doctor` on the tiny model: each figure is the one the engine itself would use."""

from __future__ import annotations

import hashlib
import json
import os

import llama_cpp
import numpy as np
import torch

from engine import overlay as ov
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
    assert str(engine_home) not in out.stdout.decode().split("leftovers:")[1]
    assert "unrecorded_versions: none" in out.stdout.decode()


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
