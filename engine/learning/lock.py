"""One learning job at a time per profile, across processes: a lock file."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.errors import EngramError
from store import paths
from store.files import open_private


@contextmanager
def profile_lock(home: Path, profile: str, wait: float) -> Iterator[None]:
    """Hold ``profile``'s learning lock, waiting up to ``wait`` seconds for another process
    that holds it (then EngramError)."""
    with open_private(paths.learning_lock(home, profile), "a") as lock:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise EngramError("another Engram process is changing this profile's "
                                      "memory; try again when it is done") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
