"""`engram doctor` on the tiny model: each figure is the one the engine itself would use."""

from __future__ import annotations

import hashlib
import json

import llama_cpp
import torch

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
               for section in ("llama_cpp", "torch", "memory", "caches", "model", "store"))
