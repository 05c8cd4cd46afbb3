"""Terminal output of the management commands: aligned tables, details, one-line errors.

Names, paths and messages come from the daemon, and file names come from anyone who can write
to a watched directory: printed raw, `ESC ] 0 ; … BEL` retitles the terminal and `ESC [ 2 J`
clears it (issue #11 item 15). Every cell, line and error is escaped here, C0/C1 controls and
the bidirectional overrides that reorder what is shown ("Trojan source"); JSON output keeps the
values intact and writes those characters as `\\uNNNN`.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Sequence
from typing import Any

__all__ = [
    "UsageError",
    "cell",
    "config_text",
    "details",
    "dump",
    "err",
    "escape",
    "json_text",
    "out",
    "table",
]


class UsageError(Exception):
    """A bad argument found after parsing (exit 2, one line)."""


MAX_CELL = 48
# C0 and C1 controls, DEL, line/paragraph separators and the bidi embedding/override/isolate
# marks: what a terminal or a bidi renderer acts on instead of showing.
_UNSAFE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


def _shown(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str, *, newlines: bool = False) -> str:
    """`text` with every unsafe character as `\\xNN` / `\\uNNNN` (`newlines`: keep "\\n")."""
    if newlines:
        return "\n".join(_UNSAFE.sub(_shown, line) for line in text.split("\n"))
    return _UNSAFE.sub(_shown, text)


_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL, C1


def _u(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def json_text(data: Any) -> str:
    """Indented JSON whose strings hold no raw control or bidi character (valid JSON)."""
    return config_text(json.dumps(data, indent=2, ensure_ascii=False), bidi=True)


def config_text(text: str, *, bidi: bool) -> str:
    """TOML or YAML text for a terminal: raw controls (and bidi marks) as `\\uNNNN`.

    The writers put such characters only inside double-quoted strings, where `\\uNNNN` means
    the same character, so the text still loads to the same values. YAML may write a bidi
    mark unquoted (it is printable there), so `bidi=False` leaves those alone.
    """
    unsafe = _UNSAFE if bidi else _CONTROLS
    return "\n".join(unsafe.sub(_u, line) for line in text.split("\n"))


def out(text: str = "") -> None:
    """One or more lines on stdout (newlines kept, every other unsafe character escaped)."""
    sys.stdout.write(escape(text, newlines=True) + "\n")


def err(text: str) -> None:
    """One line on stderr, `watcherd: …`: newlines in the message are escaped too."""
    sys.stderr.write(f"watcherd: {escape(text)}\n")


def dump(data: Any) -> None:
    out(json_text(data))


def cell(value: Any, tty: bool) -> str:
    """A table cell: "-" for nothing, JSON for containers, whitespace runs as one space."""
    if value is None or value == "":
        text = "-"
    elif isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False)
    else:
        text = " ".join(str(value).split())  # newlines and tabs would break the row
    text = escape(text)
    if tty and len(text) > MAX_CELL:
        text = text[: MAX_CELL - 1] + "…"
    return text


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str) -> None:
    """An aligned table (cut to the terminal's width on a TTY), or `empty` when no rows."""
    if not rows:
        out(empty)
        return
    tty = sys.stdout.isatty()
    cells = [[cell(v, tty) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    for line in [list(headers), *cells]:
        text = "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        if tty:
            text = text[: shutil.get_terminal_size().columns]
        out(text)


def details(data: dict[str, Any]) -> None:
    """`key  value` lines of one object."""
    width = max((len(escape(k)) for k in data), default=0)
    for key, value in data.items():
        out(f"{escape(key).ljust(width)}  {cell(value, False)}")
