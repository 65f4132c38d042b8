"""Per-row checksums of messages: a bit flipped inside a message's row (which SQLite's page
checks cannot see) is found when the row is read, rather than shown altered.

The checksum is computed by SQLite itself, through ``engram_message_sha256`` registered on the
store's connection, over the values as stored, so what is read back hashes the same; the store
writes it after every insert or update of a message. The encoding tags each value with its
type and length, so it never depends on a Python version's repr.
"""

from __future__ import annotations

import hashlib
import sqlite3

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
    """Make ``engram_message_sha256(...)`` callable in SQL on ``conn``."""
    conn.create_function(FUNCTION, len(MESSAGE_FIELDS), message_sha256, deterministic=True)


# The SQL that (re)computes the column of the rows a WHERE clause selects.
SEAL = (f"UPDATE messages SET sha256 = {FUNCTION}({', '.join(MESSAGE_FIELDS)}) ")


def row_matches(row: dict) -> bool:
    return row.get("sha256") == message_sha256(*(row[f] for f in MESSAGE_FIELDS))
