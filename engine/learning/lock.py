"""One learning job at a time per profile, across processes: a lock file."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.errors import EngramError
from store import paths
from store.files import open_private

BUSY = "another Engram process is changing this profile's memory"


@contextmanager
def profile_lock(home: Path, profile: str, wait: float,
                 waiting: Callable[[str], object] | None = None) -> Iterator[None]:
    """Hold ``profile``'s learning lock, waiting up to ``wait`` seconds for another process
    that holds it (then EngramError). ``waiting`` is told so, in one line, once it has to wait:
    a foreground command that seems to hang for a minute must say why."""
    with open_private(paths.learning_lock(home, profile), "a") as lock:
        deadline = time.monotonic() + wait
        waited = False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    still = f" (still, after {wait:.0f} s)" if waited else ""
                    raise EngramError(f"{BUSY}{still}; try again when it is done") from None
                if waiting is not None and not waited:
                    waiting(f"{BUSY}: waiting for it (up to {wait:.0f} s)")
                waited = True
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
