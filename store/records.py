"""Typed rows returned by the store (never bare tuples)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Profile:
    id: int
    name: str
    created_at: str
    settings: dict


@dataclass(frozen=True)
class Session:
    id: int
    profile_id: int
    title: str
    created_at: str
    updated_at: str
    model: str
    system_prompt: str | None
    private: bool
    message_count: int = 0


@dataclass(frozen=True)
class Message:
    id: int
    session_id: int
    role: str  # "user" | "assistant" | "system"
    content: str
    # "complete" | "partial" (cancelled) | "error" (crashed) | "pending" (being written)
    status: str
    created_at: str
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    seconds: float | None = None
    tokens_per_s: float | None = None


OVERLAY_STATUSES = ("active", "accepted", "rejected", "superseded", "broken")
UNUSABLE_OVERLAY_STATUSES = ("rejected", "broken")  # never activated


@dataclass(frozen=True)
class OverlayVersion:
    """One learned overlay version. ``status``: "active" (the one in use, at most one per
    profile and base model), "accepted" (passed the locality gate, not in use), "superseded"
    (was active), "rejected" (refused by the gate; never activated), "broken" (its files
    failed their checks). ``path`` is relative to the Engram home. ``learned``: per session
    it learned (or tried to), the record of it (``through``: the newest user message covered,
    the facts derived, timings); ``dropped``: per session it set aside unlearned (forgotten,
    reset), the newest user message then (both from ``learn_records``)."""

    id: int
    profile_id: int
    parent_id: int | None
    created_at: str
    path: str
    base_sha256: str
    sessions: list[int]
    metrics: dict
    status: str
    reason: str | None
    trainable_params: int
    bytes: int
    learned: dict[int, dict] = field(default_factory=dict)
    dropped: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SessionState:
    """A session's saved latent state. ``cells_enabled``: None means the default. ``cells``:
    the cells record (engine.cells), None when empty. ``kv_*``: the KV-cache snapshot file
    (``kv_path`` relative to the Engram home, None when there is none) and what it was
    computed with: model, overlay version, file format."""

    session_id: int
    cells_enabled: bool | None
    cells: bytes | None
    kv_path: str | None
    kv_model_sha256: str | None
    kv_overlay_id: int | None
    kv_format: int | None
    kv_tokens: int | None
    kv_bytes: int | None
    kv_sha256: str | None
    kv_saved_at: str | None
