"""Text from a user or a model, shown on a terminal: control characters (escape sequences,
NUL, bell, C1 controls) are drawn as visible symbols, so stored text can never move the
cursor, retitle the window or hide what was said. What is stored stays exactly as typed."""

from __future__ import annotations

_VISIBLE = {c: chr(0x2400 + c) for c in range(32) if chr(c) not in "\n\t"}  # ␀ ␛ ␇ …
_VISIBLE[0x7F] = "\u2421"  # ␡
_VISIBLE.update({c: f"\\x{c:02x}" for c in range(0x80, 0xA0)})


def inert(text: str) -> str:
    """``text`` with every control character but newline and tab made visible."""
    return text.translate(_VISIBLE)
