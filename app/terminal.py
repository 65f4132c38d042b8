"""Text from a user or a model, shown on a terminal (plain or the TUI): control characters
(escape sequences, NUL, bell, C1 controls) are drawn as visible symbols, so stored text can
never move the cursor, retitle the window or hide what was said. What is stored stays exactly
as typed. The TUI also never passes such text as Rich/Textual markup: it goes in as plain
``Content``."""

from __future__ import annotations

_VISIBLE = {c: chr(0x2400 + c) for c in range(32) if chr(c) not in "\n\t"}  # ␀ ␛ ␇ …
_VISIBLE[0x7F] = "\u2421"  # ␡
_VISIBLE.update({c: f"\\x{c:02x}" for c in range(0x80, 0xA0)})


def inert(text: str) -> str:
    """``text`` with every control character but newline and tab made visible (a Windows line
    end is a newline)."""
    return text.replace("\r\n", "\n").translate(_VISIBLE)


def duration(seconds: float) -> str:
    """A rough length of time, as a person says it: "40 s", "3 min", "1 h 5 min"."""
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"
