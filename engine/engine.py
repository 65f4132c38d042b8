"""The one interface the UI (TUI and CLI) talks to: store, model, sessions, settings, memory.

A profile's memory is per base model (by the model file's sha256): switching models serves
the other model's own versions, and learning never crosses from one model to the other: each
model learns the profile's sessions for itself (``learning.ledger``)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from engine import memory_archive, set_aside
from engine.conversation import Conversation
from engine.errors import EngramError, OtherProfile
from engine.learn_queue import LearnQueue
from engine.learning import CellsLearned, Learning, LearnResult, Progress, Step, VersionDiff, quiet
from engine.learning.ledger import ancestry_records, pending_sessions
from engine.memory import OverlayMemory
from engine.memory_status import MemoryStatus
from engine.model_file import ModelFile, open_model
from engine.runtime import Runtime
from engine.session_state import CELLS_BY_DEFAULT, SessionStates, remove_files
from engine.settings import Settings
from store import paths
from store.records import Message, OverlayVersion, Session
from store.store import Store

CLOSE_WAIT_S = 2.0  # how long quitting waits for a learning job to notice it was cancelled


class Engine:
    """A profile's view of Engram. The model loads on ``load()`` (slow: call it from a worker)."""

    def __init__(self, home: str | os.PathLike | None = None, profile: str = "default",
                 model: str | os.PathLike | None = None, n_ctx: int | None = None):
        paths.check_profile_name(profile)  # before anything is created
        self.home: Path = paths.home(home)
        self.store = Store(paths.database(self.home))
        self.profile = self.store.profile(profile)
        self.settings = Settings.from_saved(self.profile.settings)
        self.model_path = model
        self.n_ctx = n_ctx or self.settings.n_ctx
        self.runtime: Runtime | None = None
        self.memory: OverlayMemory | None = None  # with the model: it applies the active overlay
        self.learning: Learning | None = None  # with the model
        self.learn_queue: LearnQueue | None = None  # started by the first schedule_learning
        # Called on the learning thread with each background run's results (the app's notice).
        self.on_learned: Callable[[list[LearnResult]], object] | None = None
        self.states: SessionStates | None = None  # with the model: cells and saved KV caches
        # Guards learn_queue; while the model is replaced no job is asked for (it would start
        # on one model's objects and end on the other's): the sessions stay pending.
        self._queue_lock = threading.Lock()
        self._replacing_model = False

    def load(self) -> Runtime:
        if self.runtime is None:
            self._serve(self._runtime(self.model_path))
        assert self.runtime is not None  # _serve set it
        return self.runtime

    def _runtime(self, model: str | os.PathLike | None) -> Runtime:
        """``model`` loaded as this profile chats: its context window, thinking or not."""
        return Runtime(model, n_ctx=self.n_ctx, thinking=self.settings.thinking)

    def _serve(self, runtime: Runtime) -> None:
        """Build the memory, session states and learning on ``runtime`` and use them all."""
        memory = OverlayMemory(self.store, self.home, self.profile, runtime)
        states = SessionStates(self.store, self.home, self.profile, runtime,
                               overlay_id=lambda: memory.applied.id if memory.applied else None,
                               gates=memory.cell_gates_for)
        learning = Learning(self.store, self.home, self.profile, runtime, memory,
                            lambda: self.settings, cell_writer=states.writer)
        self.runtime, self.memory, self.states, self.learning = runtime, memory, states, learning

    def switch_model(self, model: str | os.PathLike | None) -> Runtime:
        """Serve another model (None: the built-in one) with its own memory. Slow: call it from
        a worker. The old model serves until the new one has loaded; if it cannot load
        (ModelError), nothing changes. Learning is stopped, and its thread ended, before the
        new model's memory is opened: a job for the old model is dropped (its sessions stay
        pending) and never reaches the new one."""
        old_runtime, old_states, old_learning = self.runtime, self.states, self.learning
        runtime = self._runtime(model)
        with self._queue_lock:
            queue, self.learn_queue, self._replacing_model = self.learn_queue, None, True
        try:
            if queue is not None:
                queue.close()  # waits for a job still in a phase it cannot leave
            self._serve(runtime)
            self.model_path = model
        except BaseException:
            runtime.close()
            raise
        finally:
            with self._queue_lock:
                self._replacing_model = False
        if old_runtime is not None:
            assert old_states is not None and old_learning is not None  # served together
            old_learning.close()
            old_states.close()  # its capture context before the model it shares
            old_runtime.close()
        return runtime

    def model_file(self) -> ModelFile:
        """The model served (or to be served: opened without loading it)."""
        return self.runtime.model if self.runtime else open_model(self.model_path)

    def loaded(self) -> tuple[Runtime, OverlayMemory, Learning, SessionStates]:
        """The model and what is built on it, loading it first."""
        runtime = self.load()
        # load() sets them all together
        assert self.memory is not None and self.learning is not None and self.states is not None
        return runtime, self.memory, self.learning, self.states

    def close(self) -> None:
        """Stop learning (a job in progress is dropped; the active version stays), then close.
        Quitting never waits on learning: a job still in a phase that cannot be interrupted
        after a moment keeps the model and store open and ends with the process (its writes
        are atomic, so the previous version stays active)."""
        if self.learn_queue is not None and not self.learn_queue.close(timeout=CLOSE_WAIT_S):
            return
        if self.learning is not None:
            self.learning.close()
        if self.states is not None:
            self.states.close()  # its capture context before the model it shares
        if self.runtime is not None:
            self.runtime.close()
        self.store.close()

    # -- sessions -------------------------------------------------------------

    def sessions(self, search: str | None = None) -> list[Session]:
        return self.store.sessions(self.profile.id, search)

    def new_session(self, private: bool = False) -> Session:
        model = self.runtime.name if self.runtime else str(self.model_path or "built-in")
        return self.store.new_session(self.profile.id, model,
                                      system_prompt=self.settings.system_prompt, private=private)

    def conversation(self, session: Session | int) -> Conversation:
        if isinstance(session, int):
            session = self.store.session(session)
        if session.profile_id != self.profile.id:
            raise OtherProfile("that session belongs to another profile")
        return Conversation(self.store, self.load(), session, on_reply=self.schedule_learning,
                            states=self.states, memory=self.memory)

    def session(self, session_id: int) -> Session:
        """One of this profile's sessions (another profile's: OtherProfile)."""
        session = self.store.session(session_id)
        if session.profile_id != self.profile.id:
            raise OtherProfile("that session belongs to another profile")
        return session

    def messages(self, session_id: int) -> list[Message]:
        """A session's messages, oldest first (each verified against its checksum)."""
        self._own(session_id)
        return self.store.messages(session_id)

    def set_system_prompt(self, session_id: int, text: str | None) -> Session:
        self._own(session_id)
        return self.store.update_session(session_id, system_prompt=text)

    def rename_session(self, session_id: int, title: str) -> Session:
        return self.store.update_session(session_id, title=title.strip() or "Untitled")

    def delete_session(self, session_id: int) -> None:
        self.store.delete_session(session_id)
        remove_files(self.home, self.profile.name, session_id)

    # -- cells ----------------------------------------------------------------

    def set_cells_enabled(self, session_id: int, enabled: bool) -> None:
        """Turn a session's cells on or off (off: nothing is written or read; kept for later)."""
        self._own(session_id)
        self.loaded()[3].set_cells_enabled(session_id, enabled)

    def reset_cells(self, session_id: int) -> None:
        """Empty a session's cells."""
        self._own(session_id)
        self.loaded()[3].reset_cells(session_id)

    def _own(self, session_id: int) -> None:
        self.session(session_id)

    # -- settings -------------------------------------------------------------

    def save_settings(self, settings: Settings) -> None:
        settings.validate()
        self.settings = settings
        self.store.save_settings(self.profile.id, asdict(settings))

    # -- memory ---------------------------------------------------------------

    def memory_status(self, session_id: int | None = None) -> MemoryStatus:
        """The memory state for the UI's panel."""
        applied = self.memory.applied if self.memory else None
        state = self.learn_queue.state() if self.learn_queue else None
        cells_enabled, magnitudes = False, []
        problems = [self.memory.problem] if self.memory and self.memory.problem else []
        if session_id is not None:
            self._own(session_id)
            if self.states is not None:
                cells_enabled = self.states.cells(session_id).enabled
                magnitudes = self.states.magnitudes(session_id)
                problems += [p for p in [self.states.problems.get(session_id)] if p]
            else:
                saved = self.store.session_state(session_id)
                cells_enabled = CELLS_BY_DEFAULT if saved is None or saved.cells_enabled is None \
                    else saved.cells_enabled
        step = state.message if state and state.running and isinstance(state.message, Step) \
            else None
        return MemoryStatus(overlay_active=applied is not None,
                            overlay_version=applied.id if applied else None,
                            learning=bool(state and state.running),
                            learning_progress=state.progress if state else None,
                            learning_message=state.message if state else "",
                            learning_phase=step.phase if step else "",
                            phase_progress=step.done if step else None,
                            phase_left_s=step.left_s if step else None,
                            learning_paused=self.settings.learning_paused,
                            cells_enabled=cells_enabled, cell_magnitudes=magnitudes,
                            problem=" ".join(problems))

    def what_was_set_aside(self) -> list[set_aside.SetAside]:
        """What was set aside as damaged, and what was done instead: in the home, of this
        profile, in the cache."""
        return set_aside.found(self.home, self.store, [self.profile])

    def versions(self) -> list[OverlayVersion]:
        """This profile's memory versions for the model, newest first."""
        return self.store.overlay_versions(self.profile.id, self.model_file().sha256)

    def version(self, version_id: int) -> OverlayVersion:
        """One of this profile's memory versions (another profile's: OtherProfile)."""
        version = self.store.overlay_version(version_id)
        if version.profile_id != self.profile.id:
            raise OtherProfile(f"overlay version {version_id} belongs to another profile")
        return version

    def active_version(self) -> OverlayVersion | None:
        """The model's version in use (as recorded: another process may have just changed
        it)."""
        return self.store.active_overlay(self.profile.id, self.model_file().sha256)

    def cells_learned_since(self, before: OverlayVersion | None) -> CellsLearned | None:
        """The active version, if it is newer than ``before`` and learned the cells' read."""
        active = self.active_version()
        if active is None or (before is not None and active.id == before.id):
            return None
        return CellsLearned.of(active)

    def version_of_session(self, session_id: int) -> OverlayVersion:
        """The newest version of this profile and model that learned (or tried to learn) a
        session."""
        return self.loaded()[2].version_of_session(session_id)

    def learned_facts(self, version: OverlayVersion) -> dict[int, dict]:
        """Per session in ``version``, what was derived from it when its neurons were trained
        (the nearest record along the version's ancestry)."""
        return ancestry_records(self.versions(), version)

    def pending_sessions(self) -> list[Session]:
        """Sessions learning would take up now for the model (works without loading it)."""
        return pending_sessions(self.store, self.profile, self.model_file().sha256)

    def schedule_learning(self, session_id: int | None = None, delay: float | None = None) -> bool:
        """Ask for background learning: after each reply (debounced: the job starts after a
        quiet spell) and with ``delay=0`` when a session ends. False when nothing will be
        learned: learning paused, a private session, the model not loaded or not learnable,
        or being replaced."""
        if (self.learning is None or self.runtime is None or self.settings.learning_paused
                or not self.runtime.model.learnable):
            return False
        if session_id is not None and self.store.session(session_id).private:
            return False
        with self._queue_lock:
            if self._replacing_model:
                return False
            if self.learn_queue is None:
                self.learn_queue = LearnQueue(self._learn_in_background)
            self.learn_queue.schedule(delay)
        return True

    def _learn_in_background(self, progress: Progress, cancel: threading.Event) -> str:
        if self.settings.learning_paused:
            return "learning is paused"
        _, _, learning, _ = self.loaded()
        results = learning.run(progress, cancel, wait=0)
        cells = learning.learn_cells(progress, cancel, wait=0)
        if self.on_learned is not None:
            self.on_learned(results)
        summaries = [r.summary() for r in results] + ([f"cells' read learned (v{cells.id})"]
                                                      if cells else [])
        return "; ".join(summaries) or "nothing new to learn"

    def cancel_learning(self) -> None:
        """Stop the background job (the active version stays) and drop a scheduled one."""
        if self.learn_queue is not None:
            self.learn_queue.cancel(wait=True)

    def learn_now(self, progress: Progress = quiet, cancel: threading.Event | None = None,
                  session_ids: list[int] | None = None) -> list[LearnResult]:
        """Learn the pending sessions (or these) in the foreground, then the cells' read if it
        is due; returns when each new version is active or rejected."""
        if self.settings.learning_paused:
            raise EngramError("learning is paused: `engram memory resume` turns it back on")
        runtime, _, learning, _ = self.loaded()
        runtime.model.check_learnable()
        self.cancel_learning()
        results = learning.run(progress, cancel, session_ids)
        learning.learn_cells(progress, cancel)
        return results

    def pause_learning(self, paused: bool = True) -> None:
        """Pause (or resume) learning for this profile; pausing stops a running job."""
        if paused:
            self.cancel_learning()
        self.save_settings(replace(self.settings, learning_paused=paused))

    def forget_session(self, session_id: int) -> OverlayVersion:
        _, _, learning, _ = self.loaded()
        self.cancel_learning()
        return learning.forget(session_id)

    def reset_memory(self) -> OverlayVersion:
        _, _, learning, _ = self.loaded()
        self.cancel_learning()
        return learning.reset()

    def rollback_memory(self, version_id: int | None = None) -> OverlayVersion | None:
        _, _, learning, _ = self.loaded()
        self.cancel_learning()
        return learning.rollback(version_id)

    def memory_diff(self, version_id: int) -> VersionDiff:
        return self.loaded()[2].diff(version_id)

    def memory_neurons(self, version_id: int
                       ) -> dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]:
        """Per (layer, matrix): the FFN neurons a version changes and the L2 norm of each
        one's change (the memory screen's per-neuron view)."""
        version = self.store.overlay_version(version_id)
        if version.profile_id != self.profile.id:
            raise OtherProfile("that overlay version belongs to another profile")
        return self.loaded()[1].load(version).neuron_norms()

    def export_memory(self, path: str | os.PathLike, fmt: str = "archive") -> Path:
        """Write the active memory to ``path`` (which must not exist): ``archive`` (overlay,
        sessions, cells; ``import_memory`` reads it), or the overlay alone as a ``gguf``
        (llama.cpp, Ollama) or ``peft`` LoRA adapter. Works without loading the model."""
        return memory_archive.export(path, fmt, self.store, self.home, self.profile,
                                     self.model_file())

    def import_memory(self, path: str | os.PathLike) -> OverlayVersion:
        """Check an archive completely, then add its sessions and make its overlay a new active
        version (a rollback goes back). A refused archive (ArchiveRefused) changes nothing."""
        runtime, memory, learning, _ = self.loaded()
        archive = memory_archive.read(path, runtime)
        self.cancel_learning()
        with learning.exclusive():
            return memory_archive.apply(archive, self.store, self.profile, memory)
