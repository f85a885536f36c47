"""Taking a returned message apart: its report text, its DSN fields, its ARF report and the
headers of the letter it returns. Pure functions over `email.message.Message`, no I/O."""

from __future__ import annotations

import email
import re
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import Message
from email.policy import compat32

_REPORT_TYPES = ("message/delivery-status", "message/global-delivery-status")
_FEEDBACK_TYPE = "message/feedback-report"
_ORIGINAL_TYPES = ("message/rfc822", "message/global", "text/rfc822-headers", "message/rfc822-headers",
                   "text/rfc822-header", "message/global-headers")
# Where a text bounce starts quoting the returned letter: everything below is not report text.
_QUOTE_MARKER = re.compile(
    r"^[ \t>]*(?:-{2,}[ \t]*)?(?:"
    r"this is a copy of the message|below this line is a copy of the message|"
    r"original message (?:follows|headers?)|"
    r"(?:the )?original message(?:[ \t]*-{2,}|:?[ \t]*$)|"
    r"returned message follows|unsent message below|message text follows|"
    r"(?:the )?(?:text|headers?) of (?:the|your) (?:original|returned)? ?message|"
    r"rfc822 headers of (?:the )?original message|"
    r"undelivered message (?:attached|follows)|"
    r"start of returned message|-{3,}[ \t]*returned message[ \t]*-{3,}|message headers follow|content-type: message/rfc822"
    r")",
    re.I | re.M,
)
FIELD_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9-]*):[ \t]*(.*)$")


class NotAMessage(ValueError):
    """The bytes are no RFC 5322 message (no header fields at the start)."""


def parse(raw: bytes | str) -> Message:
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    return email.message_from_bytes(raw, policy=compat32)


def read_message(raw: bytes) -> Message:
    """Parse, refusing what is plainly not a message: no header fields, or binary data."""
    head = raw[:8192].split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
    if b"\0" in head:
        raise NotAMessage("it is binary data, not a message")
    message = parse(raw)
    if not message.keys():
        raise NotAMessage("it does not start with header fields (From:, Subject:, …)")
    return message


def header_text(value: object) -> str:
    """A header as readable text (RFC 2047 words decoded), never raising."""
    if value is None:
        return ""
    try:
        return str(make_header(decode_header(str(value))))
    except Exception:  # malformed encoded words: keep them as they are
        return str(value)


def part_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if payload is None:
        inner = part.get_payload()
        return inner if isinstance(inner, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


def _flatten_report(part: Message) -> str:
    """A delivery-status or feedback part as field lines, however the parser split it."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return "\n\n".join(block.as_string().strip() for block in payload)
    return part_text(part)


@dataclass
class Anatomy:
    """The parts of a returned message that the detectors read."""

    message: Message
    report: str = ""  # human-readable text written by the reporting MTA
    status_blocks: list[str] = field(default_factory=list)  # message/delivery-status bodies
    feedback: str = ""  # message/feedback-report body
    original: list[Message] = field(default_factory=list)  # returned letter(s) or their headers
    quoted: str = ""  # the returned letter as quoted inline in a text bounce


def dissect(message: Message) -> Anatomy:
    anatomy = Anatomy(message)
    texts: list[str] = []

    def walk(part: Message) -> None:
        ctype = part.get_content_type()
        if ctype in _REPORT_TYPES:
            anatomy.status_blocks.append(_flatten_report(part))
        elif ctype == _FEEDBACK_TYPE:
            anatomy.feedback += _flatten_report(part) + "\n"
        elif ctype in _ORIGINAL_TYPES:
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                anatomy.original.append(payload[0])
            else:
                anatomy.original.append(email.message_from_string(part_text(part).lstrip(), policy=compat32))
        elif part.is_multipart():
            for sub in part.get_payload():
                walk(sub)
        elif part.get_content_maintype() == "text" or not part.get_content_type().startswith(("image/", "application/")):
            text = part_text(part)
            if part.get_content_subtype() == "html":
                text = html_to_text(text)
            texts.append(text)

    walk(message)
    report = "\n".join(texts)
    if re.search(r"(?im)^-*\s*(?:begin )?forwarded message", report):
        report = re.sub(r"(?m)^> ?", "", report)  # a bounce forwarded by a person: read it unquoted
    marker = _QUOTE_MARKER.search(report)
    if marker:
        anatomy.quoted = report[marker.end():]
        report = report[: marker.start()]
    anatomy.report = report
    return anatomy


def html_to_text(text: str) -> str:
    text = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", text)
    text = re.sub(r"(?i)<br\s*/?>|</p>|</div>|</tr>|</li>", "\n", text)
    text = re.sub(r"<[^>]+>", " ", text)
    return (text.replace("&lt;", "<").replace("&gt;", ">").replace("&nbsp;", " ")
            .replace("&quot;", '"').replace("&amp;", "&"))


def field_blocks(text: str) -> list[dict[str, str]]:
    """RFC 822-style field blocks separated by blank lines, folded lines joined.

    Keys are lower-case; a repeated field keeps its first value.
    """
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last: str | None = None
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
            current, last = {}, None
            continue
        if line[:1] in " \t" and last is not None:
            current[last] += " " + line.strip()
            continue
        match = FIELD_LINE.match(line)
        if match:
            name = match.group(1).lower()
            if name in current:
                last = None  # a repeat: ignore it and its continuation lines
            else:
                current[name], last = match.group(2).strip(), name
        else:
            last = None
    if current:
        blocks.append(current)
    return blocks
