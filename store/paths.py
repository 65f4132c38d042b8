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

APP_NAME = "engram"


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) readable by the user only, and return it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


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


def database(home_dir: Path) -> Path:
    """The SQLite database of one home."""
    return home_dir / "engram.db"


def overlays(home_dir: Path, profile: str) -> Path:
    """Overlay versions (safetensors + manifest) of one profile."""
    return private_dir(home_dir / "profiles" / profile / "overlays")


def learning_lock(home_dir: Path, profile: str) -> Path:
    """Held while a process changes a profile's memory, so two processes never learn at once."""
    return private_dir(home_dir / "profiles" / profile) / "learning.lock"


def session_states(home_dir: Path, profile: str) -> Path:
    """Saved per-session latent state (cells, KV snapshots) of one profile."""
    return private_dir(home_dir / "profiles" / profile / "sessions")


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
