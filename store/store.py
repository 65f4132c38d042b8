"""The one store: a single SQLite connection (WAL) with typed accessors."""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import shutil
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils
from sqlite_utils.db import Table

from store import checksums, files, migrations
from store.migrations import LATEST, UPGRADES
from store.records import (
    OVERLAY_STATUSES,
    UNUSABLE_OVERLAY_STATUSES,
    Message,
    OverlayVersion,
    Profile,
    Session,
    SessionState,
)


class StoreError(Exception):
    """The database cannot be used; the message says what to do."""


class DamagedDatabase(StoreError):
    """The database file is damaged. At start-up it has been moved aside (``quarantined``, the
    new path); found later, while reading, it is left where it is."""

    def __init__(self, message: str, quarantined: Path | None = None):
        super().__init__(message)
        self.quarantined = quarantined


SQLITE_HEADER = b"SQLite format 3\x00"
_CORRUPT = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}  # primary codes; extended ones add a suffix


def damage_of(exc: BaseException) -> bool:
    """Whether an exception from reading the database means the file is damaged (not locked,
    not full, not a bug): SQLite's CORRUPT/NOTADB, or text that is not UTF-8."""
    if isinstance(exc, UnicodeDecodeError):
        return True
    if not isinstance(exc, sqlite3.DatabaseError) or isinstance(exc, sqlite3.IntegrityError):
        return False
    name = getattr(exc, "sqlite_errorname", None) or ""
    return (any(name == c or name.startswith(c + "_") for c in _CORRUPT)
            or "malformed" in str(exc) or "Could not decode to UTF-8" in str(exc))


LOW_SPACE = 1 << 20  # bytes free below which an I/O error is taken for a full disk


def storage_problem(path: Path, exc: BaseException) -> str | None:
    """What is wrong with the place the database lives rather than with the database — a full
    disk or a home that cannot be written (SQLite reports a full disk met while growing its
    WAL index as a plain I/O error) — in words for the user; None for anything else."""
    name = getattr(exc, "sqlite_errorname", None) or ""
    where = path.parent
    if (exc.errno if isinstance(exc, OSError) else None) == errno.ENOSPC or name.startswith(
            "SQLITE_FULL") or (name.startswith("SQLITE_IOERR") and _low_on_space(where)):
        return (f"no space left on the disk that holds {where}: free some space and try again "
                "(nothing already saved was changed)")
    return unwritable_message(where) if _unwritable(path, exc) else None


def _unwritable(path: Path, exc: BaseException) -> bool:
    name = getattr(exc, "sqlite_errorname", None) or ""
    return ((exc.errno if isinstance(exc, OSError) else None) in (errno.EROFS, errno.EACCES)
            or name.startswith("SQLITE_READONLY")
            or (name.startswith("SQLITE_CANTOPEN") and not os.access(path.parent, os.W_OK)))


def unwritable_message(where: Path) -> str:
    return (f"{where} cannot be written, so Engram cannot save there: make it writable or "
            "choose another home with --home")


def _low_on_space(where: Path) -> bool:
    try:
        return shutil.disk_usage(where).free < LOW_SPACE
    except OSError:
        return False


def _looks_like_sqlite(path: Path) -> bool:
    """A file that is (or was, before being cut short) an SQLite database: Engram's own, so
    quarantining it is right; anything else at that path is only refused."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError:
        return False
    return bool(head) and SQLITE_HEADER.startswith(head)


def quarantine(path: Path) -> Path:
    """Rename a damaged database aside with its -wal and -shm, so SQLite opens the copy with
    its log (``store.files.quarantine``). Returns the new path."""
    return files.quarantine(path, ("-wal", "-shm"))


def damaged_message(path: Path, reason: str, quarantined: Path | None) -> str:
    """One line: what happened, where the file is, what to do."""
    reason = " ".join(reason.split())  # integrity_check's findings may span lines
    reason = reason if len(reason) <= 160 else reason[:160] + "…"
    if quarantined is not None:
        return (f"the database {path} is damaged ({reason}); it was moved aside to "
                f"{quarantined} (nothing deleted). Run engram again to start with a new, empty "
                "database, then restore from an export with `engram memory import FILE`, or "
                f"try salvaging rows with `sqlite3 {quarantined} .recover`")
    return (f"the database {path} is damaged ({reason}); nothing was changed. Quit Engram and "
            f"move {path.name} aside (the next start begins with a new database), then restore "
            "from an export with `engram memory import FILE`")


# integrity_check's findings that name an index, not a page or a row
INDEX_DAMAGE = re.compile(r"(missing from|entries in|non-unique entry in) index ")


def _findings(found: list[str]) -> str:
    return "; ".join(found[:3]) + (" …" if len(found) > 3 else "")


class _Damaged(Exception):
    """integrity_check's findings, inside the store's constructor."""


class _Unwritable(StoreError):
    """The database cannot be written (but can be read), inside the store's constructor."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _insert(table: Table, row: dict) -> int:
    """Insert ``row`` and return its id (every table here has an integer primary key)."""
    row_id = table.insert(row).last_pk
    assert isinstance(row_id, int)
    return row_id


def _restrict(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        p = Path(f"{path}{suffix}")
        if p.exists():
            files.restrict(p, 0o600)


def _shape(conn: sqlite3.Connection) -> dict[str, list[tuple[str, int]]]:
    """Each table's columns as (name, position in the primary key)."""
    tables = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    return {t: [(r[1], r[5]) for r in conn.execute(f'PRAGMA table_info("{t}")')]
            for t in tables}


@functools.cache
def _expected_shape() -> dict[str, list[tuple[str, int]]]:
    """The tables' shape as this Engram's migrations make them (on a scratch in-memory db)."""
    conn = sqlite3.connect(":memory:")
    checksums.register(conn)
    db = sqlite_utils.Database(conn)
    for target in range(1, LATEST + 1):
        UPGRADES[target](db)
    shape = _shape(conn)
    conn.close()
    return shape


class _Guarded:
    """The store's lock, which also turns damage met while reading or writing (SQLite's
    CORRUPT, text that is not UTF-8) into a DamagedDatabase with what to do."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.RLock()

    def __enter__(self) -> None:
        self.lock.acquire()

    def __exit__(self, kind, exc, tb) -> None:  # None: the exception (if any) goes on
        self.lock.release()
        if exc is None or isinstance(exc, StoreError):
            return
        if problem := storage_problem(self.path, exc):
            raise StoreError(problem) from exc
        if damage_of(exc):
            raise DamagedDatabase(damaged_message(self.path, str(exc), None)) from exc


class Store:
    """Profiles, sessions and messages of one Engram home.

    One connection shared by every thread (Textual workers write replies), guarded by a lock.
    A database that cannot be written (a read-only home) is opened for reading: ``read_only``
    then says why nothing can be saved, and every write raises a StoreError that says so.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = _Guarded(self.path)
        self.read_only: str | None = None
        self.repaired: str | None = None  # what opening it mended, to be told to the user
        old_umask = os.umask(0o077)
        try:
            try:
                self._open(self.path)
            except _Unwritable as exc:
                self._open(self._read_only_uri(), read_only=True)
                self.read_only = str(exc)
        finally:
            os.umask(old_umask)
        if self.read_only is None and not os.access(self.path, os.W_OK):
            self.read_only = unwritable_message(self.path.parent)
        if self.read_only is None:
            _restrict(self.path)

    def _read_only_uri(self) -> str:
        """The database opened for reading only. In a directory that cannot be written SQLite
        cannot make the WAL index, so the file is read as immutable: right while no log holds
        transactions not yet in it (if one does, they must not be missed: the log is read)."""
        log = Path(f"{self.path}-wal")
        unfolded = log.exists() and log.stat().st_size > 0
        return self.path.resolve().as_uri() + ("?mode=ro" if unfolded else "?mode=ro&immutable=1")

    def _open(self, target: Path | str, read_only: bool = False) -> None:
        conn = None
        try:
            conn = sqlite3.connect(target, check_same_thread=False, timeout=10, uri=read_only)
            checksums.register(conn)
            self.db = sqlite_utils.Database(conn)
            self._check(read_only)
            self._upgrade()
            self._check_schema()
            if not read_only:
                self.db.enable_wal()
        except (sqlite3.DatabaseError, UnicodeDecodeError, _Damaged) as exc:
            if conn is not None:
                conn.close()
            if problem := storage_problem(self.path, exc):
                if (not read_only and _unwritable(self.path, exc) and self.path.exists()
                        and os.access(self.path, os.R_OK)):
                    raise _Unwritable(problem) from exc
                raise StoreError(problem) from exc
            if (isinstance(exc, _Damaged) or damage_of(exc)) and _looks_like_sqlite(self.path):
                moved = quarantine(self.path)
                raise DamagedDatabase(damaged_message(self.path, str(exc), moved),
                                      moved) from exc
            raise StoreError(
                f"{self.path} is not a readable Engram database ({exc}). "
                "Move it aside or choose another home with --home."
            ) from exc

    # -- schema ---------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def _check(self, read_only: bool) -> None:
        """``PRAGMA integrity_check``: every page and record well formed, and every index entry
        naming its row. A damaged index hides rows from the reads that go through it (a
        session's messages) while each row still matches its own checksum; quick_check, which
        skips that cross-check, let such a database show a chat with messages silently
        missing. 60 ms against quick_check's 37 on a 31 MB database. Damage to indexes alone
        is mended (``_rebuild_indexes``); any other is a _Damaged."""
        found = self._integrity()
        if (found != ["ok"] and not read_only and all(INDEX_DAMAGE.search(f) for f in found)
                and checksums.all_sealed(self.db.conn)):
            found = self._rebuild_indexes(found)
        if found != ["ok"]:
            raise _Damaged(_findings(found))

    def _integrity(self) -> list[str]:
        return [row[0] for row in self.db.execute("PRAGMA integrity_check").fetchall()]

    def _rebuild_indexes(self, found: list[str]) -> list[str]:
        """Only indexes are damaged and every row is whole (``checksums.all_sealed``), so the
        indexes are rebuilt from the rows and nothing is lost. The file as it was is copied
        aside first (SQLite's backup, with what its log holds), never deleted. Returns what
        integrity_check finds after."""
        copy = files.aside_name(self.path, ("", "-wal", "-shm"))
        with closing(sqlite3.connect(copy)) as target:
            self.db.conn.backup(target)
        self.db.execute("REINDEX")
        self.db.conn.commit()
        after = self._integrity()
        if after == ["ok"]:
            self.repaired = (f"the database {self.path} had damaged indexes ({_findings(found)}); "
                             f"they were rebuilt from its rows and nothing was lost (the file as "
                             f"it was is kept at {copy})")
        return after

    def _check_schema(self) -> None:
        """After upgrading: each table has the columns and primary key this Engram's migrations
        make. A flipped bit in the schema text (which integrity_check parses but does not judge)
        can rename a column or drop a primary key, and every later read would be wrong."""
        found = _shape(self.db.conn)
        for table, columns in _expected_shape().items():
            if found.get(table) != columns:
                raise _Damaged(f"the schema of table {table!r} is not the one Engram wrote")

    def _upgrade(self) -> None:
        version = self.schema_version
        if version > LATEST:
            raise StoreError(
                f"{self.path} was written by a newer Engram (schema {version}, this one knows "
                f"up to {LATEST}). Upgrade Engram, or use another home with --home."
            )
        for target in range(version + 1, LATEST + 1):
            with self.db.conn:  # each step and its version number commit together
                self.db.execute("BEGIN IMMEDIATE")
                UPGRADES[target](self.db)
                self.db.execute(f"PRAGMA user_version = {target}")
        self.db.execute("PRAGMA foreign_keys = ON")  # outside a transaction, or it is ignored

    def integrity(self) -> str:
        """SQLite's own check of every page and index: "ok", or what is damaged."""
        with self._lock:
            return "; ".join(self._integrity())

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Changes made inside are stored together or not at all (the accessors' own
        transactions nest in it, as savepoints); other threads wait until it ends.

        Taken at its start (``BEGIN IMMEDIATE``), as every write here: sqlite-utils'
        ``atomic()`` begins a deferred one, whose first read takes a snapshot, and when another
        process commits before its first write SQLite refuses the write at once ("database is
        locked", no busy wait): two chats on one profile lost messages."""
        with self._lock:
            if self.db.conn.in_transaction:
                with self.db.atomic():
                    yield
                return
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self.db.commit()
            except BaseException:  # a failed COMMIT too: else the next write nests in it
                self.db.rollback()
                raise

    def close(self) -> None:
        with self._lock:
            self.db.conn.close()

    # -- profiles -------------------------------------------------------------

    def profile(self, name: str) -> Profile:
        """The named profile, created on first use."""
        with self._lock:
            rows = list(self.db.table("profiles").rows_where("name = ?", [name]))
            if not rows:
                self.db.table("profiles").insert(
                    {"name": name, "created_at": now(), "settings": "{}"})
                rows = list(self.db.table("profiles").rows_where("name = ?", [name]))
            return _profile(self._checked("profiles", rows[0]))

    def profiles(self) -> list[Profile]:
        with self._lock:
            return [_profile(self._checked("profiles", r))
                    for r in self.db.table("profiles").rows_where(order_by="id")]

    def _checked(self, table: str, row: dict) -> dict:
        """``row`` if it matches its checksum; a DamagedDatabase otherwise."""
        if not checksums.sealed(table, row):
            key = checksums.SEALED_COLUMNS[table][0]
            raise DamagedDatabase(damaged_message(
                self.path, f"row {row.get(key)} of {table} does not match its checksum", None))
        return row

    def save_settings(self, profile_id: int, settings: dict) -> None:
        with self.transaction():
            self.db.table("profiles").update(profile_id, {"settings": json.dumps(settings)})

    # -- sessions -------------------------------------------------------------

    def new_session(self, profile_id: int, model: str, title: str = "New session",
                    system_prompt: str | None = None, private: bool = False) -> Session:
        with self.transaction():
            stamp = now()
            row_id = _insert(self.db.table("sessions"), {
                "profile_id": profile_id, "title": title, "created_at": stamp,
                "updated_at": stamp, "model": model, "system_prompt": system_prompt,
                "private": int(private),
            })
        return self.session(row_id)

    def add_sessions(self, profile_id: int, sessions: list[dict]) -> list[int]:
        """Insert whole sessions at once (an import), in one transaction: each dict holds a
        session's fields, its ``messages`` (dicts of Message fields but the ids) and its
        ``cells_enabled``/``cells``. Returns the new ids, in order."""
        ids = []
        with self.transaction():
            for s in sessions:
                session_id = _insert(self.db.table("sessions"), {
                    "profile_id": profile_id, "title": s["title"], "created_at": s["created_at"],
                    "updated_at": s["updated_at"], "model": s["model"],
                    "system_prompt": s["system_prompt"], "private": int(s["private"]),
                })
                self.db.table("messages").insert_all(
                    {**m, "session_id": session_id} for m in s["messages"])
                self.db.execute(checksums.SEAL + "WHERE session_id = ?", [session_id])
                if s["cells_enabled"] is not None or s["cells"] is not None:
                    self.db.table("session_states").insert({
                        "session_id": session_id, "cells": s["cells"],
                        "cells_enabled": None if s["cells_enabled"] is None
                        else int(s["cells_enabled"])})
                ids.append(session_id)
        return ids

    def session(self, session_id: int) -> Session:
        with self._lock:
            rows = self._session_rows("s.id = ?", [session_id])
        if not rows:
            raise StoreError(f"no session {session_id}")
        return rows[0]

    def sessions(self, profile_id: int, search: str | None = None) -> list[Session]:
        """Sessions of a profile, newest first; ``search`` matches titles and message text."""
        where = "s.profile_id = ?"
        params: list[object] = [profile_id]
        if search:
            where += (" AND (s.title LIKE ? OR EXISTS (SELECT 1 FROM messages m2 "
                      "WHERE m2.session_id = s.id AND m2.content LIKE ?))")
            params += [f"%{search}%", f"%{search}%"]
        with self._lock:
            return self._session_rows(where, params)

    def _session_rows(self, where: str, params: list) -> list[Session]:
        sql = (
            "SELECT s.*, (SELECT count(*) FROM messages m WHERE m.session_id = s.id) AS n "
            f"FROM sessions s WHERE {where} ORDER BY s.updated_at DESC, s.id DESC"
        )
        cursor = self.db.execute(sql, params)
        names = [d[0] for d in cursor.description]
        return [_session(self._checked("sessions", dict(zip(names, row, strict=True))))
                for row in cursor.fetchall()]

    def update_session(self, session_id: int, **fields) -> Session:
        """Change title, system_prompt or private of a session."""
        allowed = {"title", "system_prompt", "private"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"cannot update {sorted(unknown)}")
        with self.transaction():
            self.db.table("sessions").update(session_id, {**fields, "updated_at": now()})
        return self.session(session_id)

    def delete_session(self, session_id: int) -> None:
        """The session, its messages and its state (the schema cascades)."""
        with self.transaction():
            self.db.execute("DELETE FROM sessions WHERE id = ?", [session_id])

    # -- messages -------------------------------------------------------------

    def add_message(self, session_id: int, role: str, content: str,
                    status: str = "complete", **stats) -> Message:
        """Commit a message now (a user message is committed before generation starts), its
        checksum in the same transaction: sqlite-utils' insert commits on its own outside one,
        and a process killed before the seal left a row that read as damaged."""
        with self.transaction():
            stamp = now()
            row_id = _insert(self.db.table("messages"), {
                "session_id": session_id, "role": role, "content": content,
                "status": status, "created_at": stamp, **stats,
            })
            self._seal(row_id)
            self.db.table("sessions").update(session_id, {"updated_at": stamp})
        return self.message(row_id)

    def finish_message(self, message_id: int, content: str, status: str, **stats) -> Message:
        """Store a reply's final text: ``complete``, ``partial`` (stopped) or ``error``, with
        its checksum, in one transaction (as ``add_message``)."""
        with self.transaction():
            self.db.table("messages").update(
                message_id, {"content": content, "status": status, **stats})
            self._seal(message_id)
        return self.message(message_id)

    def _seal(self, message_id: int) -> None:
        """Write a message's checksum (in the caller's transaction), from what SQLite stored."""
        self.db.execute(checksums.SEAL + "WHERE id = ?", [message_id])

    def message(self, message_id: int) -> Message:
        with self._lock:
            return self._verified(self.db.table("messages").get(message_id))

    def messages(self, session_id: int) -> list[Message]:
        with self._lock:
            rows = self.db.table("messages").rows_where("session_id = ?", [session_id],
                                                        order_by="id")
            return [self._verified(r) for r in rows]

    def _verified(self, row: dict) -> Message:
        """The message of a row whose checksum matches; a DamagedDatabase otherwise."""
        if not checksums.row_matches(row):
            raise DamagedDatabase(damaged_message(
                self.path, f"message {row['id']} of session {row['session_id']} does not match "
                "its checksum", None))
        return _message(row)

    def last_user_message_ids(self, profile_id: int) -> dict[int, int]:
        """Per session of a profile, the id of its newest user message (sessions without one
        are left out): what the learner compares with what it has already learned."""
        with self._lock:
            rows = self.db.execute(
                "SELECT m.session_id, max(m.id) FROM messages m JOIN sessions s "
                "ON s.id = m.session_id WHERE s.profile_id = ? AND m.role = 'user' "
                "GROUP BY m.session_id", [profile_id]).fetchall()
        return dict(rows)

    def delete_message(self, message_id: int) -> None:
        with self.transaction():
            self.db.execute("DELETE FROM messages WHERE id = ?", [message_id])

    # -- session state (cells, KV snapshot) ----------------------------------

    def session_state(self, session_id: int) -> SessionState | None:
        with self._lock:
            rows = list(self.db.table("session_states").rows_where("session_id = ?", [session_id]))
        return _session_state(self._checked("session_states", rows[0])) if rows else None

    def save_session_cells(self, session_id: int, enabled: bool, cells: bytes | None) -> None:
        with self.transaction():
            self.db.table("session_states").upsert(
                {"session_id": session_id, "cells_enabled": int(enabled), "cells": cells},
                pk="session_id")

    def save_session_kv(self, session_id: int, path: str, model_sha256: str,
                        overlay_id: int | None, format: int, tokens: int, bytes: int,
                        sha256: str) -> None:
        """Record a KV snapshot whose file is already in place (replacing the previous one)."""
        with self.transaction():
            self.db.table("session_states").upsert(
                {"session_id": session_id, "kv_path": path, "kv_model_sha256": model_sha256,
                 "kv_overlay_id": overlay_id, "kv_format": format, "kv_tokens": tokens,
                 "kv_bytes": bytes, "kv_sha256": sha256, "kv_saved_at": now()},
                pk="session_id")

    def clear_session_kv(self, session_id: int) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE session_states SET kv_path = NULL, kv_model_sha256 = NULL, "
                "kv_overlay_id = NULL, kv_format = NULL, kv_tokens = NULL, kv_bytes = NULL, "
                "kv_sha256 = NULL, kv_saved_at = NULL WHERE session_id = ?", [session_id])

    def session_kv_states(self, profile_id: int) -> list[SessionState]:
        """A profile's sessions that have a KV snapshot, least recently saved first."""
        with self._lock:
            cursor = self.db.execute(
                "SELECT st.* FROM session_states st JOIN sessions s ON s.id = st.session_id "
                "WHERE s.profile_id = ? AND st.kv_path IS NOT NULL ORDER BY st.kv_saved_at",
                [profile_id])
            names = [d[0] for d in cursor.description]
            return [_session_state(self._checked("session_states", dict(zip(names, row,
                                                                              strict=True))))
                    for row in cursor.fetchall()]

    # -- overlay versions -----------------------------------------------------
    # transaction(), not db.conn: sqlite-utils commits each insert/update of its own otherwise.

    def add_overlay_version(self, profile_id: int, path: str, base_sha256: str, *,
                            parent_id: int | None = None, sessions: Sequence[int] = (),
                            metrics: dict | None = None, status: str = "accepted",
                            reason: str | None = None, trainable_params: int = 0,
                            bytes: int = 0) -> OverlayVersion:
        """Record a version whose files are already in place. Status "active" also makes it
        the active version of its base model, in the same transaction."""
        if status not in OVERLAY_STATUSES:
            raise ValueError(f"status must be one of {OVERLAY_STATUSES}, not {status!r}")
        metrics = dict(metrics or {})
        learned, dropped = metrics.pop("learned", {}), metrics.pop("dropped", {})
        with self.transaction():
            row_id = _insert(self.db.table("overlay_versions"), {
                "profile_id": profile_id, "parent_id": parent_id, "created_at": now(),
                "path": path, "base_sha256": base_sha256,
                "sessions_json": json.dumps(sorted(sessions)),
                "metrics_json": json.dumps(metrics),
                "status": "accepted" if status == "active" else status, "reason": reason,
                "trainable_params": trainable_params, "bytes": bytes,
            })
            for row in migrations.learn_rows(row_id, learned, dropped):
                self.db.execute(migrations.LEARN_RECORD_INSERT, row)
            if status == "active":
                self._activate(profile_id, base_sha256, row_id)
        return self.overlay_version(row_id)

    def overlay_version(self, version_id: int) -> OverlayVersion:
        with self._lock:
            rows = list(self.db.table("overlay_versions").rows_where("id = ?", [version_id]))
            if not rows:
                raise StoreError(f"no overlay version {version_id}")
            return _overlay_version(self._checked("overlay_versions", rows[0]),
                                    self._learn_records("r.version_id = ?", [version_id]))

    def overlay_versions(self, profile_id: int,
                         base_sha256: str | None = None) -> list[OverlayVersion]:
        """A profile's versions learned on one base model (None: on any), newest first."""
        where = "v.profile_id = ?"
        params: list[int | str] = [profile_id]
        if base_sha256 is not None:
            where += " AND v.base_sha256 = ?"
            params.append(base_sha256)
        with self._lock:
            rows = list(self.db.query(f"SELECT v.* FROM overlay_versions v WHERE {where} "
                                      "ORDER BY v.id DESC", params))
            records = self._learn_records(where, params)
            return [_overlay_version(self._checked("overlay_versions", r), records)
                    for r in rows]

    def decided_through(self, profile_id: int, base_sha256: str) -> dict[int, int]:
        """Per session of a profile, the newest user message that one of its versions on this
        base model learned, tried to learn, or dropped, or that any of its versions forgot:
        anything newer is still for this model to learn. Each model keeps its own memory, so
        what another model learned (or reset) does not count; a forgotten session is
        forgotten for every model, so no model learns what the user asked to have forgotten
        (a forget is the version whose ``event`` is "forget")."""
        with self._lock:
            return dict(self.db.execute(
                "SELECT r.session_id, max(r.through) FROM learn_records r JOIN overlay_versions v "
                "ON v.id = r.version_id WHERE v.profile_id = ? AND (v.base_sha256 = ? OR "
                "(r.kind = 'dropped' AND json_extract(v.metrics_json, '$.event') = 'forget')) "
                "GROUP BY r.session_id", [profile_id, base_sha256]).fetchall())

    def versions_learning(self, session_id: int) -> list[int]:
        """The ids of the versions that learned (or tried to learn) a session, newest first."""
        with self._lock:
            return [row[0] for row in self.db.execute(
                "SELECT version_id FROM learn_records WHERE session_id = ? AND kind = 'learned' "
                "ORDER BY version_id DESC", [session_id]).fetchall()]

    def _learn_records(self, where: str, params: list) -> dict[int, list[tuple]]:
        """Per version, its (session, kind, through, record) rows, for ``_overlay_version``."""
        out: dict[int, list[tuple]] = {}
        cursor = self.db.execute("SELECT r.* FROM learn_records r JOIN overlay_versions v "
                                 f"ON v.id = r.version_id WHERE {where} ORDER BY r.id", params)
        names = [d[0] for d in cursor.description]
        for values in cursor.fetchall():
            r = self._checked("learn_records", dict(zip(names, values, strict=True)))
            out.setdefault(r["version_id"], []).append(
                (r["session_id"], r["kind"], r["through"], r["record_json"]))
        return out

    def active_overlay(self, profile_id: int, base_sha256: str) -> OverlayVersion | None:
        """The version a base model runs with in this profile (None: its base weights)."""
        with self._lock:
            row = self.db.execute("SELECT id FROM overlay_versions WHERE profile_id = ? AND "
                                  "base_sha256 = ? AND status = 'active'",
                                  [profile_id, base_sha256]).fetchone()
            return None if row is None else self.overlay_version(row[0])

    def set_active_overlay(self, profile_id: int, base_sha256: str,
                           version_id: int | None) -> None:
        """Make a version the active one of its base model (None: none); the one it replaces
        becomes superseded. Other base models' active versions stay."""
        with self.transaction():
            self._activate(profile_id, base_sha256, version_id)

    def set_overlay_status(self, version_id: int, status: str, reason: str | None) -> None:
        """Mark a version rejected, broken, accepted…; one that was active stops being so."""
        if status == "active" or status not in OVERLAY_STATUSES:
            raise ValueError(f"cannot set status {status!r} here (activate: set_active_overlay)")
        with self.transaction():
            self.overlay_version(version_id)  # StoreError for a version that is not there
            self.db.table("overlay_versions").update(
                version_id, {"status": status, "reason": reason})

    def _activate(self, profile_id: int, base_sha256: str, version_id: int | None) -> None:
        if version_id is not None:
            version = self.overlay_version(version_id)
            if version.profile_id != profile_id:
                raise StoreError(f"overlay version {version_id} belongs to another profile")
            if version.base_sha256 != base_sha256:
                raise StoreError(f"overlay version {version_id} was learned on another model")
            if version.status in UNUSABLE_OVERLAY_STATUSES:
                raise StoreError(f"overlay version {version_id} is {version.status} "
                                 f"({version.reason}); it cannot be activated")
        self.db.execute("UPDATE overlay_versions SET status = 'superseded' WHERE profile_id = ? "
                        "AND base_sha256 = ? AND status = 'active'", [profile_id, base_sha256])
        if version_id is not None:
            self.db.table("overlay_versions").update(version_id, {"status": "active"})


def _overlay_version(row: dict, records: dict[int, list[tuple]]) -> OverlayVersion:
    mine = records.get(row["id"], [])
    return OverlayVersion(
        id=row["id"], profile_id=row["profile_id"], parent_id=row["parent_id"],
        created_at=row["created_at"], path=row["path"], base_sha256=row["base_sha256"],
        sessions=json.loads(row["sessions_json"]), metrics=json.loads(row["metrics_json"]),
        status=row["status"], reason=row["reason"], trainable_params=row["trainable_params"],
        bytes=row["bytes"],
        learned={sid: {**json.loads(record), "through": through}
                 for sid, kind, through, record in mine if kind == "learned"},
        dropped={sid: through for sid, kind, through, _ in mine if kind == "dropped"},
    )


def _session_state(row: dict) -> SessionState:
    enabled = row["cells_enabled"]
    return SessionState(**{**{k: row[k] for k in SessionState.__dataclass_fields__},
                           "cells_enabled": None if enabled is None else bool(enabled)})


def _profile(row: dict) -> Profile:
    return Profile(id=row["id"], name=row["name"], created_at=row["created_at"],
                   settings=json.loads(row.get("settings") or "{}"))


def _session(row: dict) -> Session:
    return Session(
        id=row["id"], profile_id=row["profile_id"], title=row["title"],
        created_at=row["created_at"], updated_at=row["updated_at"], model=row["model"] or "",
        system_prompt=row["system_prompt"], private=bool(row["private"]),
        message_count=row.get("n", 0),
    )


def _message(row: dict) -> Message:
    return Message(**{k: row[k] for k in Message.__dataclass_fields__ if k in row})
