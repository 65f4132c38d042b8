"""What was decided about each session: learned, rejected, forgotten, reset.

Recorded in the versions as the newest user message each decision covered; a session is
pending only when it has a newer one. So a rollback or a rejection is not silently undone
by learning the same text again."""

from __future__ import annotations

from store.records import OverlayVersion, Profile, Session
from store.store import Store


def _decided(versions: list[OverlayVersion]) -> dict[int, int]:
    """Per session, the newest user message any version learned, rejected or dropped."""
    out: dict[int, int] = {}
    for version in versions:
        covered = {sid: record["through"]
                   for sid, record in version.metrics.get("learned", {}).items()}
        for sid, through in {**covered, **version.metrics.get("dropped", {})}.items():
            out[int(sid)] = max(out.get(int(sid), 0), through)
    return out


def pending_sessions(store: Store, profile: Profile) -> list[Session]:
    """Sessions (oldest first) with a user message newer than anything decided about them;
    private sessions never."""
    decided = _decided(store.overlay_versions(profile.id))
    sessions = {s.id: s for s in store.sessions(profile.id)}
    newest = store.last_user_message_ids(profile.id)
    return [sessions[sid] for sid in sorted(newest)
            if not sessions[sid].private and newest[sid] > decided.get(sid, 0)]


def ancestry_records(versions: list[OverlayVersion],
                     version: OverlayVersion | None) -> dict[int, dict]:
    """The learn record of each session along ``version``'s ancestry (the nearest wins): what
    was derived from it when its neurons now in use were trained."""
    by_id = {v.id: v for v in versions}
    out: dict[int, dict] = {}
    while version is not None:
        for sid, record in version.metrics.get("learned", {}).items():
            out.setdefault(int(sid), record)
        version = None if version.parent_id is None else by_id.get(version.parent_id)
    return out
