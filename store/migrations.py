"""Forward-only schema upgrades, keyed by the version they produce.

The database's schema version is ``PRAGMA user_version``. Each step takes the
database from version N-1 to N; a fresh database runs them all. Never edit a
released step: add a new one.
"""

from __future__ import annotations

import json
import re

import sqlite_utils

from store import checksums


def _v1_chat(db: sqlite_utils.Database) -> None:
    db.table("profiles").create(
        {"id": int, "name": str, "created_at": str},
        pk="id", not_null={"name", "created_at"},
    )
    db.table("profiles").create_index(["name"], unique=True)
    db.table("sessions").create(
        {"id": int, "profile_id": int, "title": str, "created_at": str,
         "updated_at": str, "model": str, "system_prompt": str},
        pk="id", foreign_keys=[("profile_id", "profiles", "id")],
        not_null={"profile_id", "title", "created_at", "updated_at"},
    )
    db.table("sessions").create_index(["profile_id", "updated_at"])
    db.table("messages").create(
        {"id": int, "session_id": int, "role": str, "content": str, "status": str,
         "created_at": str, "model": str, "prompt_tokens": int,
         "completion_tokens": int, "seconds": float, "tokens_per_s": float},
        pk="id", foreign_keys=[("session_id", "sessions", "id")],
        not_null={"session_id", "role", "content", "status", "created_at"},
    )
    db.table("messages").create_index(["session_id", "id"])


def _v2_privacy_and_settings(db: sqlite_utils.Database) -> None:
    db.table("sessions").add_column("private", int, not_null_default=0)
    db.table("profiles").add_column("settings", str, not_null_default="{}")


def _v3_overlay_versions(db: sqlite_utils.Database) -> None:
    """Overlay versions (files live under the home; rows hold their relative path and hashes)
    and each profile's active version."""
    db.table("overlay_versions").create(
        {"id": int, "profile_id": int, "parent_id": int, "created_at": str, "path": str,
         "base_sha256": str, "sessions_json": str, "metrics_json": str, "status": str,
         "reason": str, "trainable_params": int, "bytes": int},
        pk="id",
        foreign_keys=[("profile_id", "profiles", "id"), ("parent_id", "overlay_versions", "id")],
        not_null={"profile_id", "created_at", "path", "base_sha256", "sessions_json",
                  "metrics_json", "status", "trainable_params", "bytes"},
    )
    db.table("overlay_versions").create_index(["profile_id", "id"])
    db.table("profiles").add_column("active_overlay_id", int)


def _v4_session_states(db: sqlite_utils.Database) -> None:
    """A session's latent state: its cells (a small blob) and a snapshot of llama.cpp's KV
    cache (a file under the home, tagged with what computed it)."""
    db.table("session_states").create(
        {"session_id": int, "cells_enabled": int, "cells": bytes, "kv_path": str,
         "kv_model_sha256": str, "kv_overlay_id": int, "kv_format": int, "kv_tokens": int,
         "kv_bytes": int, "kv_sha256": str, "kv_saved_at": str},
        pk="session_id", foreign_keys=[("session_id", "sessions", "id")],
    )


def _v5_cascades(db: sqlite_utils.Database) -> None:
    """Foreign keys are enforced from this version on (the store turns them on), and deleting
    a row takes what hangs off it: a session its messages and state, a profile its sessions
    and versions; a deleted version's children lose their parent, not their life. SQLite
    cannot change a constraint in place, so each table is rebuilt from its own schema text
    under a new name, copied, and renamed back (sqlite.org/lang_altertable.html, 'other
    kinds of table schema changes'), in the step's one transaction."""
    reference = re.compile(r'REFERENCES\s+["\[`]?(\w+)["\]`]?\s*\(\s*["\[`]?id["\]`]?\s*\)')
    for table in ("sessions", "messages", "overlay_versions", "session_states"):
        [sql] = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
                           [table]).fetchone()
        indexes = [row[0] for row in db.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
            "AND sql IS NOT NULL", [table])]
        sql = reference.sub(lambda m: m.group(0) + (" ON DELETE SET NULL"
                                                    if m.group(1) == "overlay_versions"
                                                    else " ON DELETE CASCADE"), sql)
        sql = re.sub(r'^CREATE TABLE\s+["\[`]?\w+["\]`]?', f'CREATE TABLE "{table}_v5"', sql)
        db.execute(sql)
        db.execute(f'INSERT INTO "{table}_v5" SELECT * FROM "{table}"')
        db.execute(f'DROP TABLE "{table}"')
        db.execute(f'ALTER TABLE "{table}_v5" RENAME TO "{table}"')
        for index in indexes:
            db.execute(index)


def _v6_message_checksums(db: sqlite_utils.Database) -> None:
    """A sha256 per message over its fields (store.checksums), verified when a session's
    messages are read; existing rows get theirs here. Needs checksums.register on the
    connection (the store does it on opening)."""
    db.table("messages").add_column("sha256", str)
    db.execute(checksums.SEAL)


def _v7_learn_records(db: sqlite_utils.Database) -> None:
    """What each version decided about each session, as rows: "learned" (with what was
    derived: facts, timings) or "dropped" (forgotten, reset, not imported), each with the
    newest user message it covered. They lived inside ``metrics_json``, where every question
    ("is this session pending?", "which version learned it?") walked all versions' JSON;
    existing versions' records move here."""
    db.execute("CREATE TABLE learn_records ("
               "id INTEGER PRIMARY KEY, "
               "version_id INTEGER NOT NULL REFERENCES overlay_versions(id) ON DELETE CASCADE, "
               "session_id INTEGER NOT NULL, "
               "kind TEXT NOT NULL CHECK (kind IN ('learned', 'dropped')), "
               "through INTEGER NOT NULL, "
               "record_json TEXT NOT NULL DEFAULT '{}')")
    db.execute("CREATE INDEX learn_records_version ON learn_records (version_id)")
    db.execute("CREATE INDEX learn_records_session ON learn_records (session_id, kind)")
    for version_id, metrics_json in db.execute(
            "SELECT id, metrics_json FROM overlay_versions").fetchall():
        metrics = json.loads(metrics_json)
        for row in learn_rows(version_id, metrics.pop("learned", {}), metrics.pop("dropped", {})):
            db.execute(LEARN_RECORD_INSERT, list(row))
        db.execute("UPDATE overlay_versions SET metrics_json = ? WHERE id = ?",
                   [json.dumps(metrics), version_id])


LEARN_RECORD_INSERT = ("INSERT INTO learn_records (version_id, session_id, kind, through, "
                       "record_json) VALUES (?, ?, ?, ?, ?)")


def learn_rows(version_id: int, learned: dict, dropped: dict) -> list[tuple]:
    """``learn_records`` rows from a version's learned records (session → record holding
    ``through``) and dropped sessions (session → through)."""
    return ([(version_id, int(sid), "learned", int(record.get("through", 0)),
              json.dumps({k: v for k, v in record.items() if k != "through"}))
             for sid, record in learned.items()]
            + [(version_id, int(sid), "dropped", int(through), "{}")
               for sid, through in dropped.items()])


def _v8_row_checksums(db: sqlite_utils.Database) -> None:
    """A sha256 on every row of the other tables (store.checksums.SEALED_COLUMNS), written by
    triggers after each insert and update, so no write path can forget it; existing rows get
    theirs here. Every connection that writes needs checksums.register."""
    for table in checksums.SEALED_COLUMNS:
        db.execute(f'ALTER TABLE "{table}" ADD COLUMN sha256 TEXT')
        _seal(db, table)


def _seal(db: sqlite_utils.Database, table: str) -> None:
    """A table's sealing triggers, over its SEALED_COLUMNS, and its rows sealed."""
    seal = checksums.seal_sql(table, "NEW.")
    db.execute(f'CREATE TRIGGER "{table}_sealed_on_insert" AFTER INSERT ON "{table}" '
               f'BEGIN UPDATE "{table}" SET sha256 = {seal} WHERE rowid = NEW.rowid; END')
    db.execute(f'CREATE TRIGGER "{table}_sealed_on_update" AFTER UPDATE ON "{table}" '
               f"WHEN NEW.sha256 IS NOT {seal} "
               f'BEGIN UPDATE "{table}" SET sha256 = {seal} WHERE rowid = NEW.rowid; END')
    db.execute(f'UPDATE "{table}" SET sha256 = {checksums.seal_sql(table)}')


def _v9_active_version_per_model(db: sqlite_utils.Database) -> None:
    """An active version per base model, not per profile: a profile that switches models keeps
    each one's memory. "active" is the version's status, at most one per profile and base
    model (a unique index); the profile's ``active_overlay_id``, which could name only one,
    goes (its sealing triggers with it, made again without it). A version marked active that
    the column did not name, which no Engram wrote, is superseded."""
    db.execute("UPDATE overlay_versions SET status = 'superseded' WHERE status = 'active' AND "
               "id NOT IN (SELECT active_overlay_id FROM profiles "
               "WHERE active_overlay_id IS NOT NULL)")
    for trigger in ("profiles_sealed_on_insert", "profiles_sealed_on_update"):
        db.execute(f'DROP TRIGGER IF EXISTS "{trigger}"')
    db.execute("ALTER TABLE profiles DROP COLUMN active_overlay_id")
    _seal(db, "profiles")
    db.execute("CREATE UNIQUE INDEX overlay_versions_active ON overlay_versions "
               "(profile_id, base_sha256) WHERE status = 'active'")


UPGRADES = {
    1: _v1_chat,
    2: _v2_privacy_and_settings,
    3: _v3_overlay_versions,
    4: _v4_session_states,
    5: _v5_cascades,
    6: _v6_message_checksums,
    7: _v7_learn_records,
    8: _v8_row_checksums,
    9: _v9_active_version_per_model,
}
LATEST = max(UPGRADES)
