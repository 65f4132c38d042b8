"""The file chores every part of Engram shares: reading JSON lines, checking the types of what
a JSON file holds, writing a file so that a
crash leaves either the old file or the new one, never half of one, keeping what Engram
writes readable by the user only (0600 files, 0700 directories) whatever the umask, sealing a
directory with its files' checksums and moving a damaged file or directory aside."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path


class BadFile(ValueError):
    """A file that is not what it should be (its path and line in the message)."""


class Outdated(BadFile):
    """A cache written before caches carried checksums: not damaged, only unverifiable, and
    holding nothing the model cannot give again, so it is removed and rebuilt, not kept aside."""


def read_jsonl(path: Path) -> list[dict]:
    """One JSON object per non-empty line."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError as exc:
                raise BadFile(f"{path}:{number}: not JSON ({exc})") from None
    return out


def typed_fields(value: object, types: dict[str, tuple[type, ...]], what: str) -> dict:
    """``value`` as a JSON object holding each of these fields with one of its types (a bool is
    no int: JSON tells them apart); BadFile names the first that is not. A file that lies about
    a field's type must not be read as another value (``{}`` iterated as no blocks at all)."""
    if not isinstance(value, dict):
        raise BadFile(f"{what} is not a JSON object")
    for key, allowed in types.items():
        if key not in value:
            raise BadFile(f"{what} has no {key}")
        if not isinstance(value[key], allowed) or (isinstance(value[key], bool)
                                                    and bool not in allowed):
            raise BadFile(f"{what}: {key} has the wrong type")
    return value


def temporary(path: Path) -> Path:
    """Where a write of ``path`` goes before it is renamed into place: beside it, hidden, with
    the writer's pid, so ``abandoned`` can tell one whose writer was killed."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


_TEMPORARY = re.compile(r"\..+\.(\d+)\.tmp")


def abandoned(directory: Path) -> list[Path]:
    """The temporary files and directories in ``directory`` (named by ``temporary``) whose
    writer no longer runs: killed before its rename, so nothing refers to them."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if is_abandoned(p))


def is_abandoned(path: Path) -> bool:
    """Whether ``path`` is named as ``temporary`` names one and its writer no longer runs."""
    m = _TEMPORARY.fullmatch(path.name)
    return m is not None and not running(int(m.group(1)))


def running(pid: int) -> bool:
    """Whether a process ``pid`` runs (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def atomic_write(path: Path, write: Callable[[Path], object], mode: int = 0o600) -> Path:
    """Write ``path`` through ``write(tmp)`` into a temporary file beside it, flushed to disk
    and renamed over ``path``; on any failure the temporary file is removed and ``path`` is
    as it was."""
    path = Path(path)
    tmp = temporary(path)
    try:
        write(tmp)
        os.chmod(tmp, mode)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def open_private(path: Path, mode: str = "wb"):
    """Open ``path`` for writing (``"wb"`` truncates, ``"a"`` appends), created 0600."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "a" else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, mode)


def restrict(path: Path, allowed: int) -> None:
    """Take away the permission bits of ``path`` outside ``allowed``, and add none: a home the
    user made read-only stays read-only (Engram then says it cannot save)."""
    mode = os.stat(path).st_mode & 0o7777
    if mode & ~allowed:
        os.chmod(path, mode & allowed)


def make_private(path: Path) -> Path:
    """Restrict a file, or a directory and all below it, that a library wrote under the umask."""
    path = Path(path)
    os.chmod(path, 0o700 if path.is_dir() else 0o600)
    if path.is_dir():
        for below in path.rglob("*"):
            os.chmod(below, 0o700 if below.is_dir() else 0o600)
    return path


SEAL_FILE = "sha256sums.json"


def _digests(directory: Path) -> dict[str, str]:
    out = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = path.relative_to(directory).as_posix()
        if name != SEAL_FILE:
            with open(path, "rb") as fh:
                out[name] = hashlib.file_digest(fh, "sha256").hexdigest()
    return out


def seal(directory: Path) -> None:
    """Record the sha256 of every file below ``directory`` in its SEAL_FILE (written last,
    before the directory is renamed into place), so a reader can tell it whole."""
    with open_private(directory / SEAL_FILE) as fh:
        fh.write(json.dumps(_digests(directory), indent=1).encode())


def check_seal(directory: Path) -> None:
    """BadFile unless the files below ``directory`` are exactly those ``seal`` recorded."""
    if not (directory / SEAL_FILE).exists():
        raise Outdated(f"{directory}: written before caches carried checksums")
    try:
        recorded = json.loads((directory / SEAL_FILE).read_bytes())
        found = _digests(directory)
    except (OSError, ValueError) as exc:
        raise BadFile(f"{directory}: its checksums cannot be read ({exc})") from None
    if found != recorded:
        changed = sorted(set(found) ^ set(recorded)
                         | {n for n in found if found[n] != recorded.get(n)})
        raise BadFile(f"{directory}: {', '.join(changed[:3]) or SEAL_FILE} does not match "
                      "its checksum")


def quarantine(path: Path, companions: tuple[str, ...] = (), why: str = "damaged") -> Path:
    """Rename a damaged (or ``why`` else) file or directory aside, never delete it: to
    ``<name>.<why>-<UTC timestamp>``, with the files named by ``path`` plus each of
    ``companions`` (SQLite's ``-wal``, ``-shm``) renamed to the new name plus the same suffix.
    Returns the new path."""
    suffixes = ("", *companions)
    target = aside_name(path, suffixes, why)
    for suffix in suffixes:
        try:
            os.rename(f"{path}{suffix}", f"{target}{suffix}")
        except FileNotFoundError:
            pass
    return target


def aside_name(path: Path, suffixes: tuple[str, ...] = ("",), why: str = "damaged") -> Path:
    """Where ``quarantine`` puts ``path`` (free for it and each of ``suffixes``): the name
    ``quarantined`` reads back."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.{why}-{stamp}")
    n = 1
    while any(Path(f"{target}{s}").exists() for s in suffixes):
        n += 1
        target = path.with_name(f"{path.name}.{why}-{stamp}-{n}")
    return target


_QUARANTINED = re.compile(r"(?P<name>.+)\.(?P<why>[a-z]+)-(?P<when>\d{8}T\d{6}Z)(?:-\d+)?")


@dataclass(frozen=True)
class Quarantined:
    """A file or directory ``quarantine`` moved aside, read back from its name."""

    path: Path  # where it is now
    original: Path  # where it was (a rebuilt one may be there again)
    why: str  # "damaged", "unrecorded"
    when: datetime  # UTC


def quarantined(directory: Path) -> list[Quarantined]:
    """What ``quarantine`` moved aside in ``directory``, oldest first (a database's ``-wal``
    and ``-shm`` go with it, not on their own)."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        if m := _QUARANTINED.fullmatch(path.name):
            when = datetime.strptime(m["when"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            found.append(Quarantined(path, path.with_name(m["name"]), m["why"], when))
    return sorted(found, key=lambda q: (q.when, q.path.name))
