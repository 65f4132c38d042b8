"""Per-row checksums: a bit flipped inside a row (which SQLite's page checks cannot see) is
found when the row is read, rather than shown altered. Messages' are written by the store
(schema 6); every other table's by triggers (schema 8).

The checksum is computed by SQLite itself, through ``engram_message_sha256`` registered on the
store's connection, over the values as stored, so what is read back hashes the same; the store
writes it after every insert or update of a message. The encoding tags each value with its
type and length, so it never depends on a Python version's repr.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator

FUNCTION = "engram_message_sha256"
MESSAGE_FIELDS = ("session_id", "role", "content", "status", "created_at", "model",
                  "prompt_tokens", "completion_tokens", "seconds", "tokens_per_s")


def message_sha256(*values: object) -> str:
    """The checksum of one message's MESSAGE_FIELDS, in that order."""
    h = hashlib.sha256()
    for value in values:
        if value is None:
            h.update(b"n;")
        elif isinstance(value, int):
            h.update(b"i%d;" % value)
        elif isinstance(value, float):
            h.update(b"f" + value.hex().encode() + b";")
        else:
            data = (value.encode("utf-8", "surrogatepass") if isinstance(value, str)
                    else bytes(value))  # type: ignore[call-overload]
            h.update(b"%c%d:" % (ord("s" if isinstance(value, str) else "b"), len(data)) + data)
    return h.hexdigest()


def register(conn: sqlite3.Connection) -> None:
    """Make ``engram_message_sha256(...)`` and ``engram_row_sha256(...)`` callable in SQL on
    ``conn`` (every connection that writes: the row triggers call the second)."""
    conn.create_function(FUNCTION, len(MESSAGE_FIELDS), message_sha256, deterministic=True)
    conn.create_function(ROW_FUNCTION, -1, message_sha256, deterministic=True)


# The SQL that (re)computes the column of the rows a WHERE clause selects.
SEAL = (f"UPDATE messages SET sha256 = {FUNCTION}({', '.join(MESSAGE_FIELDS)}) ")


def row_matches(row: dict) -> bool:
    return row.get("sha256") == message_sha256(*(row[f] for f in MESSAGE_FIELDS))


# The other tables' rows, sealed by triggers (schema 8) over these columns, in this order
# (the profiles' since schema 9, which dropped their active_overlay_id).
ROW_FUNCTION = "engram_row_sha256"
SEALED_COLUMNS = {
    "profiles": ("id", "name", "created_at", "settings"),
    "sessions": ("id", "profile_id", "title", "created_at", "updated_at", "model",
                 "system_prompt", "private"),
    "session_states": ("session_id", "cells_enabled", "cells", "kv_path", "kv_model_sha256",
                       "kv_overlay_id", "kv_format", "kv_tokens", "kv_bytes", "kv_sha256",
                       "kv_saved_at"),
    "overlay_versions": ("id", "profile_id", "parent_id", "created_at", "path", "base_sha256",
                         "sessions_json", "metrics_json", "status", "reason",
                         "trainable_params", "bytes"),
    "learn_records": ("id", "version_id", "session_id", "kind", "through", "record_json"),
}


def seal_sql(table: str, prefix: str = "") -> str:
    """The SQL expression of a row's checksum (``prefix``: ``NEW.`` inside a trigger)."""
    return f"{ROW_FUNCTION}({', '.join(prefix + c for c in SEALED_COLUMNS[table])})"


def sealed(table: str, row: dict) -> bool:
    """Whether a row read back still matches the checksum written with it."""
    return row.get("sha256") == message_sha256(*(row[c] for c in SEALED_COLUMNS[table]))


def rows(conn: sqlite3.Connection, table: str) -> Iterator[dict]:
    """Every row of ``table``, by scanning the table itself (never through an index)."""
    cursor = conn.execute(f"SELECT * FROM [{table}] NOT INDEXED")
    names = [d[0] for d in cursor.description]
    return (dict(zip(names, row, strict=True)) for row in cursor)


def all_sealed(conn: sqlite3.Connection) -> bool:
    """Every row of every table matches its checksum."""
    return (all(row_matches(row) for row in rows(conn, "messages"))
            and all(sealed(table, row) for table in SEALED_COLUMNS for row in rows(conn, table)))
