"""What a fresh process finds in a home after Engram was killed there: shared by every kind of
kill the reliability bench makes (a streaming chat, a memory command)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from engine import overlay as overlay_files
from engine.errors import EngramError
from store import checksums, paths

REPOSITORY = Path(__file__).resolve().parents[2]  # where ``python -m app.cli`` runs


def engram_command(home: Path, model: str | None, *args: str,
                   runner: Sequence[str] = ("-m", "app.cli")) -> list[str]:
    """``engram --home HOME [--model MODEL] ARGS``, run as ``python RUNNER …`` (a wrapper
    script with ``-c`` where a trial makes the process die on purpose)."""
    return [sys.executable, *runner, "--home", str(home),
            *(["--model", str(model)] if model else []), *args]


def last_line(err: bytes) -> str:
    """What a process that failed said last: the one line an Engram error is."""
    return (err.decode(errors="replace").strip().splitlines() or ["no output"])[-1]


def check_home(home: Path, acknowledged: list[str], versions: dict[str, str]) -> dict:
    """What a fresh reader finds: integrity, foreign keys, every row matching its checksum,
    acknowledged messages present (and sealed), every version seen before still loadable (by
    its manifest's checksums)."""
    if not paths.database(home).exists():
        return {"integrity": True, "lost_messages": len(acknowledged), "lost_versions": 0}
    conn = sqlite3.connect(paths.database(home))
    try:
        ok = conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        ok = ok and not conn.execute("PRAGMA foreign_key_check").fetchall()
        ok = ok and checksums.all_sealed(conn)
        messages = list(checksums.rows(conn, "messages"))
    finally:
        conn.close()
    stored = {m["content"] for m in messages if m["role"] == "user" and checksums.row_matches(m)}
    lost_versions = 0
    for path, base in versions.items():
        try:
            overlay_files.load(home / path, base)
        except EngramError:
            lost_versions += 1
    return {"integrity": ok, "lost_messages": sum(t not in stored for t in acknowledged),
            "lost_versions": lost_versions}


def versions_on_record(home: Path) -> dict[str, str]:
    """The overlay versions on record (relative path → base model hash)."""
    if not paths.database(home).exists():
        return {}
    conn = sqlite3.connect(paths.database(home))
    try:
        return dict(conn.execute("SELECT path, base_sha256 FROM overlay_versions"))
    finally:
        conn.close()


def chat_works(home: Path, model: str | None) -> bool:
    out = subprocess.run(engram_command(home, model, "chat", "--plain"), input=b"after\n",
                         capture_output=True, timeout=300, cwd=REPOSITORY)
    return out.returncode == 0 and b"tok/s" in out.stderr
