"""Text an agent sent, made fit to keep and to show.

A worker's root may put anything in what its agent answers: markup (the pages escape it: Jinja's
autoescape, never `|safe`), terminal escapes, NULs (which PostgreSQL refuses in text), lone
surrogates, bidirectional overrides, and megabytes of it. The panel says what failed in its own
words and keeps at most a short, cleaned excerpt of what the agent said.
"""

from __future__ import annotations

import re

EXCERPT_CHARS = 300  # of an agent's error text, quoted in the panel's own message
REPLY_CHARS = 2000  # of a receiving server's reply the agent reports for a letter
RAW_BYTES = 64 * 1024  # of a returned message kept (its headers and the DSN part come first)

# C1 controls, zero-width and bidirectional formatting marks, lone surrogates; and C0 controls.
_FORMATTING = "\x7f-\x9f\u200b-\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_UNSHOWABLE = re.compile(f"[\x00-\x1f{_FORMATTING}]+")
_UNSHOWABLE_IN_BLOCK = re.compile(f"[\x00-\x08\x0b-\x1f{_FORMATTING}]+")  # tabs and line feeds stay
# In a raw message only what no database or reader wants: NULs and lone surrogates.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def one_line(text: str, limit: int) -> str:
    """The text on one line, controls turned to spaces, cut to `limit` characters (… marks a cut)."""
    text = " ".join(_UNSHOWABLE.sub(" ", text[: limit * 4]).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def text_block(text: str, limit: int) -> str:
    """The text with its lines kept but every other control removed, cut to `limit` characters."""
    text = _UNSHOWABLE_IN_BLOCK.sub("", text[: limit * 4])
    return text if len(text) <= limit else text[: limit - 1] + "…"


def quoted(text: object, limit: int = EXCERPT_CHARS) -> str:
    """A short excerpt of what an agent said, in quotes, to follow the panel's own words."""
    return '"' + one_line(text if isinstance(text, str) else repr(text)[: limit * 4], limit) + '"'


def reply_text(value: object) -> str | None:
    """A receiving server's reply as the agent reported it, or None if it is no text."""
    if not isinstance(value, str):
        return None
    return one_line(value, REPLY_CHARS) or None


def storable(text: str) -> str:
    """The text without what no database takes (NULs, lone surrogates): each becomes U+FFFD."""
    return _UNSTORABLE.sub("\ufffd", text)


def raw_message(text: str) -> str:
    """A returned message as it is kept: at most RAW_BYTES of UTF-8, with a note when cut."""
    text = storable(text)
    data = text.encode("utf-8")
    if len(data) <= RAW_BYTES:
        return text
    kept = data[:RAW_BYTES].decode("utf-8", "ignore")
    return kept + f"\n\n[Mailfleet kept the first {RAW_BYTES} bytes of this message; it was cut from {len(data)}]\n"
