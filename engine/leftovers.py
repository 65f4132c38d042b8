"""What a process killed mid-write leaves in a home or the cache, found and tidied.

Every write goes to a hidden temporary beside its target, named with the writer's pid
(``store.files.temporary``), and is renamed into place whole. One killed before the rename
leaves that temporary, which nothing refers to: once its writer no longer runs, it is removed.
An export's temporary lies beside the export, in a directory of the user's that Engram never
searches: while it is written a note in the home names it (``exporting``), so it is found
all the same. A commit killed after renaming a version folder into place but before recording
it leaves a folder the database does not know: it is moved aside (``<name>.unrecorded-<stamp>``),
never deleted, and only while this process holds the profile's learning lock, so never the
folder of a commit still running in another process. ``engram doctor`` lists them all;
opening a profile's memory tidies them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.errors import EngramError
from store import paths
from store.files import (
    abandoned,
    atomic_write,
    is_abandoned,
    open_private,
    quarantine,
    running,
    temporary,
)
from store.records import Profile
from store.store import Store


def temporaries(home: Path, profile: str) -> list[Path]:
    """Abandoned temporaries of the profile (its versions, their LoRA files, its sessions'
    KV snapshots) and of the cache (the built-in model, the twin, anchors, floors)."""
    overlays = paths.overlays(home, profile)
    cache = paths.cache()
    places = [overlays, *(p for p in overlays.iterdir() if p.is_dir()),
              paths.session_states(home, profile), paths.exports_in_flight(home, profile),
              cache, *(p for p in cache.iterdir() if p.is_dir())]
    return [found for place in places for found in abandoned(place)] + [
        left for _, left in _killed_exports(home, profile) if left is not None]


@contextmanager
def exporting(home: Path, profile: str, target: Path) -> Iterator[None]:
    """Note in the home, while an export to ``target`` is written, the temporary it is
    written through (beside it, as ``store.files.temporary`` names it)."""
    tmp = temporary(target.absolute())  # found again from any working directory
    digest = hashlib.sha256(str(tmp).encode()).hexdigest()[:16]
    note = paths.exports_in_flight(home, profile) / f"{os.getpid()}-{digest}.json"

    def write(path: Path) -> None:
        with open_private(path) as fh:
            fh.write(json.dumps({"temporary": str(tmp)}).encode())

    atomic_write(note, write)
    try:
        yield
    finally:
        note.unlink(missing_ok=True)


def _killed_exports(home: Path, profile: str) -> list[tuple[Path, Path | None]]:
    """The notes of exports whose process no longer runs, each with the temporary it left
    (None: none, or the note names no temporary of a writer gone: nothing else is touched)."""
    found: list[tuple[Path, Path | None]] = []
    for note in sorted(paths.exports_in_flight(home, profile).glob("*.json")):
        pid = note.name.partition("-")[0]
        if not pid.isdigit() or running(int(pid)):
            continue
        try:
            left: Path | None = Path(json.loads(note.read_bytes())["temporary"])
        except (OSError, ValueError, KeyError, TypeError):
            left = None
        if left is not None and not (is_abandoned(left) and (left.is_file() or left.is_dir())
                                     and not left.is_symlink()):
            left = None
        found.append((note, left))
    return found


def unrecorded(store: Store, home: Path, profile: Profile) -> list[Path]:
    """Version folders of the profile that no row of the database records. A version's name
    has no dot: temporaries and what was moved aside are not versions."""
    recorded = {(home / v.path).resolve() for v in store.overlay_versions(profile.id)}
    return sorted(p for p in paths.overlays(home, profile.name).iterdir()
                  if p.is_dir() and "." not in p.name and p.resolve() not in recorded)


def tidy(store: Store, home: Path, profile: Profile) -> None:
    """Remove the abandoned temporaries; move unrecorded versions aside unless another
    process is changing the profile's memory (then they may be its commit in flight)."""
    from engine.learning.lock import profile_lock  # engine.learning imports engine.memory

    for path in temporaries(home, profile.name):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    for note, _ in _killed_exports(home, profile.name):
        note.unlink(missing_ok=True)
    if folders := unrecorded(store, home, profile):
        try:
            with profile_lock(home, profile.name, wait=0):
                for folder in unrecorded(store, home, profile):  # again, now no one commits
                    moved = quarantine(folder, why="unrecorded")
                    logging.getLogger(__name__).warning(
                        "overlay folder %s is not recorded in the database (a commit that "
                        "was killed): moved aside to %s", folder, moved)
        except EngramError:
            logging.getLogger(__name__).info("%d unrecorded overlay folders left: another "
                                             "process is changing this memory", len(folders))
