"""Untrusted text (the user's, the model's, file paths) made safe to show in the terminal.

Control characters would move the cursor or switch terminal modes, so each becomes its
visible Unicode "control picture" (ESC shows as ␛). Newlines and tabs are kept. Callers
still never pass such text as Rich/Textual markup: it goes in as plain ``Content``.
"""

from __future__ import annotations

_KEPT = {"\n", "\t"}
_PICTURES = {code: chr(0x2400 + code) for code in range(32) if chr(code) not in _KEPT}
_PICTURES[0x7F] = "\u2421"  # DEL
_PICTURES.update({code: "\ufffd" for code in range(0x80, 0xA0)})  # C1 controls


def visible(text: str) -> str:
    """``text`` with every control character replaced by a printable stand-in."""
    return text.replace("\r\n", "\n").translate(_PICTURES)
