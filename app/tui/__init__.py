"""The Textual TUI: ``engram`` with no arguments, or ``engram chat``."""

from __future__ import annotations

from store.store import StoreError


def run_tui(engine, session_id: int | None = None, private: bool = False) -> int:
    """Run the TUI until the user quits; returns the exit code. Closes the engine."""
    from app.tui.app import EngramApp

    try:
        if session_id is not None and session_id not in {s.id for s in engine.sessions()}:
            raise StoreError(f"no session {session_id} in profile '{engine.profile.name}': "
                             "`engram sessions` lists them")
        app = EngramApp(engine, session_id=session_id, private=private)
        app.run()
        return app.return_code or 0
    finally:
        engine.close()
