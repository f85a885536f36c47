"""MIME text assembled by hand: pure functions, no I/O.

The stdlib ``email`` package builds a message about ten times slower than plain string
assembly with binascii's C encoders, and the agent builds every letter itself, so the
few MIME rules a newsletter needs are spelled out here instead. Every output line ends
in CRLF and stays far below the 998-character limit of RFC 5322.
"""

from __future__ import annotations

import binascii
import re
from html.parser import HTMLParser

CRLF = "\r\n"
ENCODINGS = ("7bit", "quoted-printable", "base64")

# RFC 5322 atext plus space: such a display name needs no quoting.
_ATEXT_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]*\Z")
# A plain ASCII dot-atom address; anything else is refused before it reaches SMTP.
_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\Z"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_B64_LINE = 76
_ONE_WORD_BYTES = 42  # -> a 68-character word: after "Subject: " still within 78
_WORD_BYTES = 39  # -> 52 base64 chars; "=?utf-8?b??=" makes 64: a line with "Subject: " stays within 78


def is_address(value: str) -> bool:
    return len(value) <= 254 and _ADDRESS.match(value) is not None


def one_line(value: str) -> str:
    """Header text from a template or a field: control characters (CR, LF, tabs) become one space,
    so no recipient field can inject a header."""
    return _CONTROL.sub(" ", value).strip()


def encoded_words(text: str) -> str:
    """RFC 2047 'B' encoded words for ``text``, folded one word per line.

    Text of up to 45 bytes is one word. Longer text is cut after a space where one is
    near (the space stays inside the word before the cut: decoders drop the folding
    whitespace between two encoded words), and never inside a character.
    """
    if len(text.encode("utf-8")) <= _ONE_WORD_BYTES:
        return _b_word(text)
    words = []
    chunk: list[str] = []
    size = 0
    after_space = 0  # chunk length just after its last space
    for ch in text:
        n = len(ch.encode("utf-8"))
        if size + n > _WORD_BYTES and chunk:
            cut = after_space if after_space > len(chunk) // 2 else len(chunk)
            words.append(_b_word("".join(chunk[:cut])))
            chunk = chunk[cut:]
            size = len("".join(chunk).encode("utf-8"))
            after_space = 0
        chunk.append(ch)
        size += n
        if ch == " ":
            after_space = len(chunk)
    if chunk:
        words.append(_b_word("".join(chunk)))
    return (CRLF + " ").join(words)


def _b_word(text: str) -> str:
    return "=?utf-8?b?" + binascii.b2a_base64(text.encode("utf-8"), newline=False).decode("ascii") + "?="


def header_text(value: str) -> str:
    """An unstructured header value (Subject): plain when it is short printable ASCII that no
    reader could take for an encoded word, else RFC 2047."""
    if value.isascii() and "=?" not in value:
        return value if len(value) <= 70 else _fold_ascii(value)
    return encoded_words(value)


def _fold_ascii(value: str) -> str:
    """Fold long ASCII text at spaces; a word too long to fold goes RFC 2047 instead."""
    lines, line = [], ""
    for word in value.split(" "):
        if len(word) > 900:
            return encoded_words(value)
        if line and len(line) + 1 + len(word) > 70:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return (CRLF + " ").join(lines)


def format_address(name: str | None, address: str) -> str:
    """``Name <addr>`` with the name left bare, quoted or RFC 2047-encoded as it needs."""
    name = one_line(name) if name else ""
    if not name:
        return address
    if name.isascii():
        if "=?" in name:
            name = encoded_words(name)
        elif not _ATEXT_PHRASE.match(name):
            name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if len(name) > 900:
            name = encoded_words(name)
    else:
        name = encoded_words(name)
    last_line = len(name) - name.rfind("\n") - 1
    separator = " " if last_line + len(address) < 64 else CRLF + " "  # header lines within 78 characters
    return f"{name}{separator}<{address}>"


def crlf_lines(text: str) -> str:
    """Every line break as CRLF, and a final one."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\n", CRLF)
    return text if text.endswith(CRLF) else text + CRLF


def encode_body(text: str, encoding: str) -> tuple[str, str]:
    """Return (Content-Transfer-Encoding, encoded body with CRLF lines).

    7bit needs ASCII lines of at most 998 characters; a part that is not goes out
    quoted-printable instead, so a stray accent never breaks a letter.
    """
    text = crlf_lines(text)
    if encoding == "7bit":
        if text.isascii() and "\0" not in text and (len(text) <= 998 or _short_lines(text)):
            return "7bit", text
        encoding = "quoted-printable"
    data = text.encode("utf-8")
    if encoding == "quoted-printable":
        # istext: line breaks stay hard breaks; the CRLF of the first line makes soft breaks CRLF too
        qp = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False).decode("ascii")
        if " \r\n" in text or "\t\r\n" in text:  # the only input that makes b2a_qp overrun
            qp = _rewrap_qp(qp)
        return encoding, qp
    if encoding == "base64":
        flat = binascii.b2a_base64(data, newline=False).decode("ascii")
        return encoding, CRLF.join([flat[i:i + _B64_LINE] for i in range(0, len(flat), _B64_LINE)]) + CRLF
    raise ValueError(f"unknown encoding {encoding!r} (use one of {', '.join(ENCODINGS)})")


def _rewrap_qp(qp: str) -> str:
    """b2a_qp lets a line that ends in an encoded space ("=20") reach 77 characters; RFC 2045
    allows 76. Split such lines with a soft break, never inside an =XX escape."""
    out = []
    for line in qp.split(CRLF):
        while len(line) > 76:
            cut = 75
            if line[cut - 1] == "=":
                cut -= 1
            elif line[cut - 2] == "=":
                cut -= 2
            out.append(line[:cut] + "=")
            line = line[cut:]
        out.append(line)
    return CRLF.join(out)


def _short_lines(text: str) -> bool:
    return all(len(line) <= 998 for line in text.split(CRLF))


def body_part_headers(subtype: str, cte: str) -> str:
    return f"Content-Type: text/{subtype}; charset=utf-8{CRLF}Content-Transfer-Encoding: {cte}{CRLF}"


def assemble(headers: str, text: tuple[str, str] | None, html: tuple[str, str] | None, boundary: str) -> str:
    """The message from a header block (CRLF-terminated lines) and encoded (cte, body) parts.

    The CRLF in front of a boundary line belongs to the boundary (RFC 2046), so an extra
    one keeps each part's own final line break.
    """
    if text is not None and html is not None:
        return "".join((
            headers,
            f'Content-Type: multipart/alternative; boundary="{boundary}"{CRLF}{CRLF}',
            f"--{boundary}{CRLF}", body_part_headers("plain", text[0]), CRLF, text[1],
            f"{CRLF}--{boundary}{CRLF}", body_part_headers("html", html[0]), CRLF, html[1],
            f"{CRLF}--{boundary}--{CRLF}",
        ))
    part, subtype = (text, "plain") if text is not None else (html, "html")
    assert part is not None
    return headers + body_part_headers(subtype, part[0]) + CRLF + part[1]


# -- a text/plain alternative from an HTML body ---------------------------------------------
_SKIP = frozenset({"head", "style", "script", "title", "template", "noscript"})
_BLOCK = frozenset({"p", "div", "section", "article", "header", "footer", "main", "table", "tr", "ul", "ol",
                    "blockquote", "pre", "h1", "h2", "h3", "h4", "h5", "h6", "center", "address", "form"})
_SPACES = re.compile(r"\s+")


class _TextParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skipping = 0
        self.links: list[tuple[str, int]] = []  # (href, len(out) at <a>)

    def _break(self, blank: bool) -> None:
        self.out.append("\n\n" if blank else "\n")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skipping += 1
        elif tag in _BLOCK:
            self._break(blank=True)
        elif tag == "br":
            self._break(blank=False)
        elif tag == "li":
            self.out.append("\n- ")
        elif tag == "hr":
            self.out.append("\n\n----\n\n")
        elif tag in ("td", "th"):
            self.out.append(" ")
        elif tag == "a":
            self.links.append((dict(attrs).get("href") or "", len(self.out)))
        elif tag == "img":
            alt = (dict(attrs).get("alt") or "").strip()
            if alt:
                self.out.append(alt)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _SKIP:
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in _BLOCK:
            self._break(blank=True)
        elif tag == "a" and self.links:
            href, start = self.links.pop()
            label = _SPACES.sub(" ", "".join(self.out[start:])).strip()
            if href and not href.startswith("#") and href != label:
                self.out.append(f" ({href})" if label else href)

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.out.append(_SPACES.sub(" ", data))


def text_from_html(html: str) -> str:
    """The words of an HTML body as plain text, for the text/plain alternative of a letter that
    has only HTML: paragraphs and headings become blank-line-separated blocks, list items "- ",
    a link "label (URL)"; head, style and script are dropped. Pure and forgiving of bad HTML."""
    parser = _TextParser()
    parser.feed(html)
    parser.close()
    lines = [line.strip() for line in "".join(parser.out).split("\n")]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text).strip("\n")
    return text + "\n" if text else ""
