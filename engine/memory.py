"""A profile's overlay versions: commit, activate (hot swap into llama.cpp), roll back, and
follow what another process made active.

Files are written first (atomically), then the running model is switched, then the store
records it in one transaction; if recording fails the model is switched back and the files
removed. So the store, the files and the running model agree after any failure, and the
previous version stays active.
"""

from __future__ import annotations

import secrets
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from engine import leftovers
from engine import overlay as overlay_files
from engine.errors import EngramError, OtherProfile
from engine.overlay import ForeignOverlay, Manifest, OverlayError, SparseOverlay
from engine.runtime import Runtime
from store import paths
from store.records import UNUSABLE_OVERLAY_STATUSES, OverlayVersion, Profile
from store.store import Store

if TYPE_CHECKING:
    from engine.cells import CellRule

Recorded = TypeVar("Recorded", OverlayVersion, OverlayVersion | None)

GGUF_FILE = "lora.gguf"  # the llama.cpp export, cached next to the version's own files


class OverlayMemory:
    """The overlay versions of one profile, applied to one running model.

    Construction applies the profile's active version for this model (each base model, by
    its sha256, has its own versions and its own active one). A damaged one is marked broken
    and the newest good ancestor is used instead; one whose files turn out foreign (learned on
    another base model) is left as it is and the model runs on base weights. Either way
    ``problem`` says so.
    """

    def __init__(self, store: Store, home: Path, profile: Profile, runtime: Runtime):
        self.store, self.home, self.profile, self.runtime = store, Path(home), profile, runtime
        self.base_sha256 = runtime.model.sha256
        self.directory = paths.overlays(self.home, profile.name)
        self.applied: OverlayVersion | None = None  # what the runtime computes with
        # the applied version's learned read of the cells (None: none), and its rule's key
        self.cell_gates: np.ndarray | None = None
        self.cell_rule: str | None = None
        self.problem = ""
        self._refused: int | None = None  # the stored version ``follow`` could not apply
        self._lock = threading.RLock()
        if not store.read_only:  # what a killed commit or save left (nothing, if read-only)
            leftovers.tidy(store, self.home, profile)
        self._start()

    def _start(self) -> None:
        version = self.store.active_overlay(self.profile.id, self.base_sha256)
        problems, broken = [], False
        while version is not None:
            try:
                self._apply(self.home / version.path)
                break
            except (ForeignOverlay, OSError) as exc:  # fine files, wrong model or full disk
                problems.append(f"overlay v{version.id} is not in use: {exc}")
                version = None
            except EngramError as exc:
                self.store.set_overlay_status(version.id, "broken", str(exc))
                problems.append(f"overlay v{version.id} was set aside: {exc}")
                broken, version = True, self._last_good(version.parent_id)
        if version is None:
            self._apply(None)
        if broken:
            self.store.set_active_overlay(self.profile.id, self.base_sha256,
                                          version.id if version else None)
        self.applied, self.problem = version, " ".join(problems)

    # -- reading -------------------------------------------------------------------

    def versions(self) -> list[OverlayVersion]:
        """The profile's versions for this model, newest first."""
        return self.store.overlay_versions(self.profile.id, self.base_sha256)

    def load(self, version: OverlayVersion) -> SparseOverlay:
        """A version's overlay, checked (for the learner to build on)."""
        return overlay_files.load(self.home / version.path, self.base_sha256)

    def current(self) -> SparseOverlay | None:
        """The overlay the model runs with now (None: base weights)."""
        with self._lock:
            return None if self.applied is None else self.load(self.applied)

    def lora(self, version: OverlayVersion) -> tuple[Path, float]:
        """A version as llama.cpp applies it: its GGUF LoRA (written on first use) and scale,
        for other llama.cpp contexts (scoring, probes)."""
        return self._lora(self.home / version.path)

    @contextmanager
    def trying(self, version: OverlayVersion | None) -> Iterator[None]:
        """Run the model on another version (None: base weights) for a while, e.g. to show
        answers before and after a change; the applied version comes back afterwards."""
        with self._lock:
            self._apply(self.home / version.path if version else None)
            try:
                yield
            finally:
                self._apply(self.home / self.applied.path if self.applied else None)

    # -- changing ------------------------------------------------------------------

    def commit(self, overlay: SparseOverlay, metrics: dict | None = None,
               sessions: list[int] | None = None) -> OverlayVersion:
        """Store an accepted overlay as a new version and make it the active one."""
        with self._lock:
            directory, manifest = self._save(overlay, metrics, sessions)
            try:
                return self._switch(directory, lambda: self._record(directory, manifest, "active"))
            except BaseException:
                shutil.rmtree(directory, ignore_errors=True)
                raise

    @contextmanager
    def together(self) -> Iterator[None]:
        """One store transaction around a commit and the store changes it depends on (an
        import's sessions, which its blocks name): all are stored or none, even if the process
        dies; after a failure the model runs the version stored as active again."""
        with self._lock:
            previous = self.applied
            try:
                with self.store.transaction():
                    yield
            except BaseException:
                committed = self.applied
                if committed is not None and committed is not previous:  # not stored after all
                    shutil.rmtree(self.home / committed.path, ignore_errors=True)
                    self._apply(self.home / previous.path if previous else None)
                    self.applied = previous
                raise

    def record_rejected(self, overlay: SparseOverlay, reason: str, metrics: dict | None = None,
                        sessions: list[int] | None = None) -> OverlayVersion:
        """Keep an overlay the locality gate refused, with the reason; it is never activated."""
        with self._lock:
            directory, manifest = self._save(overlay, metrics, sessions)
            try:
                return self._record(directory, manifest, "rejected", reason)
            except BaseException:
                shutil.rmtree(directory, ignore_errors=True)
                raise

    def activate(self, version_id: int) -> OverlayVersion:
        """Switch the running model to a stored version (hot swap, no reload)."""
        with self._lock:
            version = self.store.overlay_version(version_id)
            if version.profile_id != self.profile.id:
                raise OtherProfile(f"overlay version {version_id} belongs to another profile")
            if version.status in UNUSABLE_OVERLAY_STATUSES:
                raise OverlayError(f"overlay version {version_id} is {version.status} "
                                   f"({version.reason}); it cannot be activated")

            def record() -> OverlayVersion:
                self.store.set_active_overlay(self.profile.id, self.base_sha256, version_id)
                return self.store.overlay_version(version_id)

            return self._switch(self.home / version.path, record)

    def deactivate(self) -> None:
        """Run on the base weights (exactly: llama.cpp then computes bit-identical logits)."""
        with self._lock:
            self._switch(None, lambda: self.store.set_active_overlay(self.profile.id,
                                                                     self.base_sha256, None))

    def follow(self) -> bool:
        """Run the version stored as active when another process changed it (a ``memory
        learn`` beside a chat): the store is read, never written. False when that version
        cannot be applied: the model keeps the one it runs, and ``problem`` says why."""
        with self._lock:
            stored = self.store.active_overlay(self.profile.id, self.base_sha256)
            if stored and stored.id == self._refused:
                return False  # its files were checked once: not read again before every reply
            if (stored and stored.id) != (self.applied and self.applied.id):
                try:
                    self._switch(self.home / stored.path if stored else None, lambda: stored)
                except (EngramError, OSError) as exc:
                    assert stored is not None  # the base weights always apply
                    self.problem = f"overlay v{stored.id} is not in use: {exc}"
                    self._refused = stored.id
                    return False
            return True

    def rollback(self, version_id: int | None = None) -> OverlayVersion | None:
        """Go back to ``version_id``, or by default to the active version's last good parent
        (none left: base weights). Returns the version now active."""
        with self._lock:
            if version_id is not None:
                return self.activate(version_id)
            if self.applied is None:
                raise OverlayError("no overlay is active: there is nothing to roll back")
            target = self._last_good(self.applied.parent_id)
            if target is None:
                self.deactivate()
                return None
            return self.activate(target.id)

    # -- internals -----------------------------------------------------------------

    def _save(self, overlay: SparseOverlay, metrics: dict | None,
              sessions: list[int] | None) -> tuple[Path, Manifest]:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        directory = self.directory / f"{stamp}-{secrets.token_hex(3)}"
        manifest = overlay_files.save(overlay, directory, sessions=sessions, metrics=metrics,
                                      parent_version=self.applied.id if self.applied else None)
        return directory, manifest

    def _record(self, directory: Path, manifest: Manifest, status: str,
                reason: str | None = None) -> OverlayVersion:
        return self.store.add_overlay_version(
            self.profile.id, directory.relative_to(self.home).as_posix(), manifest.base_sha256,
            parent_id=manifest.parent_version, sessions=manifest.sessions,
            metrics=manifest.metrics, status=status, reason=reason,
            trainable_params=manifest.trainable_params,
            bytes=sum((directory / name).stat().st_size
                      for name in (overlay_files.TENSORS_FILE, overlay_files.MANIFEST_FILE)),
        )

    def _switch(self, directory: Path | None, record: Callable[[], Recorded]) -> Recorded:
        """Apply to the model, then record; if recording fails, put the model back."""
        previous = self.applied
        self._apply(directory)
        try:
            version = record()
        except BaseException:
            self._apply(self.home / previous.path if previous else None)
            raise
        self.applied, self.problem = version, ""
        return version

    def _apply(self, directory: Path | None) -> None:
        if directory is None:
            self.runtime.set_overlay(None)
            self.cell_gates = self.cell_rule = None
            return
        overlay = overlay_files.load(directory, self.base_sha256)
        self.runtime.set_overlay(*self._lora(directory, overlay))
        self.cell_gates, self.cell_rule = overlay.cell_gates, overlay.cell_rule

    def cell_gates_for(self, rule: CellRule) -> np.ndarray | None:
        """The applied version's read gates if they read ``rule``'s cells (gates learned on
        another prompt format would misread them: None until the read is learned again)."""
        return self.cell_gates if rule.reads_with(self.cell_rule) else None

    def _lora(self, directory: Path, overlay: SparseOverlay | None = None) -> tuple[Path, float]:
        overlay = overlay or overlay_files.load(directory, self.base_sha256)
        gguf = directory / GGUF_FILE
        if not gguf.exists():
            overlay_files.write_gguf_lora(overlay, gguf, self.runtime.model.architecture)
        return gguf, overlay.scale

    def _last_good(self, version_id: int | None) -> OverlayVersion | None:
        """The nearest usable version along the parent chain."""
        while version_id is not None:
            version = self.store.overlay_version(version_id)
            if version.status not in UNUSABLE_OVERLAY_STATUSES:
                return version
            version_id = version.parent_id
        return None
