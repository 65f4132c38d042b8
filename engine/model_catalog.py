"""The GGUF models already on this machine: Ollama's store, LM Studio's folders, the Hugging
Face cache, llama.cpp's cache and the folders a profile adds (settings' ``model_folders``).

Finding walks folders only, so ``--model NAME`` resolves without opening any model; listing
reads each file's GGUF header (memoised by ``model_file``), never its weights.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ModelError
from engine.model_file import BUILTIN_NAME, LEARNABLE_ARCHITECTURES, header
from store import paths

OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
SHARD = re.compile(r"-(\d{5})-of-\d{5}$")  # split GGUFs: llama.cpp opens the first shard
NOT_CHAT_MODELS = {"adapter", "mmproj"}  # general.type of LoRA adapters and vision projectors


@dataclass(frozen=True)
class Found:
    name: str  # what `--model` accepts
    source: str
    path: Path


@dataclass(frozen=True)
class Model:
    name: str
    source: str
    path: str
    architecture: str
    parameters: int
    quantisation: str | None
    size: int
    context_length: int | None
    chat_template: bool
    learnable: bool


def find(folders: Iterable[str | os.PathLike] = ()) -> list[Found]:
    """Every GGUF file in the known places, first place first, each file once."""
    home = Path.home()
    hf_home = Path(os.environ.get("HF_HOME") or home / ".cache" / "huggingface")
    places: list[Iterable[Found]] = [
        _builtin(),
        _ollama(Path(os.environ.get("OLLAMA_MODELS") or home / ".ollama" / "models")),
        _files(home / ".lmstudio" / "models", "lm-studio"),
        _files(home / ".cache" / "lm-studio" / "models", "lm-studio"),
        _huggingface(Path(os.environ.get("HF_HUB_CACHE") or hf_home / "hub")),
        _files(Path(os.environ.get("LLAMA_CACHE") or home / ".cache" / "llama.cpp"), "llama.cpp"),
        *(_files(Path(folder).expanduser(), "folder") for folder in folders),
    ]
    seen: set[Path] = set()
    out = []
    for place in places:
        for found in place:
            if found.path.resolve() not in seen:
                seen.add(found.path.resolve())
                out.append(found)
    return out


def listing(folders: Iterable[str | os.PathLike] = ()) -> list[Model]:
    """``find``'s models with their header facts; files that are not chat models (adapters,
    vision projectors, damaged files) are left out."""
    return [model for found in find(folders) if (model := describe(found)) is not None]


def describe(found: Found) -> Model | None:
    """A found file with its header facts; None if it is not a chat model."""
    try:
        fields = header(found.path)
    except (ModelError, OSError):
        return None
    if not fields["architecture"] or fields["type"] in NOT_CHAT_MODELS:
        return None
    return Model(found.name, found.source, str(found.path), fields["architecture"],
                 fields["parameters"], fields["file_type"], found.path.stat().st_size,
                 fields["context_length"], fields["chat_template"],
                 fields["architecture"] in LEARNABLE_ARCHITECTURES)


def resolve(model: str, folders: Iterable[str | os.PathLike] = ()) -> Path:
    """``--model``: a path where one exists, else the file of a found model of that name (an
    Ollama name without a tag means ``:latest``, as in Ollama)."""
    path = Path(model).expanduser()
    if path.exists() or path.suffix == ".gguf":
        return path  # a missing .gguf path gets model_file's "not found"
    for found in find(folders):
        if found.name in (model, f"{model}:latest"):
            return found.path
    raise ModelError(f"no model file or model named {model!r}: `engram models` lists the "
                     "models found on this machine")


COLUMNS = ("NAME", "ARCH", "PARAMS", "QUANT", "SIZE", "CONTEXT", "TEMPLATE", "LEARNS", "SOURCE")


def cells(m: Model) -> tuple[str, ...]:
    """A model's row under COLUMNS, in ``engram models`` and the TUI's model picker alike."""
    return (m.name, m.architecture, _count(m.parameters), m.quantisation or "?",
            f"{m.size / 2**30:.2f} GB", str(m.context_length or "?"),
            "yes" if m.chat_template else "no", "yes" if m.learnable else "no", m.source)


def report(models: list[Model]) -> str:
    rows = [COLUMNS, *map(cells, models)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def _count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def _builtin() -> Iterator[Found]:
    """The built-in model once assembled (``engram`` without ``--model``)."""
    path = paths.cache() / BUILTIN_NAME
    if path.is_file():
        yield Found("built-in", "engram", path)


def _ollama(root: Path) -> Iterator[Found]:
    """Ollama's manifests (``manifests/HOST/NAMESPACE/MODEL/TAG``) name its model blobs."""
    manifests = root / "manifests"
    for manifest in sorted(manifests.glob("*/*/*/*")):
        host, namespace, model, tag = manifest.relative_to(manifests).parts
        try:
            layers = json.loads(manifest.read_text())["layers"]
            digests = [layer["digest"] for layer in layers
                       if layer.get("mediaType") == OLLAMA_MODEL_LAYER]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a manifest Engram can read: Ollama's business
        name = f"{model}:{tag}"  # as `ollama list` shows it
        if host != "registry.ollama.ai":
            name = f"{host}/{namespace}/{name}"
        elif namespace != "library":
            name = f"{namespace}/{name}"
        for digest in digests:
            blob = root / "blobs" / digest.replace(":", "-")
            if blob.is_file():
                yield Found(name, "ollama", blob)


def _huggingface(hub: Path) -> Iterator[Found]:
    """``models--ORG--REPO/snapshots/REVISION/…/FILE.gguf``, named ``ORG/REPO/FILE``; a file
    in several revisions is the newest revision's."""
    for repo in sorted(hub.glob("models--*")):
        repo_name = repo.name.removeprefix("models--").replace("--", "/")
        seen = set()
        snapshots = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime,
                           reverse=True)
        for snapshot in snapshots:
            for found in _files(snapshot, "huggingface", repo_name + "/"):
                if found.name not in seen:
                    seen.add(found.name)
                    yield found


def _files(root: Path, source: str, prefix: str = "") -> Iterator[Found]:
    """Every ``.gguf`` under ``root`` (first shards only), named by its path below it."""
    for path in sorted(root.rglob("*.gguf")):
        shard = SHARD.search(path.stem)
        if path.is_file() and (shard is None or shard.group(1) == "00001"):
            yield Found(prefix + path.relative_to(root).with_suffix("").as_posix(), source, path)
