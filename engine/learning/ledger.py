"""What was decided about each session: learned, rejected, forgotten, reset.

Recorded with each version (the store's ``learn_records``) as the newest user message each
decision covered; a session is pending only when it has a newer one. So a rollback or a
rejection is not silently undone by learning the same text again.

Decisions are per base model, as memory is: a session one model learned is still pending for
another, which has no memory of it. Forgetting is the exception: a session forgotten under one
model is decided for every model (``Store.decided_through``)."""

from __future__ import annotations

from store.records import OverlayVersion, Profile, Session
from store.store import Store


def pending_sessions(store: Store, profile: Profile, base_sha256: str) -> list[Session]:
    """Sessions (oldest first) with a user message newer than anything decided about them for
    the base model of that sha256; private sessions never."""
    decided = store.decided_through(profile.id, base_sha256)
    sessions = {s.id: s for s in store.sessions(profile.id)}
    newest = store.last_user_message_ids(profile.id)
    return [sessions[sid] for sid in sorted(newest)
            if not sessions[sid].private and newest[sid] > decided.get(sid, 0)]


def ancestry_records(versions: list[OverlayVersion],
                     version: OverlayVersion | None) -> dict[int, dict]:
    """The learn record of each session along ``version``'s ancestry (the nearest wins): what
    was derived from it when its neurons now in use were trained. Its ``trimmed``: the leaks
    later versions stopped by taking some of those neurons out (``learning.trims``), as
    [question, answer, whether its own question still got the answer]; an answer no longer
    recalled so joins its ``unrecalled``."""
    by_id = {v.id: v for v in versions}
    out: dict[int, dict] = {}
    trimmed: dict[int, list] = {}
    while version is not None:
        for sid, leaks in version.metrics.get("trimmed", {}).items():
            if int(sid) not in out:
                trimmed.setdefault(int(sid), []).extend(leaks)
        for sid, record in version.learned.items():
            if sid not in out:
                cuts = trimmed.get(sid, [])
                lost = [answer for _, answer, kept in cuts if not kept]
                out[sid] = {**record, "trimmed": cuts,
                            "unrecalled": list(dict.fromkeys(record.get("unrecalled", []) + lost))}
        version = None if version.parent_id is None else by_id.get(version.parent_id)
    return out
