"""The store on real SQLite files: schema upgrades, refusal of foreign/newer databases, privacy."""

from __future__ import annotations

import json
import sqlite3
import stat
import threading
from pathlib import Path

import pytest
import sqlite_utils

from store import checksums
from store.migrations import LATEST, UPGRADES
from store.store import DamagedDatabase, Store, StoreError, storage_problem


def test_fresh_database_is_latest_schema_in_wal_mode(tmp_path):
    store = Store(tmp_path / "e.db")
    assert store.schema_version == LATEST
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def database_at(path, version: int) -> sqlite_utils.Database:
    """A database as Engram at schema ``version`` left it (the upgrades up to it, in turn)."""
    db = sqlite_utils.Database(path)
    checksums.register(db.conn)
    for step in range(1, version + 1):
        UPGRADES[step](db)
    db.execute(f"PRAGMA user_version = {version}")
    return db


def test_upgrade_from_version_1_keeps_data(tmp_path):
    path = tmp_path / "old.db"
    db = database_at(path, 1)
    db["profiles"].insert({"name": "ada", "created_at": "2026-01-01"})
    db["sessions"].insert({"profile_id": 1, "title": "old chat", "created_at": "t",
                           "updated_at": "t", "model": "m", "system_prompt": None})
    db["messages"].insert({"session_id": 1, "role": "user", "content": "hello from v1",
                           "status": "complete", "created_at": "t"})
    db.conn.commit()
    db.conn.close()

    store = Store(path)
    assert store.schema_version == LATEST
    profile = store.profile("ada")
    [session] = store.sessions(profile.id)
    assert session.title == "old chat" and session.private is False
    assert [m.content for m in store.messages(session.id)] == ["hello from v1"]
    assert profile.settings == {}


def test_newer_schema_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "new.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {LATEST + 5}")
    conn.close()
    with pytest.raises(StoreError, match="newer Engram"):
        Store(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST + 5


def test_garbage_file_is_refused_with_advice(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a readable Engram database"):
        Store(path)
    assert path.read_bytes() == b"this is not sqlite" * 100


def test_database_file_is_private(tmp_path):
    store = Store(tmp_path / "e.db")
    store.profile("default")
    assert stat.S_IMODE((tmp_path / "e.db").stat().st_mode) == 0o600


def test_sessions_messages_search_and_delete(tmp_path):
    store = Store(tmp_path / "e.db")
    me = store.profile("me")
    other = store.profile("other")
    first = store.new_session(me.id, "m", title="about cats")
    second = store.new_session(me.id, "m", title="about dogs")
    store.new_session(other.id, "m", title="not mine")
    store.add_message(first.id, "user", "my cat is Pixel")
    reply = store.add_message(first.id, "assistant", "", status="pending")
    store.finish_message(reply.id, "Nice!", "partial", completion_tokens=2)

    assert [s.id for s in store.sessions(me.id)][0] == first.id  # touched last
    assert [s.title for s in store.sessions(me.id, search="Pixel")] == ["about cats"]
    assert [s.title for s in store.sessions(me.id, search="dogs")] == ["about dogs"]
    messages = store.messages(first.id)
    assert ([(m.role, m.status) for m in messages]
            == [("user", "complete"), ("assistant", "partial")])
    assert messages[1].completion_tokens == 2

    store.delete_session(first.id)
    assert [s.id for s in store.sessions(me.id)] == [second.id]
    assert store.messages(first.id) == []


def test_a_write_after_a_read_waits_for_another_chat_s_commit_instead_of_failing(tmp_path):
    """Two chats on one profile are two connections. A transaction that has read (sqlite-utils
    reads the schema before each insert) must still write after the other commits: taken at
    its start, the other waits for it; deferred, SQLite refuses the write ("database is
    locked") and a message was lost."""
    path = tmp_path / "e.db"
    mine, theirs = Store(path), Store(path)
    session = mine.new_session(mine.profile("me").id, "m")
    have_read, done = threading.Event(), threading.Event()

    def other_chat():
        have_read.wait()
        theirs.add_message(session.id, "user", "from the other chat")
        done.set()

    other = threading.Thread(target=other_chat)
    other.start()
    with mine.transaction():
        mine.messages(session.id)
        have_read.set()
        done.wait(0.5)  # time enough for the other chat to commit, where it is let through
        mine.add_message(session.id, "user", "from this chat")
    other.join()
    assert sorted(m.content for m in theirs.messages(session.id)) == [
        "from the other chat", "from this chat"]


def test_a_transaction_whose_commit_fails_is_rolled_back_and_later_writes_are_stored(tmp_path):
    """A refused COMMIT (here a foreign key checked at commit) ends the transaction: left
    open, every later write nested in it as a savepoint and none was ever stored."""
    path = tmp_path / "e.db"
    store = Store(path)
    session = store.new_session(store.profile("me").id, "m")
    with pytest.raises(sqlite3.IntegrityError), store.transaction():
        store.db.execute("PRAGMA defer_foreign_keys = ON")
        store.db.execute("INSERT INTO messages (session_id, role, content, status, created_at) "
                         "VALUES (999, 'user', 'orphan', 'complete', '')")
    store.add_message(session.id, "user", "kept")
    assert [m.content for m in Store(path).messages(session.id)] == ["kept"]


def test_settings_are_saved_per_profile(tmp_path):
    store = Store(tmp_path / "e.db")
    me = store.profile("me")
    store.save_settings(me.id, {"temperature": 0.2})
    assert store.profile("me").settings == {"temperature": 0.2}
    assert store.profile("you").settings == {}


def test_upgrade_from_version_4_enforces_foreign_keys_and_cascades(tmp_path):
    path = tmp_path / "v4.db"
    db = database_at(path, 4)
    db["profiles"].insert({"name": "ada", "created_at": "t"})
    for sid in (1, 2):
        db["sessions"].insert({"profile_id": 1, "title": f"s{sid}", "created_at": "t",
                               "updated_at": "t", "model": "m", "system_prompt": None})
        db["messages"].insert({"session_id": sid, "role": "user", "content": f"hi {sid}",
                               "status": "complete", "created_at": "t"})
        db["session_states"].insert({"session_id": sid, "cells_enabled": 1})
    for parent in (None, 1):
        db["overlay_versions"].insert({
            "profile_id": 1, "parent_id": parent, "created_at": "t", "path": "p",
            "base_sha256": "b", "sessions_json": "[]", "metrics_json": "{}",
            "status": "accepted", "trainable_params": 0, "bytes": 0})
    tables = ("profiles", "sessions", "messages", "session_states", "overlay_versions")
    before = {t: list(db[t].rows) for t in tables}
    db.conn.commit()
    db.conn.close()

    store = Store(path)
    assert store.schema_version == LATEST
    after = {t: list(store.db[t].rows) for t in tables}
    assert all(row.pop("sha256") for rows in after.values() for row in rows)  # v6, v8
    assert all(row.pop("active_overlay_id") is None for row in before["profiles"])  # v9
    assert after == before
    assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.db.execute("PRAGMA foreign_key_check").fetchall() == []
    assert "idx_messages_session_id_id" in store.db["messages"].indexes[0].name
    with pytest.raises(sqlite3.IntegrityError):
        store.add_message(99, "user", "to no session")
    store.delete_session(1)
    assert [m["session_id"] for m in store.db["messages"].rows] == [2]
    assert [s["session_id"] for s in store.db["session_states"].rows] == [2]
    store.db.execute("DELETE FROM overlay_versions WHERE id = 1")
    assert [v["parent_id"] for v in store.db["overlay_versions"].rows] == [None]
    store.db.execute("DELETE FROM profiles WHERE id = 1")
    assert all(store.db[t].count == 0 for t in tables)


# -- damaged databases -------------------------------------------------------------------


def _filled(path, sessions=20):
    """A closed database with sessions and messages over several pages."""
    store = Store(path)
    me = store.profile("me")
    for i in range(sessions):
        session = store.new_session(me.id, "m", title=f"chat {i}")
        for j in range(4):
            store.add_message(session.id, "user", f"message {j} " + "words " * 40)
    store.close()
    return path


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2 + 100])


def _overwrite_a_page(path):
    data = bytearray(path.read_bytes())
    page = 4096 * (len(data) // 4096 // 2)  # a page in the middle: table or index b-tree
    data[page:page + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _overwrite_a_page], ids=["truncated", "corrupted"])
def test_a_damaged_database_is_quarantined_not_deleted(tmp_path, damage):
    path = _filled(tmp_path / "engram.db")
    damage(path)
    damaged = path.read_bytes()
    with pytest.raises(DamagedDatabase, match="moved aside to .*engram.db.damaged-") as caught:
        Store(path)
    moved = caught.value.quarantined
    assert moved.name.startswith("engram.db.damaged-") and moved.parent == tmp_path
    assert moved.read_bytes() == damaged  # kept as it was
    assert not path.exists()
    assert "\n" not in str(caught.value) and "engram memory import" in str(caught.value)
    fresh = Store(path)  # the next start begins with an empty database
    assert fresh.sessions(fresh.profile("me").id) == []


def _damaged_index(path):
    """A database of two sessions where one index entry of the first session's middle
    message names another session (what one flipped bit did in the reliability bench's
    fuzz): every page and row is well formed and matches its checksum, but a read through
    the index shows the chat without that message. Returns the messages said there."""
    store = Store(path)
    first, other = (store.new_session(store.profile("me").id, "m") for _ in range(2))
    said = [store.add_message(first.id, "user", f"hello {i}") for i in range(3)]
    store.add_message(other.id, "user", "elsewhere")
    store.close()
    data = bytearray(path.read_bytes())
    # the index record (session_id, id, rowid): session 1 is written as serial type 9 (the
    # constant 1) and each small id as one byte; type 8 is the constant 0
    entry = bytes([4, 9, 1, 1, said[1].id, said[1].id])
    assert first.id == 1 and data.count(entry) == 1
    data[data.index(entry) + 1] = 8
    path.write_bytes(bytes(data))
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]  # not seen by it
    [(shown,)] = conn.execute("SELECT count(*) FROM messages WHERE session_id = 1").fetchall()
    assert shown < 3  # read through the index, the chat is missing messages
    conn.close()
    return said


def test_a_damaged_index_is_rebuilt_from_the_rows_and_nothing_is_lost(tmp_path):
    path = tmp_path / "engram.db"
    said = _damaged_index(path)
    store = Store(path)
    assert store.messages(said[0].session_id) == said  # all three, as they were written
    assert store.integrity() == "ok"
    [copy] = tmp_path.glob("engram.db.damaged-*")  # the file as it was, kept aside
    assert store.repaired and str(copy) in store.repaired and "missing from index" in store.repaired
    conn = sqlite3.connect(copy)
    assert "missing from index" in conn.execute("PRAGMA integrity_check").fetchone()[0]
    conn.close()
    store.close()
    assert Store(path).repaired is None  # mended once


def test_a_damaged_index_beside_a_damaged_row_is_not_mended_but_quarantined(tmp_path):
    """Rebuilding indexes from rows is only right when every row is whole."""
    path = tmp_path / "engram.db"
    _damaged_index(path)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE messages SET sha256 = 'x' WHERE content = 'elsewhere'")
    conn.commit()
    conn.close()
    with pytest.raises(DamagedDatabase, match="missing from index") as caught:
        Store(path)
    assert caught.value.quarantined.exists() and not path.exists()


def test_cli_says_in_one_line_that_the_indexes_were_rebuilt(tmp_path, capsys):
    from app.cli import main

    _damaged_index(tmp_path / "engram.db")
    command = ["--home", str(tmp_path), "--profile", "me", "sessions"]
    assert main(command) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "were rebuilt from its rows and nothing was lost" in err
    assert main(command) == 0
    assert capsys.readouterr().err == ""  # said once


def test_quarantine_takes_the_wal_and_shm_along(tmp_path):
    path = _filled(tmp_path / "engram.db")
    other = sqlite3.connect(path)  # another process, still open: its log stays
    checksums.register(other)  # Engram's: its writes seal their rows
    other.execute("INSERT INTO profiles (name, created_at, settings) VALUES ('x', 't', '{}')")
    other.commit()
    assert Path(f"{path}-wal").exists()
    _truncate(path)
    try:
        with pytest.raises(DamagedDatabase) as caught:
            Store(path)
    finally:
        other.close()
    moved = caught.value.quarantined
    assert Path(f"{moved}-wal").exists() and Path(f"{moved}-shm").exists()
    assert not any(Path(f"{path}{s}").exists() for s in ("", "-wal", "-shm"))


def test_damage_met_while_reading_is_a_store_error(tmp_path):
    """integrity_check does not look inside text: invalid UTF-8 surfaces on reading."""
    path = tmp_path / "engram.db"
    store = Store(path)
    session = store.new_session(store.profile("me").id, "m")
    message = store.add_message(session.id, "user", "hello")
    store.db.execute("UPDATE messages SET content = CAST(X'c328' AS TEXT) WHERE id = ?",
                     [message.id])
    with pytest.raises(DamagedDatabase, match="is damaged .*nothing was changed"):
        store.messages(session.id)
    assert path.exists()


def test_cli_says_one_line_and_names_the_quarantined_file(tmp_path, capsys):
    from app.cli import main

    _filled(tmp_path / "engram.db")
    _overwrite_a_page(tmp_path / "engram.db")
    assert main(["--home", str(tmp_path), "sessions"]) == 2
    err = capsys.readouterr().err
    [moved] = tmp_path.glob("engram.db.damaged-*")
    assert err.count("\n") == 1 and err.startswith("engram: ") and str(moved) in err
    assert main(["--home", str(tmp_path), "sessions"]) == 0  # then a fresh start
    assert list(tmp_path.glob("engram.db.damaged-*")) == [moved]


@pytest.mark.parametrize("error", [sqlite3.DatabaseError("database disk image is malformed"),
                                   UnicodeDecodeError("utf-8", b"\xc3(", 0, 1, "invalid")])
def test_cli_turns_stray_database_errors_into_one_line(monkeypatch, capsys, error):
    from app import cli

    def fail(args):
        raise error

    monkeypatch.setattr(cli, "_dispatch", fail)
    assert cli.main(["sessions"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not be read" in err


# -- message checksums (schema 6) --------------------------------------------------------


def test_upgrade_from_version_5_checksums_existing_messages(tmp_path):
    path = tmp_path / "v5.db"
    db = database_at(path, 5)
    db["profiles"].insert({"name": "ada", "created_at": "t"})
    db["sessions"].insert({"profile_id": 1, "title": "s", "created_at": "t", "updated_at": "t",
                           "model": "m", "system_prompt": None, "private": 0})
    db["messages"].insert_all([
        {"session_id": 1, "role": "user", "content": "héllo ✓", "status": "complete",
         "created_at": "t"},
        {"session_id": 1, "role": "assistant", "content": "hi", "status": "partial",
         "created_at": "t", "model": "m", "prompt_tokens": 3, "completion_tokens": 1,
         "seconds": 0.25, "tokens_per_s": 4}])
    db.conn.commit()
    db.conn.close()

    store = Store(path)
    assert store.schema_version == LATEST
    assert all(len(m["sha256"]) == 64 for m in store.db["messages"].rows)
    assert [m.content for m in store.messages(1)] == ["héllo ✓", "hi"]


def test_a_message_changed_behind_the_stores_back_is_refused(tmp_path):
    store = Store(tmp_path / "e.db")
    session = store.new_session(store.profile("me").id, "m")
    store.add_message(session.id, "user", "my cat is Pixel")
    reply = store.add_message(session.id, "assistant", "", status="pending")
    # stats of another type than the column's (SQLite converts them): still verified
    store.finish_message(reply.id, "Nice!", "complete", seconds=1, tokens_per_s=2,
                         completion_tokens=2)
    store.add_sessions(session.profile_id, [{
        "title": "imported", "created_at": "t", "updated_at": "t", "model": "m",
        "system_prompt": None, "private": False, "cells_enabled": None, "cells": None,
        "messages": [{"role": "user", "content": "from elsewhere", "status": "complete",
                      "created_at": "t"}]}])
    assert len(store.messages(session.id)) == 2
    assert [m.content for s in store.sessions(session.profile_id)
            for m in store.messages(s.id)] == ["from elsewhere", "my cat is Pixel", "Nice!"]

    store.db.execute("UPDATE messages SET content = 'my cat is Pixem' WHERE id = 1")  # a flip
    with pytest.raises(DamagedDatabase, match="message 1 of session 1 does not match"):
        store.messages(session.id)
    with pytest.raises(DamagedDatabase):
        store.message(1)
    assert store.message(reply.id).content == "Nice!"  # the others still read


def test_a_schema_changed_by_damage_is_quarantined(tmp_path):
    """A flipped bit in the schema text still parses (integrity_check passes) but renames a column
    or drops a primary key: the tables' shape is checked against the migrations'."""
    path = _filled(tmp_path / "engram.db", sessions=1)
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE messages RENAME COLUMN session_id TO session_ie")
    conn.close()
    with pytest.raises(DamagedDatabase, match="schema of table 'messages'") as caught:
        Store(path)
    assert caught.value.quarantined.exists() and not path.exists()


# -- learn records (schema 7) --------------------------------------------------------------


def test_upgrade_from_version_6_moves_each_versions_decisions_into_learn_records(tmp_path):
    path = tmp_path / "v6.db"
    db = database_at(path, 6)
    db["profiles"].insert({"name": "ada", "created_at": "t"})
    version = {"profile_id": 1, "created_at": "t", "base_sha256": "0" * 64, "status": "accepted",
               "trainable_params": 0, "bytes": 0, "sessions_json": "[]"}
    db["overlay_versions"].insert_all([
        {**version, "path": "overlays/a", "metrics_json": json.dumps({
            "event": "learn", "locality": 0.97,
            "learned": {"3": {"through": 12, "facts": [["Q?", "A", "S."]]}}})},
        {**version, "path": "overlays/b", "metrics_json": json.dumps({
            "event": "reset", "dropped": {"3": 15, "4": 9}})}])
    db.conn.commit()
    db.conn.close()

    store = Store(path)
    assert store.schema_version == LATEST
    new, old = store.overlay_versions(1)
    assert old.metrics == {"event": "learn", "locality": 0.97}  # nothing twice
    assert old.learned == {3: {"through": 12, "facts": [["Q?", "A", "S."]]}}
    assert (new.metrics, new.learned, new.dropped) == ({"event": "reset"}, {}, {3: 15, 4: 9})
    assert store.decided_through(1, "0" * 64) == {3: 15, 4: 9}
    assert store.versions_learning(3) == [old.id]


def test_learn_records_are_written_with_their_version_and_go_with_it(tmp_path):
    store = Store(tmp_path / "e.db")
    me, other = store.profile("me").id, store.profile("other").id
    learned = store.add_overlay_version(me, "overlays/a", "0" * 64, metrics={
        "event": "learn", "learned": {"1": {"through": 4, "facts": []}}})
    store.add_overlay_version(me, "overlays/b", "0" * 64, metrics={
        "event": "forget", "dropped": {"1": 7}})
    store.add_overlay_version(other, "overlays/c", "0" * 64, metrics={
        "event": "learn", "learned": {"2": {"through": 30}}})
    assert learned.learned == {1: {"through": 4, "facts": []}} and learned.metrics == {
        "event": "learn"}
    base = "0" * 64
    assert store.decided_through(me, base) == {1: 7}
    assert store.decided_through(other, base) == {2: 30}
    store.db.execute("DELETE FROM overlay_versions WHERE profile_id = ?", [me])
    assert store.decided_through(me, base) == {} and store.db["learn_records"].count == 1


def test_decisions_are_per_base_model_but_a_forget_is_for_every_model(tmp_path):
    store = Store(tmp_path / "e.db")
    me = store.profile("me").id
    a, b = "a" * 64, "b" * 64
    store.add_overlay_version(me, "overlays/a1", a, metrics={
        "event": "learn", "learned": {"1": {"through": 4}, "2": {"through": 6}}})
    store.add_overlay_version(me, "overlays/a2", a, metrics={
        "event": "reset", "dropped": {"1": 5, "2": 6, "3": 8}})
    store.add_overlay_version(me, "overlays/b1", b, metrics={
        "event": "learn", "learned": {"3": {"through": 8}}})
    assert store.decided_through(me, a) == {1: 5, 2: 6, 3: 8}
    assert store.decided_through(me, b) == {3: 8}  # A's learning and reset are A's own
    store.add_overlay_version(me, "overlays/a3", a, metrics={
        "event": "forget", "dropped": {"2": 7}})
    assert store.decided_through(me, b) == {2: 7, 3: 8}  # forgotten for B too
    assert store.decided_through(me, "c" * 64) == {2: 7}


# -- the active version per base model (schema 9) ----------------------------------------------


def test_upgrade_from_version_8_keeps_the_profiles_active_version_for_its_model(tmp_path):
    path = tmp_path / "v8.db"
    db = database_at(path, 8)
    db["profiles"].insert({"name": "ada", "created_at": "t"})
    version = {"profile_id": 1, "created_at": "t", "base_sha256": "a" * 64, "path": "p",
               "sessions_json": "[]", "metrics_json": "{}", "trainable_params": 0, "bytes": 0}
    db["overlay_versions"].insert_all([{**version, "status": "active"},  # not the pointer's
                                       {**version, "status": "active"}])
    db.execute("UPDATE profiles SET active_overlay_id = 2")
    db.conn.commit()
    db.conn.close()

    store = Store(path)
    assert store.schema_version == LATEST
    assert [p.name for p in store.profiles()] == ["ada"]  # resealed without the column
    assert store.active_overlay(1, "a" * 64).id == 2
    assert store.overlay_version(1).status == "superseded"
    with pytest.raises(sqlite3.IntegrityError):  # one active version per profile and model
        store.db.execute("UPDATE overlay_versions SET status = 'active' WHERE id = 1")


def test_each_base_model_has_its_own_active_version(tmp_path):
    store = Store(tmp_path / "e.db")
    me = store.profile("me").id
    a1 = store.add_overlay_version(me, "overlays/a1", "a" * 64, status="active")
    b1 = store.add_overlay_version(me, "overlays/b1", "b" * 64, status="active")
    a2 = store.add_overlay_version(me, "overlays/a2", "a" * 64, parent_id=a1.id,
                                   status="active")
    assert store.active_overlay(me, "a" * 64) == a2 and store.active_overlay(me, "b" * 64) == b1
    assert store.overlay_version(a1.id).status == "superseded"
    assert [v.id for v in store.overlay_versions(me, "b" * 64)] == [b1.id]
    assert [v.id for v in store.overlay_versions(me)] == [a2.id, b1.id, a1.id]
    with pytest.raises(StoreError, match="another model"):
        store.set_active_overlay(me, "b" * 64, a1.id)
    store.set_active_overlay(me, "a" * 64, None)
    assert store.active_overlay(me, "a" * 64) is None and store.active_overlay(me, "b" * 64) == b1


# -- where the database lives --------------------------------------------------------------


def sqlite_error(message: str, name: str) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError(message)
    exc.sqlite_errorname = name  # type: ignore[attr-defined]  (what SQLite sets on its own)
    return exc


def test_a_full_disk_is_named_as_such_and_the_database_left_alone(tmp_path, monkeypatch):
    path = tmp_path / "engram.db"
    Store(path).close()
    full = sqlite_error("database or disk is full", "SQLITE_FULL")
    monkeypatch.setattr(Store, "_check", lambda self, read_only: (_ for _ in ()).throw(full))
    with pytest.raises(StoreError, match="^no space left on the disk that holds") as caught:
        Store(path)
    assert not isinstance(caught.value, DamagedDatabase) and path.exists()
    assert not list(tmp_path.glob("engram.db.damaged-*"))


def test_a_write_that_meets_a_full_disk_says_so_and_the_store_stays_readable(tmp_path):
    store = Store(tmp_path / "engram.db")
    session = store.new_session(store.profile("me").id, "m")
    store.add_message(session.id, "user", "kept")
    with pytest.raises(StoreError, match="^no space left"), store._lock:
        raise sqlite_error("database or disk is full", "SQLITE_FULL")
    assert [m.content for m in store.messages(session.id)] == ["kept"]


def test_a_home_that_cannot_be_written_is_named_as_such(tmp_path):
    denied = PermissionError(13, "Permission denied")
    assert "cannot be written" in storage_problem(tmp_path / "engram.db", denied)
    io_error = sqlite_error("disk I/O error", "SQLITE_IOERR_SHMSIZE")
    assert storage_problem(tmp_path / "engram.db", io_error) is None  # space left: not full


# -- row checksums (schema 8) --------------------------------------------------------------


@pytest.mark.parametrize("table, column, value", [
    ("profiles", "name", "mallory"), ("sessions", "title", "changed"),
    ("session_states", "kv_path", "../../elsewhere"), ("overlay_versions", "path", "../x"),
    ("learn_records", "through", 99)])
def test_a_row_changed_behind_the_stores_back_is_refused_whatever_its_table(
        tmp_path, table, column, value):
    store = Store(tmp_path / "e.db")
    me = store.profile("me")
    session = store.new_session(me.id, "m")
    store.save_session_kv(session.id, "profiles/me/sessions/1.kv", "m", None, 1, 3, 10, "s")
    store.add_overlay_version(me.id, "overlays/a", "0" * 64, metrics={
        "learned": {str(session.id): {"through": 1}}})
    rows = store.db.execute(f"SELECT rowid, sha256 FROM {table}").fetchall()
    assert rows and all(len(sha) == 64 for _, sha in rows)  # every row was sealed on writing
    # a flip the pages' checks cannot see: the row's bytes change, its checksum does not
    store.db.execute("DROP TRIGGER " + f"{table}_sealed_on_update")
    store.db.execute(f"UPDATE {table} SET {column} = ?", [value])
    store.db.conn.commit()
    with pytest.raises(DamagedDatabase, match=f"of {table} does not match its checksum"):
        store.profiles()
        store.sessions(me.id)
        store.session_state(session.id)
        store.overlay_versions(me.id)


def test_writes_through_the_store_keep_rows_sealed(tmp_path):
    store = Store(tmp_path / "e.db")
    me = store.profile("me")
    store.save_settings(me.id, {"n_ctx": 2048})
    session = store.new_session(me.id, "m")
    store.update_session(session.id, title="renamed")
    store.save_session_cells(session.id, True, b"\x00cells")
    version = store.add_overlay_version(me.id, "overlays/a", "0" * 64, status="active")
    store.set_overlay_status(version.id, "broken", "damaged")
    assert store.profiles()[0].settings == {"n_ctx": 2048}
    assert store.session(session.id).title == "renamed"
    assert store.session_state(session.id).cells == b"\x00cells"
    assert store.overlay_versions(me.id)[0].status == "broken"


def test_a_message_and_its_checksum_are_stored_together_or_not_at_all(tmp_path, monkeypatch):
    """A process that dies between writing a message and sealing it (the benchmark's 63 chat
    kills found one) must leave the message as it was before, never a row that reads as
    damaged: the write and its checksum are one transaction."""
    store = Store(tmp_path / "e.db")
    session = store.new_session(store.profile("me").id, "m")
    reply = store.add_message(session.id, "assistant", "", status="pending")

    def dies(message_id):
        raise KeyboardInterrupt  # stands for the SIGKILL: nothing after it runs

    monkeypatch.setattr(store, "_seal", dies)
    for write in (lambda: store.add_message(session.id, "user", "my cat is Pixel"),
                  lambda: store.finish_message(reply.id, "Nice!", "complete")):
        with pytest.raises(KeyboardInterrupt):
            write()
    monkeypatch.undo()
    reopened = Store(tmp_path / "e.db")
    assert [(m.content, m.status) for m in reopened.messages(session.id)] == [("", "pending")]
