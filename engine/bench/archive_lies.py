"""Archives that lie, for the reliability bench's fuzz: a real export taken apart and put
back together with one thing in it untrue. Most lies recompute the index's checksums, as a
forger would, so that what is behind them is checked too: member names that leave the
folder, a name twice, members the index does not list, another base model, fields of the
wrong type, a member whose declared size is not its stream's. Every one must be refused;
a stream longer than its declared size may also be read as the size says, and so import
identically.
"""

from __future__ import annotations

import hashlib
import json
import random
import stat
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from engine import overlay as overlay_files
from engine.memory_archive import CELLS_PREFIX, INDEX, OVERLAY_MEMBERS, SESSIONS

MANIFEST = next(name for name, file in OVERLAY_MEMBERS.items()
                if file == overlay_files.MANIFEST_FILE)
UNSAFE_NAMES = ("../evil", "/tmp/evil", "cells/../../evil", "overlay/./manifest.json",
                "C:evil", "..\\evil", "cells//1.bin", "cells/")
BOMB_BYTES = (1 << 20, 1 << 24)  # the zeros after a member's own bytes, deflated to little


@dataclass
class Parts:
    """An archive taken apart: its index and its other members, in order."""

    index: dict
    members: list[tuple[str | zipfile.ZipInfo, bytes]]


def taken_apart(archive: Path) -> Parts:
    with zipfile.ZipFile(archive) as zf:
        return Parts(json.loads(zf.read(INDEX)),
                     [(name, zf.read(name)) for name in zf.namelist() if name != INDEX])


def _name(member: str | zipfile.ZipInfo) -> str:
    return member.filename if isinstance(member, zipfile.ZipInfo) else member


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def zipped(parts: Parts, reseal: bool = True) -> bytes:
    """The parts as a zip, the index first; ``reseal``: its checksums recomputed."""
    if reseal:
        parts.index["members"] = {_name(m): _sha256(data) for m, data in parts.members}
    out = BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        warnings.simplefilter("ignore")  # "Duplicate name": one lie is just that
        zf.writestr(INDEX, json.dumps(parts.index, indent=1))
        for member, data in parts.members:
            zf.writestr(member, data)
    return out.getvalue()


def _declared(blob: bytes, name: str, size: int, crc: int | None = None) -> bytes:
    """``blob`` with the central directory declaring ``size`` bytes (and ``crc``) for
    ``name``: what zipfile trusts when it reads."""
    data, encoded = bytearray(blob), name.encode()
    at = data.index(b"PK\x01\x02")  # an entry: crc at +16, size at +24, its name at +46
    while data[at + 46: at + 46 + len(encoded)] != encoded:
        at = data.index(b"PK\x01\x02", at + 4)
    data[at + 24: at + 28] = struct.pack("<I", size)
    if crc is not None:
        data[at + 16: at + 20] = struct.pack("<I", crc)
    return bytes(data)


def _json_member(parts: Parts, name: str, edit: Callable[[dict], object]) -> None:
    i = next(i for i, (m, _) in enumerate(parts.members) if _name(m) == name)
    value = json.loads(parts.members[i][1])
    edit(value)
    parts.members[i] = (name, json.dumps(value).encode())


def _wrong(value: object) -> object:
    """A JSON value of a type that field never holds (None: no field that may be None holds
    a list)."""
    if isinstance(value, bool):
        return 1
    if isinstance(value, str):
        return 7
    if isinstance(value, int | float):
        return "7"
    return {} if isinstance(value, list) else []


def _other_sha256(rng: random.Random) -> str:
    return _sha256(rng.randbytes(8))


def checksum(parts: Parts, rng: random.Random) -> bytes:
    parts.index["members"][rng.choice(sorted(parts.index["members"]))] = _other_sha256(rng)
    return zipped(parts, reseal=False)


def declared_size(parts: Parts, rng: random.Random) -> bytes:
    name, data = rng.choice([(INDEX, b"")] + [(_name(m), d) for m, d in parts.members])
    size = len(json.dumps(parts.index, indent=1)) if name == INDEX else len(data)
    return _declared(zipped(parts, reseal=False), name,
                     rng.choice([0, size // 2, size + 1, size * 1000 + 1]))


def bomb(parts: Parts, rng: random.Random) -> bytes:
    """A member's stream runs on for megabytes of zeros past the size it declares (and the
    CRC is of what it declares, so only Engram's own checks can tell)."""
    i = rng.randrange(len(parts.members))
    name, data = _name(parts.members[i][0]), parts.members[i][1]
    parts.members[i] = (name, data + bytes(rng.randint(*BOMB_BYTES)))
    size = rng.choice([len(data), rng.randrange(len(data) + 1)])
    return _declared(zipped(parts, reseal=False), name, size, zlib.crc32(data[:size]))


def unsafe_name(parts: Parts, rng: random.Random) -> bytes:
    name = rng.choice(UNSAFE_NAMES)
    if rng.random() < 0.5:
        parts.members.append((name, b"x"))
    else:
        i = rng.randrange(len(parts.members))
        parts.members[i] = (name, parts.members[i][1])
    return zipped(parts)


def link(parts: Parts, rng: random.Random) -> bytes:
    info = zipfile.ZipInfo(f"{CELLS_PREFIX}{rng.randrange(100)}.bin")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    parts.members.append((info, b"/etc/passwd"))
    return zipped(parts)


def duplicate(parts: Parts, rng: random.Random) -> bytes:
    name, data = rng.choice(parts.members)
    parts.members.append((_name(name), data if rng.random() < 0.5 else data[::-1]))
    return zipped(parts)


def unlisted(parts: Parts, rng: random.Random) -> bytes:
    """A member the index does not list, or one it lists that is not there."""
    if rng.random() < 0.5:
        parts.members.append((f"{CELLS_PREFIX}{rng.randrange(100, 200)}.bin", b"x"))
    else:
        parts.members.pop(rng.randrange(len(parts.members)))
    return zipped(parts, reseal=False)


def base_model(parts: Parts, rng: random.Random) -> bytes:
    """Another base model, in the index or in the overlay's own (resealed) manifest."""
    other = _other_sha256(rng)
    if rng.random() < 0.5:
        parts.index["base_sha256"] = other
    else:
        _json_member(parts, MANIFEST, lambda m: m.update(overlay_files.sealed_manifest(
            m | {"base_sha256": other})))
    return zipped(parts)


def wrong_type(parts: Parts, rng: random.Random) -> bytes:
    """One field of the index, a session, a message or the overlay's manifest (resealed)
    given a value of another type."""
    def spoil(fields: dict) -> None:
        key = rng.choice(sorted(fields))
        fields[key] = _wrong(fields[key])

    def spoil_sealed(manifest: dict) -> None:
        spoil(manifest)
        manifest.update(overlay_files.sealed_manifest(manifest))

    def spoil_session(sessions: dict) -> None:
        session = rng.choice(sessions["sessions"])
        spoil(session if where == "session" or not session["messages"]
              else rng.choice(session["messages"]))

    where = rng.choice(["index", "session", "message", "manifest"])
    if where == "index":
        spoil(parts.index)
        return zipped(parts, reseal=False)
    if where == "manifest":
        _json_member(parts, MANIFEST, spoil_sealed)
    else:
        _json_member(parts, SESSIONS, spoil_session)
    return zipped(parts)


def unknown_value(parts: Parts, rng: random.Random) -> bytes:
    """A role, status, format or cells member no export writes."""
    def edit(sessions: dict) -> None:
        session = rng.choice(sessions["sessions"])
        what = rng.choice(["role", "status", "cells"] if session["messages"] else ["cells"])
        if what == "cells":
            session["cells"] = rng.choice([SESSIONS, f"{CELLS_PREFIX}404.bin", "cells.bin"])
        else:
            rng.choice(session["messages"])[what] = rng.choice(["tool", "", "done", "USER"])

    if rng.random() < 0.25:
        parts.index[rng.choice(["format", "format_version"])] = rng.choice(["zip", 2, 0])
    else:
        _json_member(parts, SESSIONS, edit)
    return zipped(parts)


LIES: dict[str, Callable[[Parts, random.Random], bytes]] = {
    lie.__name__.replace("_", " "): lie
    for lie in (checksum, declared_size, bomb, unsafe_name, link, duplicate, unlisted,
                base_model, wrong_type, unknown_value)}


def told(archive: Path, rng: random.Random) -> tuple[str, bytes]:
    """A lie chosen by ``rng`` and the archive that tells it."""
    name = rng.choice(sorted(LIES))
    return name, LIES[name](taken_apart(archive), rng)
