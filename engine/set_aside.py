"""What Engram set aside as damaged, found again for ``engram doctor`` and the Memory screen:
the log says so once, these say so until the user clears it away.

A damaged database, training-model cache or anchors cache is renamed aside, never deleted
(``store.files.quarantine``), and started anew or rebuilt; a version folder that a killed
commit never recorded is renamed aside too (``engine.leftovers``). An overlay version whose
files fail their checks stays where it is, marked broken, and the profile goes back to its
newest good ancestor (``engine.memory``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from store import paths
from store.files import Quarantined, quarantined
from store.records import Profile
from store.store import Store


@dataclass(frozen=True)
class SetAside:
    what: str  # what it was
    path: str  # where it is now
    when: str  # when it was set aside ("2025-01-31 09:12 UTC"; "" where none is recorded)
    why: str  # what was wrong with it
    then: str  # what Engram did instead

    def line(self) -> str:
        when = f" on {self.when}" if self.when else ""
        return f"{self.what}: {self.path} (set aside{when}: {self.why}; {self.then})"


def found(home: Path, store: Store, profiles: list[Profile]) -> list[SetAside]:
    """What is set aside in ``home`` (for ``profiles``) and in the cache every home shares."""
    database = paths.database(home)
    items = [_moved(q, "the database", "a new, empty one was started: restore an export with "
                    f"`engram memory import`, or salvage rows with `sqlite3 {q.path} .recover`")
             for q in quarantined(home) if q.original == database]
    for profile in profiles:
        items += [_moved(q, f"a version folder of profile {profile.name}",
                         "the versions on record are unchanged")
                  for q in quarantined(paths.overlays(home, profile.name))]
    items += [_moved(q, "the training model's cache", _rebuilt(q))
              for q in quarantined(paths.twin_cache())]
    items += [_moved(q, "the anchors cache", _rebuilt(q))
              for q in quarantined(paths.anchors_cache())]
    for profile in profiles:
        for v in store.overlay_versions(profile.id):
            if v.status == "broken":
                active = store.active_overlay(profile.id, v.base_sha256)
                now = f"v{active.id}" if active else "the base model"
                items.append(SetAside(f"overlay v{v.id} of profile {profile.name}",
                                      str(home / v.path), "",
                                      v.reason or "its files failed their checks",
                                      f"kept, marked broken; its model runs on {now}"))
    return items


def notice(items: list[SetAside]) -> str:
    """One line for the Memory screen ("" when nothing is set aside)."""
    if not items:
        return ""
    dated = [item for item in items if item.when]
    latest = max(dated, key=lambda item: item.when) if dated else items[-1]
    others = f" and {len(items) - 1} more" if len(items) > 1 else ""
    return (f"⚠ set aside, never deleted: {latest.what} ({latest.then}){others}; "
            "`engram doctor` lists where, when and why")


_WHY = {"damaged": "it failed its checks", "unrecorded": "no version records it (its commit "
        "was killed)"}


def _moved(q: Quarantined, what: str, then: str) -> SetAside:
    return SetAside(what, str(q.path), q.when.strftime("%Y-%m-%d %H:%M UTC"),
                    _WHY.get(q.why, q.why), then)


def _rebuilt(q: Quarantined) -> str:
    return "rebuilt" if q.original.exists() else "rebuilt when learning next runs"
