"""Deciding what a returned message says, by a table of detectors tried in order.

Each detector takes the dissected message and returns verdicts, or None when the message is
not of its kind; the first that answers wins:

1. feedback   — an ARF report (RFC 5965): kind none, reason feedback, the complained-about address
2. ses        — Amazon SES notifications (JSON) mailed to the sender
3. dsn        — RFC 3464 delivery-status fields: one verdict per recipient block
4. vacation   — an auto-reply from a person's mailbox: kind none
5. text       — the human-written bounces of qmail, Exim, Sendmail, Exchange, Lotus, …:
                recipients found by their line shapes, reasons by their words
6. fallback   — a failure we cannot read: the returned letter's To, reason undefined, soft;
                anything else: kind none, reason nofailure

(VERP comes before all of them, outside this package: the panel knows the delivery, and so
the address, from the return path's token.)
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from email import message_from_string
from email.message import Message
from email.policy import compat32
from email.utils import getaddresses
from typing import Callable

from .message import Anatomy, dissect, field_blocks, header_text, parse
from .reasons import find_reply_code, find_status, kind_for, reason_for, reason_from_status, reason_from_text, refine

ADDRESS = re.compile(
    r"(?:\"[^\"\r\n]{1,64}\"|[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.+[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\.?)"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}"
)
# Mailboxes that send reports, never ones a campaign writes to.
_SYSTEM_LOCAL = re.compile(r"^(?:mailer-daemon|postmaster|mail-daemon|mailerdaemon|root|daemon|nobody|noreply|no-reply"
                           r"|bounces|abuse|fbl|feedback.*|double-bounce)$", re.I)
COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus"})  # a person said: this is unwanted


@dataclass
class Verdict:
    recipient: str | None
    reason: str
    kind: str  # hard | soft | none
    dsn: str | None = None  # enhanced status code, e.g. 5.1.1
    code: int | None = None  # SMTP reply code, e.g. 550
    diagnostic: str | None = None
    original_recipient: str | None = None
    feedback_type: str | None = None  # for ARF reports: abuse, fraud, auth-failure, not-spam, …
    action: str | None = None  # a DSN's Action: failed, delayed (still being tried), …

    @property
    def complaint(self) -> bool:
        """An ARF report of unwanted mail: kind none here, but the panel suppresses the address."""
        return self.reason == "feedback" and (self.feedback_type or "abuse") in COMPLAINT_TYPES

    def as_json(self) -> dict:
        data = {key: value for key, value in asdict(self).items() if value is not None}
        data.setdefault("recipient", None)
        if self.kind == "none":  # the CLI contract: a non-failure names nobody as failed
            if self.recipient:
                data["original_recipient"] = data.get("original_recipient") or self.recipient
            data["recipient"] = None
        return {"recipient": data.pop("recipient"), "reason": data.pop("reason"), "kind": data.pop("kind"), **data}


def suppression_for(verdict: Verdict) -> str | None:
    """The suppression-list reason a verdict calls for at once: hard_bounce, complaint or None.

    Soft bounces are not suppressed here: the panel counts them (BOUNCE_SOFT_LIMIT in a row).
    """
    if verdict.kind == "hard":
        return "hard_bounce"
    if verdict.complaint:
        return "complaint"
    return None


def normalise(address: str | None) -> str | None:
    if not address:
        return None
    address = address.strip().strip("<>").strip()
    if ";" in address[:12]:  # rfc822; user@host
        address = address.split(";", 1)[1].strip().strip("<>").strip()
    address = address.strip("'\".,:;()[]<>") if not address.startswith('"') else address.rstrip(".,:;()[]<>")
    if "@" not in address:
        return None
    local, _, domain = address.rpartition("@")
    if not local or "." not in domain:
        return None
    return f"{local}@{domain.lower()}"


def _addresses(text: str) -> list[str]:
    seen: list[str] = []
    for match in ADDRESS.finditer(text):
        address = normalise(match.group(0))
        if address and address not in seen:
            seen.append(address)
    return seen


def _system(address: str) -> bool:
    return bool(_SYSTEM_LOCAL.match(address.rpartition("@")[0]))


def _header_addresses(message: Message, *names: str) -> list[str]:
    values = [header_text(value) for name in names for value in message.get_all(name, [])]
    found = [normalise(address) for _, address in getaddresses(values)]
    return [address for address in found if address]


def _original_headers(anatomy: Anatomy) -> Message | None:
    if anatomy.original:
        return anatomy.original[0]
    if anatomy.quoted:
        return message_from_string(anatomy.quoted.lstrip("\r\n -"), policy=compat32)
    return None


def _original_to(anatomy: Anatomy) -> list[str]:
    original = _original_headers(anatomy)
    if original is None:
        return []
    return [a for a in _header_addresses(original, "To", "Cc") if not _system(a)]


def _senders(anatomy: Anatomy) -> set[str]:
    """Addresses that are the bounce's own or the original sender's: never the failed recipient."""
    message = anatomy.message
    senders = set(_header_addresses(message, "From", "To", "Return-Path", "Reply-To", "Sender"))
    original = _original_headers(anatomy)
    if original is not None:
        senders |= set(_header_addresses(original, "From", "Return-Path", "Sender", "Reply-To"))
    return senders


def _verdict(recipient: str | None, text: str, status: str | None = None, code: int | None = None,
             reason: str | None = None, original: str | None = None) -> Verdict:
    status = status or find_status(text)
    code = code or find_reply_code(text)
    reason = reason or reason_for(text, status, code)
    return Verdict(recipient=recipient, reason=reason, kind=kind_for(reason, status, code), dsn=status, code=code,
                   diagnostic=" ".join(text.split())[:500] or None, original_recipient=original)


# 1. ARF feedback reports ---------------------------------------------------------------------

def _values(text: str, name: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(rf"(?im)^{re.escape(name)}:[ \t]*(.+)$", text)]


def detect_feedback(anatomy: Anatomy) -> list[Verdict] | None:
    report = anatomy.feedback
    if not report:
        hotmail = _hotmail_complaint(anatomy)
        if hotmail:
            return hotmail
        report_type = anatomy.message.get_param("report-type", header="content-type") or ""
        if str(report_type).lower() != "feedback-report" and not re.search(r"(?im)^feedback-type:", anatomy.report):
            return None
        report = anatomy.report
    feedback_type = (_values(report, "Feedback-Type") or ["abuse"])[0].lower()
    recipients = [normalise(v) for v in _values(report, "Original-Rcpt-To")]
    recipients = [r for r in recipients if r] or _original_to(anatomy)
    if not recipients:
        recipients = [r for r in _addresses(report) if not _system(r)][:1] or [None]
    return [Verdict(recipient=r, reason="feedback", kind="none", feedback_type=feedback_type) for r in recipients]


def _hotmail_complaint(anatomy: Anatomy) -> list[Verdict] | None:
    """Outlook.com's feedback loop: the reported letter attached, its recipient in a header of its own."""
    for original in anatomy.original:
        recipient = normalise(original.get("X-HmXmrOriginalRecipient"))
        if recipient:
            return [Verdict(recipient=recipient, reason="feedback", kind="none", feedback_type="abuse")]
    return None


# 2. Amazon SES notifications (JSON in the body) ----------------------------------------------

_SES_TYPE = re.compile(r'"(?:notificationType|eventType)"\s*:\s*"(\w+)"')
_SES_RECIPIENT = re.compile(r'\{\s*"emailAddress"\s*:\s*"([^"]+)"((?:\s*,\s*"\w+"\s*:\s*"[^"]*")*)')
_SES_FIELD = re.compile(r'"(\w+)"\s*:\s*"([^"]*)"')


def detect_ses(anatomy: Anatomy) -> list[Verdict] | None:
    kind = _SES_TYPE.search(anatomy.report)
    if not kind:
        return None
    body = anatomy.report[kind.start():]
    section = {"Bounce": "bouncedRecipients", "Complaint": "complainedRecipients", "Delivery": "recipients"}
    start = body.find(f'"{section.get(kind.group(1), "-")}"')
    if start < 0:
        return None
    end = body.find("]", start)
    if kind.group(1) == "Delivery":  # a success: its recipients are plain strings, never a failure
        found = re.findall(r'"([^"\s]+@[^"\s]+)"', body[start:end if end > 0 else None])
        return [Verdict(recipient=normalise(r), reason="delivered", kind="none") for r in found] or \
            [Verdict(recipient=None, reason="delivered", kind="none")]
    verdicts = []
    for match in _SES_RECIPIENT.finditer(body[start:end if end > 0 else None]):
        recipient, fields = normalise(match.group(1)), dict(_SES_FIELD.findall(match.group(2)))
        if kind.group(1) == "Complaint":
            verdicts.append(Verdict(recipient=recipient, reason="feedback", kind="none", feedback_type="abuse"))
        else:
            verdicts.append(_verdict(recipient, _diagnostic(fields.get("diagnosticCode", "")), fields.get("status")))
    return verdicts or None


# 3. RFC 3464 delivery-status ----------------------------------------------------------------

_DELIVERED = frozenset({"delivered", "relayed", "expanded"})


def _diagnostic(value: str) -> str:
    return re.sub(r"^\s*(?:smtp|x-[\w-]+|x-unix)\s*;\s*", "", value or "", flags=re.I)


def detect_dsn(anatomy: Anatomy) -> list[Verdict] | None:
    sources = anatomy.status_blocks or ([anatomy.report] if re.search(r"(?im)^final-recipient:", anatomy.report) else [])
    blocks = [b for text in sources for b in field_blocks(text) if "final-recipient" in b or "original-recipient" in b]
    if not blocks:
        return None
    failures, delivered = [], []
    named = [r for r in (normalise(b.get("final-recipient")) or normalise(b.get("original-recipient")) for b in blocks) if r]
    sections = dict(_sections(anatomy.report, list(dict.fromkeys(named)))) if named else {}
    for block in blocks:
        final = normalise(block.get("final-recipient"))
        original = normalise(block.get("original-recipient"))
        action = block.get("action", "").split()[0].lower() if block.get("action") else ""
        status = find_status(block.get("status", ""))
        diagnostic = _diagnostic(block.get("diagnostic-code", ""))
        recipient = final or original or (_text_recipients(anatomy) or [None])[0]
        if action in _DELIVERED or (not action and status and status.startswith("2")):
            delivered.append(Verdict(recipient=recipient, reason="delivered", kind="none", dsn=status))
            continue
        code = find_reply_code(diagnostic)
        near = sections.get(recipient, anatomy.report) if recipient else anatomy.report
        context = f"{diagnostic}\n{near}"
        # The diagnostic's words first; then a specific status code; then the report's words.
        said = find_status(diagnostic) or status
        reason = refine(reason_from_text(diagnostic), diagnostic, said, context)
        if reason is None and status and not status.endswith(".0.0") and status.split(".")[1] != "5":
            reason = reason_from_status(status)
        if reason is None:
            reason = refine(reason_from_text(near), near, said, context) or reason_for("", status, code)
        if action == "delayed" and kind_for(reason, status, code) != "soft":
            reason = "expired"  # still being tried: whatever it says, not final
        verdict = _verdict(recipient, diagnostic or near, status, code, reason,
                           original if original != recipient else None)
        verdict.action = action or None
        failures.append(verdict)
    return failures or delivered


# 4. auto-replies -----------------------------------------------------------------------------

_AUTOREPLY_SUBJECT = re.compile(r"(?i)^(?:auto(?:matic)?[ -]?(?:reply|response|antwort)|out of (?:the )?office|"
                                r"abwesenheit|absence|vacation|away from|on holiday|autoreply|auto:|"
                                r"r[ée]ponse automatique|respuesta autom)")


def detect_vacation(anatomy: Anatomy) -> list[Verdict] | None:
    message = anatomy.message
    sender = (_header_addresses(message, "From") or [""])[0]
    if not sender or _system(sender):
        return None
    subject = header_text(message.get("Subject", "")).strip()
    auto = str(message.get("Auto-Submitted", "")).lower().startswith("auto-replied")
    marked = any(message.get(name) for name in ("X-Autoreply", "X-Autorespond", "X-Vacation")) or \
        str(message.get("Precedence", "")).lower() == "auto_reply"
    if ((auto or marked) and not anatomy.original and not _FAILURE_WORDS.search(subject)) or \
            _AUTOREPLY_SUBJECT.search(subject):
        return [Verdict(recipient=sender, reason="vacation", kind="none")]
    return None


_CHALLENGE = re.compile(r"(?i)(confirm (?:that )?you are (?:a )?(?:human|real person)|"
                        r"verify (?:that )?you are (?:a )?(?:human|real person)|\bTMDA\b|spam ?arrest|boxbe|"
                        r"challenge[- ]response|sender verification request)")


def detect_challenge(anatomy: Anatomy) -> list[Verdict] | None:
    """A challenge-response (TMDA, SpamArrest, Boxbe) asks the sender to prove they are human: the
    letter waits, nothing failed, so nobody may be suppressed whatever failure words it uses."""
    sender = (_header_addresses(anatomy.message, "From") or [""])[0]
    if anatomy.status_blocks or anatomy.feedback or not sender or _system(sender):
        return None
    subject = header_text(anatomy.message.get("Subject", ""))
    if _CHALLENGE.search(subject) or _CHALLENGE.search(anatomy.report[:4000]):
        return [Verdict(recipient=sender, reason="challenge", kind="none")]
    return None


# 5. human-written text bounces ---------------------------------------------------------------

_A = r"(?<![^\s<\"'(\[:;,])<?([^<>\s\"'(),;:]+@[^<>\s\"'(),;:]+)>?"  # an address, as a whole word
# Line shapes that name a failed recipient, strongest first: (shape, strong). Group 1 is the
# address. A strong shape is believed even when the address also sent or received the bounce.
_RECIPIENT_LINES: list[tuple[re.Pattern[str], bool]] = [
    (re.compile(r"(?m)^[ \t]*<([^<>\s]+@[^<>\s]+)>[ \t]*:"), True),  # qmail: <user@host>:
    (re.compile(r"(?im)(?:error|failed|problem) (?:delivering|sending) your (?:mail|message) to " + _A), True),
    (re.compile(r"(?im)rcpt to:?\s*" + _A), True),  # SMTP transcript
    (re.compile(r"(?m)^[ \t]*(?:[45]\d\d[ -])?" + _A + r"\.{3}[ \t]"), True),  # sendmail: user@host... reason
    (re.compile(r"(?m)^[ \t]*\"?" + _A + r"\"?:(?:[ \t]|$)"), True),  # user@host: reason
    (re.compile(r"(?m)^[ \t]*" + _A + r"[ \t]+(?:on \w{3}, |\S.*\b(?:[45]\d\d|[45]\.\d\.\d)\b)"), True),
    (re.compile(r"(?m)^[ \t]+" + _A + r"[ \t]*(?:\(.*\))?[ \t]*:?[ \t]*$"), False),  # Exim: the address alone
    (re.compile(r"(?im)^[ \t]*(?:recipient|original recipient|to|addressee|failed recipient|rcpt|"
                r"unknown user|bad address|address)[ \w-]*:[ \t]*[^<\r\n]*?" + _A + r"[\s\"]*$"), False),
]


def _text_recipients(anatomy: Anatomy) -> list[str]:
    failed = _header_addresses(anatomy.message, "X-Failed-Recipients")
    if failed:
        return failed
    senders = _senders(anatomy)
    report = anatomy.report

    def matches(shape: re.Pattern[str], strong: bool) -> list[tuple[int, str]]:
        found = []
        for match in shape.finditer(report):
            address = normalise(match.group(1))
            if address and ADDRESS.fullmatch(address) and (strong or address not in senders) and not _system(address):
                found.append((match.start(1), address))
        return found

    # Every strong shape together, in the order the text names them; else the first weak one.
    strong = sorted(hit for shape, is_strong in _RECIPIENT_LINES if is_strong for hit in matches(shape, True))
    if strong:
        return list(dict.fromkeys(address for _, address in strong))
    for shape, is_strong in _RECIPIENT_LINES:
        weak = matches(shape, False) if not is_strong else []
        if weak:
            return list(dict.fromkeys(address for _, address in weak))
    message_ids = {normalise(m) for m in re.findall(r"(?im)^[> \t]*(?:message-id|in-reply-to|references):\s*<([^>\s]+)>", report)}
    loose = [a for a in _addresses(report) if a not in senders and a not in message_ids and not _system(a)]
    return loose[:1] or _original_to(anatomy)


_FAILURE_WORDS = re.compile(
    r"(?i)undeliver|not (?:be )?deliver|delivery (?:has )?failed|failure notice|returned mail|could not be delivered|"
    r"permanent (?:error|fatal)|mail delivery (?:failed|system)|delivery status notification|error|failed|rejected|"
    r"unable to deliver|non-?delivery|bounce|mailer-daemon|unknown"
)


def _looks_failed(anatomy: Anatomy) -> bool:
    message = anatomy.message
    subject = header_text(message.get("Subject", ""))
    return bool(_FAILURE_WORDS.search(subject) or _FAILURE_WORDS.search(anatomy.report[:4000])
                or _system((_header_addresses(message, "From") or ["x@x"])[0]))


def detect_text(anatomy: Anatomy) -> list[Verdict] | None:
    if not _looks_failed(anatomy):
        return None
    recipients = _text_recipients(anatomy)
    if not recipients:
        return None
    report = anatomy.report
    verdicts = []
    for recipient, near in _sections(report, recipients):
        status = find_status(near)
        own_line = near.split("\n", 1)[0] if recipient.lower() in near.split("\n", 1)[0].lower() else ""
        reason = refine(reason_from_text(own_line), own_line, status, near) or \
            refine(reason_from_text(near), near, status) or refine(reason_from_text(report), report, status)
        verdicts.append(_verdict(recipient, near, status, reason=reason))
    return verdicts


def _sections(report: str, recipients: list[str]) -> list[tuple[str, str]]:
    """Each recipient with the report text about it: from where the report first names it to
    where it next names another one (a single recipient gets the whole report)."""
    if len(recipients) == 1:
        return [(recipients[0], report)]
    lower = report.lower()
    places = {r: [m.start() for m in re.finditer(re.escape(r.lower()), lower)] for r in recipients}
    sections = []
    for recipient in recipients:
        if not places[recipient]:
            sections.append((recipient, report))
            continue
        start = places[recipient][0]
        others = [p for other in recipients if other != recipient for p in places[other] if p > start]
        line_start = report.rfind("\n", 0, start) + 1
        end = min(others, default=len(report))
        end = max(line_start, report.rfind("\n", 0, end) + 1) if end < len(report) else end
        sections.append((recipient, report[line_start:end] if end > line_start else report[start:]))
    return sections


# 6. anything else ------------------------------------------------------------------------------

def detect_fallback(anatomy: Anatomy) -> list[Verdict]:
    """A failure we cannot read counts as soft (never suppressed at once); a message that does
    not look like a failure at all is none of our business: kind none, reason nofailure."""
    if not _looks_failed(anatomy):
        return [Verdict(recipient=None, reason="nofailure", kind="none")]
    recipients = _original_to(anatomy) or [None]
    return [_verdict(r, anatomy.report[:2000], reason="undefined") for r in recipients]


DETECTORS: list[Callable[[Anatomy], list[Verdict] | None]] = [
    detect_feedback, detect_ses, detect_dsn, detect_vacation, detect_challenge, detect_text,
]


def classify(raw: bytes | str | Message) -> list[Verdict]:
    """Every failed recipient a returned message reports, or one kind-none verdict for a non-failure."""
    message = raw if isinstance(raw, Message) else parse(raw)
    anatomy = dissect(message)
    if not anatomy.status_blocks and not anatomy.feedback and anatomy.original and \
            anatomy.original[0].get_content_type() == "multipart/report":
        return classify(anatomy.original[0])  # a bounce forwarded as an attachment: read the bounce
    for detector in DETECTORS:
        verdicts = detector(anatomy)
        if verdicts:
            return verdicts
    return detect_fallback(anatomy)


def classify_reply(code: int | None, text: str | None, recipient: str | None = None) -> Verdict:
    """A refusal received at delivery time (SMTP code and text), judged like a bounce."""
    text = text or ""
    return _verdict(recipient, text, code=code or find_reply_code(text))
