"""Every on-disk location Engram uses, one function each.

State (database, overlays, session state) lives under the *home*: ``--home DIR``,
else ``$ENGRAM_HOME``, else the platform's user data dir. Big rebuildable files
(the assembled built-in model, the torch twin's weight cache) live in the *cache*:
``$ENGRAM_CACHE`` else the platform's user cache dir, so isolated homes share them.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import platformdirs

from store.files import restrict

APP_NAME = "engram"


class NotAHome(NotADirectoryError):
    """A place Engram must keep a directory is something else (a file); the message says which."""


class BadProfileName(ValueError):
    """A profile name that would not stay one directory below ``profiles/``."""


def private_dir(path: Path) -> Path:
    """Create ``path`` readable by the user only, and return it. Every level created here is
    0700 (``mkdir(parents=True)`` would leave the parents to the umask); levels that already
    exist keep their mode, except that ``path`` loses any group and other bits."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotAHome(f"{path} is a file, not a directory: choose another place with --home")
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for level in reversed(missing):
        try:
            level.mkdir(mode=0o700)
        except FileExistsError:  # another process made it first
            pass
        except NotADirectoryError:
            raise NotAHome(f"{level.parent} is a file, not a directory: choose another place "
                           "with --home") from None
        os.chmod(level, 0o700)
    restrict(path, 0o700)
    return path


def check_profile_name(name: str) -> str:
    """``name`` if it can name a directory under ``profiles/`` and nothing else."""
    if (not name or len(name) > 64 or name.startswith(".") or "/" in name or "\\" in name
            or any(ord(c) < 32 or ord(c) == 127 for c in name)):
        raise BadProfileName(
            f"{name!r} cannot be a profile name: use up to 64 characters, no path separators, "
            "control characters or leading dot")
    return name


def home(override: str | os.PathLike | None = None) -> Path:
    """Where this user's state lives."""
    chosen = override or os.environ.get("ENGRAM_HOME")
    path = Path(chosen).expanduser() if chosen else Path(platformdirs.user_data_dir(APP_NAME))
    return private_dir(path)


def cache() -> Path:
    """Where rebuildable large files live (shared by every home)."""
    chosen = os.environ.get("ENGRAM_CACHE")
    path = Path(chosen).expanduser() if chosen else Path(platformdirs.user_cache_dir(APP_NAME))
    return private_dir(path)


def twin_cache() -> Path:
    """The training copies of models (dequantised, one folder per model's sha256)."""
    return cache() / "twin"


def anchors_cache() -> Path:
    """The anchors learning keeps unchanged, one file per model and recipe."""
    return cache() / "anchors"


def database(home_dir: Path) -> Path:
    """The SQLite database of one home."""
    return home_dir / "engram.db"


def profile_dir(home_dir: Path, profile: str) -> Path:
    """Everything on disk of one profile but its rows in the database."""
    return private_dir(home_dir / "profiles" / check_profile_name(profile))


def overlays(home_dir: Path, profile: str) -> Path:
    """Overlay versions (safetensors + manifest) of one profile."""
    return private_dir(profile_dir(home_dir, profile) / "overlays")


def learning_lock(home_dir: Path, profile: str) -> Path:
    """Held while a process changes a profile's memory, so two processes never learn at once."""
    return profile_dir(home_dir, profile) / "learning.lock"


def exports_in_flight(home_dir: Path, profile: str) -> Path:
    """A note per export being written, naming its temporary (beside the export, outside the
    home), so that one an export killed midway left can be found again."""
    return private_dir(profile_dir(home_dir, profile) / "exports")


def session_states(home_dir: Path, profile: str) -> Path:
    """Saved per-session latent state (cells, KV snapshots) of one profile."""
    return private_dir(profile_dir(home_dir, profile) / "sessions")


def asset(*parts: str) -> Path:
    """A file shipped with Engram: the ``assets`` package's data, in the checkout and in a
    wheel alike (read through importlib.resources, never beside this file)."""
    root = resources.files("assets")
    if not isinstance(root, Path):  # a zipped install: Engram is always unpacked on disk
        raise RuntimeError(f"Engram's assets are not files on disk ({root}); reinstall it")
    return root.joinpath(*parts)


def eval_data(name: str) -> Path:
    """A bundled evaluation file (same formats as the public sets)."""
    return asset("eval", name)
