"""A session's latent state, saved and restored: its cells and a snapshot of llama.cpp's KV cache.

After each reply the context's state (KV cache of every layer) and the token ids it covers
are written to ``<home>/profiles/<profile>/sessions/<id>.kv`` (``atomic_write``)
and recorded in the store with what computed them: the model's sha256, the active overlay
version, the cells' digest and the file format. Opening the session later loads it back, so
the next reply evaluates only the new message instead of re-reading the whole history.

A snapshot that does not match (another model or overlay, another Engram or llama.cpp build,
a truncated or damaged file) is refused with a message in ``problems`` and the history is
re-read as if there were none: a snapshot is a cache, never the only copy of anything.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import llama_cpp
import numpy as np

from engine import llama_native
from engine.cells import CellRule, Cells, CellsRefused, CellWriter
from engine.errors import EngramError
from engine.prompt import FittedPrompt, Turn
from engine.runtime import KvSnapshot, Runtime
from store import paths
from store.files import atomic_write, open_private
from store.records import Profile
from store.store import Store

FORMAT = 2
MAGIC = b"ENGRAMKV"
KV_BUDGET_BYTES = 1 << 30  # per profile; the least recently saved snapshots go first
# On: a session that fits its window costs nothing, one that overflows writes its cells, and
# they are read only once the read is learned, for the turns that ask back (the turn gate keeps
# side effects within 5 % in `engram bench cells`).
CELLS_BY_DEFAULT = True


class StateRefused(EngramError):
    """A saved state that must not be loaded; the message says why."""


def kv_file(home: Path, profile: str, session_id: int) -> Path:
    return paths.session_states(home, profile) / f"{session_id}.kv"


def remove_files(home: Path, profile: str, session_id: int) -> None:
    """Delete a session's snapshot file (with the session: it holds the whole dialogue)."""
    kv_file(home, profile, session_id).unlink(missing_ok=True)


def encode(snapshot: KvSnapshot, model_sha256: str, overlay_id: int | None) -> tuple[bytes, str]:
    """The file's bytes and the payload's sha256."""
    tokens = struct.pack(f"<{len(snapshot.tokens)}i", *snapshot.tokens)
    digest = _digest(snapshot.cells_digest, tokens + snapshot.data)
    header = json.dumps({
        "format": FORMAT, "model_sha256": model_sha256, "overlay_id": overlay_id,
        "cells_digest": snapshot.cells_digest, "llama_cpp": llama_cpp.__version__,
        "n_tokens": len(snapshot.tokens), "state_bytes": len(snapshot.data), "sha256": digest,
    }).encode()
    return MAGIC + struct.pack("<I", len(header)) + header + tokens + snapshot.data, digest


def decode(blob: bytes, model_sha256: str, overlay_id: int | None,
           sha256: str | None = None) -> KvSnapshot:
    """Check everything before llama.cpp sees a byte: it trusts what it is given. ``sha256``:
    the payload digest the store recorded."""
    try:
        if blob[:8] != MAGIC:
            raise ValueError("not a session state file")
        (size,) = struct.unpack("<I", blob[8:12])
        head = json.loads(blob[12: 12 + size])
        n, state_bytes, digest = head["n_tokens"], head["state_bytes"], head["sha256"]
        cells_digest = head["cells_digest"]
        if not isinstance(cells_digest, str):
            raise TypeError("its cells digest is not text")
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise StateRefused(f"the saved state is damaged ({exc})") from None
    if head.get("format") != FORMAT:
        raise StateRefused(f"the saved state has format {head.get('format')}, this Engram "
                           f"reads format {FORMAT}")
    if head.get("model_sha256") != model_sha256:
        raise StateRefused(f"the saved state belongs to another model "
                           f"(sha256 {str(head.get('model_sha256'))[:12]}…)")
    if head.get("overlay_id") != overlay_id:
        raise StateRefused(f"the saved state was computed with overlay "
                           f"{_version(head.get('overlay_id'))}, the model now runs "
                           f"{_version(overlay_id)}")
    if head.get("llama_cpp") != llama_cpp.__version__:
        raise StateRefused(f"the saved state was written by llama.cpp bindings "
                           f"{head.get('llama_cpp')}, these are {llama_cpp.__version__}")
    payload = memoryview(blob)[12 + size:]
    if len(payload) != 4 * n + state_bytes:
        raise StateRefused(f"the saved state is truncated ({len(payload):,} of "
                           f"{4 * n + state_bytes:,} bytes)")
    if _digest(cells_digest, payload) != digest:
        raise StateRefused("the saved state is damaged (checksum mismatch)")
    if sha256 is not None and digest != sha256:
        raise StateRefused("the saved state is not the one the store recorded")
    tokens = list(struct.unpack(f"<{n}i", payload[: 4 * n]))
    return KvSnapshot(tokens, bytes(payload[4 * n:]), cells_digest)


def _digest(cells_digest: str, payload: bytes | memoryview) -> str:
    """The sha256 of everything a snapshot carries: the cells it was computed with (format 2:
    a flipped bit there was not seen by format 1's checksum), its tokens and llama.cpp's state."""
    h = hashlib.sha256(cells_digest.encode("utf-8", "surrogatepass") + b"\0")
    h.update(payload)
    return h.hexdigest()


def _version(overlay_id: int | None) -> str:
    return "none" if overlay_id is None else f"v{overlay_id}"


class SessionStates:
    """The saved state of one profile's sessions, bound to the running model.

    ``overlay_id()`` says which overlay version the model computes with now, ``gates(rule)``
    the cells' learned read strengths that version carries for this rule's cells (None: cells
    are written, not read).
    ``problems`` holds, per session, why its saved state was not used (shown by the UI).
    """

    def __init__(self, store: Store, home: Path, profile: Profile, runtime: Runtime,
                 overlay_id=lambda: None, gates=lambda rule: None, rule: CellRule | None = None):
        self.store, self.home, self.profile, self.runtime = store, Path(home), profile, runtime
        self.overlay_id, self.gates = overlay_id, gates
        self.n_layer = llama_native.n_layer(runtime.llm)
        self.writer = CellWriter(runtime, rule or CellRule())
        self.rule = self.writer.rule
        self.directory = paths.session_states(self.home, profile.name)
        self.problems: dict[int, str] = {}
        self._cells: dict[int, Cells] = {}

    def key(self, session_id: int) -> tuple[int, int]:
        """The runtime's ``kv_owner`` for a session (profiles never share one)."""
        return (self.profile.id, session_id)

    # -- KV snapshots ------------------------------------------------------------------------

    def save(self, session_id: int) -> bool:
        """Snapshot the context after a reply (False if it holds another dialogue)."""
        snapshot = self.runtime.snapshot(self.key(session_id))
        if snapshot is None:
            return False
        overlay_id = self.overlay_id()
        blob, digest = encode(snapshot, self.runtime.model.sha256, overlay_id)
        path = kv_file(self.home, self.profile.name, session_id)

        def write(tmp: Path) -> None:
            with open_private(tmp) as fh:
                fh.write(blob)

        atomic_write(path, write)
        self.store.save_session_kv(session_id, path.relative_to(self.home).as_posix(),
                                   self.runtime.model.sha256, overlay_id, FORMAT,
                                   len(snapshot.tokens), len(blob), digest)
        self._prune()
        return True

    def restore(self, session_id: int) -> bool:
        """Load the session's snapshot into the context; False (and ``problems``) if refused."""
        state = self.store.session_state(session_id)
        if state is None or state.kv_path is None:
            return False
        try:
            if state.kv_format != FORMAT:
                raise StateRefused(f"the saved state has format {state.kv_format}, this Engram "
                                   f"reads format {FORMAT}")
            try:
                blob = (self.home / state.kv_path).read_bytes()
            except OSError as exc:
                raise StateRefused(f"the saved state cannot be read ({exc.strerror})") from None
            snapshot = decode(blob, self.runtime.model.sha256, self.overlay_id(), state.kv_sha256)
            self.runtime.restore(self.key(session_id), snapshot)
        except EngramError as exc:
            self.problems[session_id] = f"session {session_id}: history re-read, because {exc}"
            return False
        self.problems.pop(session_id, None)
        return True

    def _prune(self) -> None:
        states = self.store.session_kv_states(self.profile.id)
        total = sum(s.kv_bytes or 0 for s in states)
        for state in states[:-1]:  # never the one just saved
            if total <= KV_BUDGET_BYTES:
                break
            remove_files(self.home, self.profile.name, state.session_id)
            self.store.clear_session_kv(state.session_id)
            total -= state.kv_bytes or 0

    # -- cells -------------------------------------------------------------------------------

    def cells(self, session_id: int) -> Cells:
        """The session's cells (empty if none are saved or the saved ones are refused)."""
        if session_id not in self._cells:
            state = self.store.session_state(session_id)
            cells = None
            if state is not None and state.cells is not None:
                try:
                    cells = Cells.from_bytes(state.cells, self.runtime.model.sha256, self.rule)
                except CellsRefused as exc:
                    self.problems[session_id] = f"session {session_id}: {exc}"
            cells = cells or Cells.empty(self.rule, self.n_layer, self.runtime.llm.n_embd(),
                                         self.runtime.model.sha256)
            cells.enabled = CELLS_BY_DEFAULT if state is None or state.cells_enabled is None \
                else state.cells_enabled
            self._cells[session_id] = cells
        return self._cells[session_id]

    def _save_cells(self, session_id: int) -> None:
        cells = self.cells(session_id)
        self.store.save_session_cells(session_id, cells.enabled,
                                      cells.to_bytes() if cells.folded else None)

    def set_cells_enabled(self, session_id: int, enabled: bool) -> None:
        self.cells(session_id).enabled = enabled
        self._save_cells(session_id)

    def reset_cells(self, session_id: int) -> None:
        """Empty the session's cells: turns already out of the window are not written again."""
        cells = self.cells(session_id)
        folded = cells.folded
        cells.reset()
        cells.folded = folded
        self._save_cells(session_id)

    def magnitudes(self, session_id: int) -> list[float]:
        cells = self.cells(session_id)
        if not cells.count:
            return []
        return cells.magnitudes(self.gates(self.rule), self.writer.baseline())

    # -- around a reply ------------------------------------------------------------------------

    def prepare(self, session_id: int, turns: list[Turn], prompt: FittedPrompt) -> None:
        """Before a reply (under the runtime's lock): write the turns that have just left the
        window into the cells, set the control vector, restore the saved KV cache if the
        context holds something else."""
        cells = self.cells(session_id)
        if cells.enabled and prompt.dropped_turns > cells.folded:
            self.writer.fold(cells, turns, cells.folded, prompt.dropped_turns)
            self._save_cells(session_id)
        self.runtime.set_cells(self._read(cells, turns, prompt))
        if self.runtime.kv_owner != self.key(session_id):
            self.restore(session_id)

    def _read(self, cells: Cells, turns: list[Turn], prompt: FittedPrompt) -> np.ndarray | None:
        """This reply's control vector: the cells' read, if turns are out of the window, the
        read is learned, and the user's message is about what the cells hold."""
        gates = self.gates(self.rule)
        if (not cells.enabled or prompt.dropped_turns == 0 or cells.count <= 0 or gates is None
                or not turns or turns[-1].role != "user"):
            return None
        baseline = self.writer.baseline()
        relevance = cells.relevance(self.writer.query(turns[-1].content), self.rule, baseline)
        return cells.read(gates, baseline) if relevance > self.rule.tau else None

    def close(self) -> None:
        self.writer.close()

