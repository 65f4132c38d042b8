"""The background learning queue: one worker thread per Engine, one job at a time.

Requests are debounced (a job starts after some quiet, so a user typing several messages
causes one job) and fan in (a job learns everything pending when it starts; a request made
while a job runs starts another one afterwards). A job is cancelled through an Event the
learner checks at every step; the previous overlay version then stays active.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.errors import EngramError

DEBOUNCE_S = 20.0

Job = Callable[[Callable[[float, str], None], threading.Event], str]


@dataclass(frozen=True)
class QueueState:
    running: bool
    progress: float | None  # 0..1 while running
    message: str  # what the job is doing, or how the last one ended
    scheduled: bool  # a job will start when the quiet period ends


class LearnQueue:
    """Runs ``job(progress, cancel) -> summary`` in a daemon thread when requested."""

    def __init__(self, job: Job, debounce: float = DEBOUNCE_S):
        self.job, self.debounce = job, debounce
        self._cond = threading.Condition()
        self._due: float | None = None
        self._cancel = threading.Event()
        self._running = self._closed = False
        self._progress: float | None = None
        self._message = ""
        self._thread = threading.Thread(target=self._work, name="engram-learning", daemon=True)
        self._thread.start()

    def schedule(self, delay: float | None = None) -> None:
        """Run a job after ``delay`` seconds (default: the debounce) without a new request."""
        with self._cond:
            self._due = time.monotonic() + (self.debounce if delay is None else delay)
            self._cond.notify_all()

    def cancel(self, wait: bool = False) -> None:
        """Drop the scheduled job and stop the running one (``wait``: until it has stopped)."""
        with self._cond:
            self._due = None
            if self._running:
                self._cancel.set()
            while wait and self._running:
                self._cond.wait()

    def state(self) -> QueueState:
        with self._cond:
            return QueueState(self._running, self._progress, self._message, self._due is not None)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no job is running or scheduled (for scripts and tests)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._running or self._due is not None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self, timeout: float | None = None) -> bool:
        """Cancel any job and stop the thread; False if a job is still finishing a phase that
        cannot be interrupted (loading the training model) after ``timeout`` seconds."""
        self.cancel()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _report(self, fraction: float, message: str) -> None:
        with self._cond:
            self._progress, self._message = fraction, message

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (self._due is None or self._due > time.monotonic()):
                    self._cond.wait(None if self._due is None else self._due - time.monotonic())
                if self._closed:
                    return
                self._due, self._running, self._progress = None, True, 0.0
                self._cancel.clear()
            try:
                message = self.job(self._report, self._cancel)
            except InterruptedError:
                message = "learning cancelled; the memory is unchanged"
            except EngramError as exc:
                message = f"learning stopped: {exc}"
            except Exception as exc:  # a bug must not kill the thread (or the app)
                logging.getLogger(__name__).exception("learning failed")
                message = f"learning failed ({type(exc).__name__}: {exc})"
            with self._cond:
                self._running, self._progress, self._message = False, None, message
                self._cond.notify_all()
