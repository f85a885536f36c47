"""From an error's words and codes to a reason, and from a reason to hard or soft.

Rules are tried top to bottom and the first whose pattern occurs in the diagnostic text
wins; more specific wordings stand above general ones (a "mailbox full" reply also says
"mailbox", a DMARC refusal also says "rejected"). When no wording matches, the enhanced
status code (RFC 3463) decides, then the SMTP reply code. The patterns were written from
the replies in the labelled corpus (tests/bounces) and the RFCs, not taken from another
project.
"""

from __future__ import annotations

import re

# Failure reasons (kind hard or soft) ...
FAILURE_REASONS = (
    "userunknown", "hostunknown", "hasmoved", "notaccept", "mailboxfull", "mesgtoobig", "exceedlimit",
    "filtered", "blocked", "spamdetected", "virusdetected", "policyviolation", "authfailure", "requireptr",
    "securityerror", "rejected", "norelaying", "expired", "suspend", "onhold", "systemerror", "systemfull",
    "networkerror", "toomanyconn", "syntaxerror", "contenterror", "mailererror", "undefined",
)
# ... and what a message is when it reports no failure (kind none).
NONE_REASONS = ("feedback", "vacation", "delivered", "nofailure")

# Hard: the address itself is bad and will stay bad (the corpus README's definition).
HARD_REASONS = frozenset({"userunknown", "hostunknown", "hasmoved"})
HARD_ONLY_WITH_5XX = frozenset({"notaccept"})  # a host that takes no mail: hard only if it says so for good


def _rx(*alternatives: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{a})" for a in alternatives), re.I)


# (reason, pattern) — first match wins.
TEXT_RULES: list[tuple[str, re.Pattern[str]]] = [
    ("authfailure", _rx(r"\bdmarc\b", r"\bspf\b.{0,40}\bfail", r"\bdkim\b.{0,40}\bfail", r"unauthenticated email",
                        r"5\.7\.2[3-7]\b")),
    # Google Groups, in any language: the group may not exist, or may not take posts from you.
    ("rejected", _rx(r"groups\.google\.com/support")),
    ("requireptr", _rx(r"reverse dns", r"\bptr\b", r"\brdns\b", r"reverse (?:lookup|hostname|dns)",
                       r"without a valid sender domain", r"cannot find your hostname", r"no reverse")),
    ("securityerror", _rx(r"unauthenticated senders? not allowed", r"authentication required",
                          r"\btls\b.{0,30}required", r"must use (?:starttls|tls)", r"certificate")),
    ("norelaying", _rx(r"relay(?:ing)? (?:access )?denied", r"relaying (?:is )?(?:not|prohibited)", r"not permitted to relay",
                       r"unable to relay", r"relay not permitted", r"we do not relay", r"email address is not verified")),
    ("virusdetected", _rx(r"\bvirus\b", r"malware")),
    ("spamdetected", _rx(r"\bspam\b(?! ?(?:trap|list))", r"message content rejected", r"content (?:was )?rejected",
                         r"junk mail", r"scored as", r"bulk mail")),
    ("hostunknown", _rx(r"account or domain may not exist", r"(?:^|[\s:])(?:[a-z0-9-]+\.)+[a-z]{2,}>? does not exist")),  # Exim's wording, which also says "blacklisted"
    ("blocked", _rx(r"blocked using", r"black ?list", r"block ?list", r"\bdnsbl\b", r"\brbl\b", r"spamhaus",
                    r"client host (?:\S+ )?rejected", r"not accepting connections", r"\(BL\)", r"connection refused by",
                    r"ip address .{0,30}(?:blocked|rejected|listed)", r"your ip", r"is (?:black)?listed",
                    r"\bblocked\b(?!.{0,40}content)", r"access denied.{0,20}\bip\b", r"sender ip")),
    ("toomanyconn", _rx(r"too many (?:recipients|connections|messages|sessions)", r"connection (?:rate|limit)",
                        r"rate limit", r"try again later.{0,40}too many")),
    ("mesgtoobig", _rx(r"message (?:is )?too (?:big|large)", r"size (?:limit|exceeds)", r"exceeds? .{0,30}size",
                       r"message size", r"mail size", r"too large")),
    ("mailboxfull", _rx(r"mailbox (?:is )?full", r"mailbox.{0,20}\bfull\b", r"over ?quota", r"quota",
                        r"insufficient (?:disk|storage|space)", r"storage (?:limit|full|space)", r"disk (?:is )?full",
                        r"mail ?box size limit", r"mailfolder is full", r"exceeded storage", r"\bfull\b.{0,20}mailbox",
                        r"user has exceeded", r"box is full")),
    ("onhold", _rx(r"\bon hold\b")),
    ("systemerror", _rx(r"internal (?:system|server) error")),
    ("suspend", _rx(r"disabled recipient", r"account (?:is |has been )?(?:disabled|suspended|inactive|locked|expired)", r"(?:disabled|suspended|inactive|frozen|locked) (?:account|mailbox|user)",
                    r"mailbox (?:is )?(?:disabled|frozen|inactive|suspended|locked)", r"temporar(?:il)?y? locked",
                    r"account (?:that you tried to reach )?is (?:disabled|inactive)", r"email account that you tried to reach is disabled",
                    r"user (?:account )?(?:is )?(?:suspended|disabled|inactive)", r"not active", r"deactivated")),
    ("hasmoved", _rx(r"no longer (?:on server|with|valid at|available)", r"has moved", r"not our customer",
                     r"user has moved", r"address (?:has )?changed")),
    # About our sender address, not the recipient's: before the rules for unknown hosts and users.
    ("rejected", _rx(r"domain of sender address", r"sender address rejected", r"sender verify failed",
                     r"purported responsible address")),
    ("networkerror", _rx(r"not found,? try again", r"temporary failure in name resolution")),  # DNS TRY_AGAIN
    ("hostunknown", _rx(r"host (?:or domain name )?not found", r"host unknown", r"unknown host", r"domain (?:name )?not found",
                        r"invalid domain", r"no such domain", r"domain (?:does not|doesn't) exist(?! .{0,20}sender)",
                        r"unrout(?:e)?able (?:mail )?domain", r"\bunrout(?:e)?able\b", r"no mx", r"mx.{0,20}not found",
                        r"domain .{0,40}not (?:exist|found)", r"nxdomain", r"name or service not known",
                        r"all relevant mx records point to non-existent hosts", r"unknown domain")),
    ("rejected", _rx(r"domain of sender address", r"sender address rejected", r"sender (?:domain )?(?:is )?(?:invalid|rejected|unknown)",
                     r"purported responsible address", r"sender verify failed", r"\bsender\b.{0,30}\brejected",
                     r"from address", r"mail from .{0,40}rejected", r"unexpected volume", r"user complaints")),
    ("userunknown", _rx(r"user(?:name)? unknown", r"unknown (?:user|recipient|address|mailbox|local ?part|account)",
                        r"no such (?:user|mailbox|recipient|address|account|person)",
                        r"(?:user|recipient|mailbox|address|account)(?: name)? (?:does not|doesn't|did not) exist",
                        r"(?:user|recipient|mailbox|address|account) not (?:found|exist|known|valid|listed)",
                        r"does not exist", r"recipient ?not ?found", r"recip ?not ?found", r"invalid (?:recipient|address|mailbox|user)",
                        r"destinataire invalide", r"mailbox unavailable", r"mailbox (?:is )?not (?:available|found)",
                        r"not a valid (?:user|mailbox|recipient)", r"recipient address rejected(?:: *access denied|\.? *$|\. )",
                        r"not listed in (?:the )?(?:public )?(?:name|address|directory)", r"invalid .{0,20}userid",
                        r"recipient name is not recognized", r"見つかりません", r"存在しません", r"リストにありません", r"宛先不明",
                        r"no mailbox", r"unknown or illegal alias", r"account (?:has been )?(?:deleted|removed|closed)",
                        r"doesn't have a .{0,30} account", r"no account", r"user not exist", r"not our user", r"bad (?:recipient|destination)",
                        r"invalid (?:mailbox|email) address", r"mailbox not found", r"addressee unknown",
                        r"no valid recipients", r"recipient unknown", r"is not a valid", r"unknown local part")),
    ("notaccept", _rx(r"does not accept (?:e-?)?mail", r"not accept(?:ing)? (?:any )?mail", r"null mx", r"accepts no mail")),
    ("policyviolation", _rx(r"\bpolicy\b", r"not allowed", r"prohibited", r"content presents a potential")),
    ("filtered", _rx(r"filtered", r"refused by (?:the )?recipient", r"(?:sender|recipient) (?:is )?not (?:authorized|allowed)",
                     r"domain filter")),
    ("contenterror", _rx(r"headers? too (?:large|long)", r"content error", r"invalid (?:mime|header)", r"line too long")),
    ("syntaxerror", _rx(r"syntax error", r"command unrecognized", r"bad sequence of commands")),
    ("expired", _rx(r"timed? ?out", r"expired", r"retry (?:time|timeout)", r"could not be delivered (?:for|within)",
                    r"has not been (?:able to be )?delivered", r"delivery (?:time )?(?:was )?delayed", r"still trying",
                    r"too long in (?:the )?queue", r"in the queue too long", r"gave up", r"given up on",
                    r"failed \d+ attempts", r"has been delayed", r"will be retried", r"all hosts have been failing",
                    r"host not reachable")),
    ("networkerror", _rx(r"too many hops", r"protocol error", r"mail loop", r"loop(?:s)? back", r"lost connection", r"connection (?:refused|reset|lost)",
                         r"name service error", r"network (?:error|unreachable)", r"no route to host", r"dns (?:error|failure)")),
    ("systemfull", _rx(r"system (?:is )?full", r"insufficient system storage")),
    ("systemerror", _rx(r"system error", r"internal (?:server )?error", r"transaction failed", r"local error", r"temporary (?:local )?(?:problem|failure)",
                        r"could not load", r"server error", r"service (?:is )?(?:not )?(?:available|unavailable)")),
    ("mailererror", _rx(r"x-unix", r"mailer error", r"command (?:died|failed|output)", r"exit (?:code|status)")),
]

# Enhanced status codes (RFC 3463, 3886) when the words said nothing we know; class digit replaced by "x".
STATUS_RULES: dict[str, str] = {
    "x.1.1": "userunknown", "x.1.0": "userunknown", "x.1.2": "hostunknown", "x.1.3": "syntaxerror",
    "x.1.4": "userunknown", "x.1.5": "userunknown", "x.1.6": "hasmoved", "x.1.7": "rejected", "x.1.8": "rejected",
    "x.1.10": "notaccept",
    "x.2.0": "filtered", "x.2.1": "suspend", "x.2.2": "mailboxfull", "x.2.3": "mesgtoobig", "x.2.4": "systemerror",
    "x.3.0": "systemerror", "x.3.1": "systemfull", "x.3.2": "notaccept", "x.3.4": "mesgtoobig", "x.3.5": "systemerror",
    "x.4.0": "networkerror", "x.4.1": "expired", "x.4.2": "networkerror", "x.4.3": "networkerror", "x.4.4": "hostunknown",
    "x.4.5": "toomanyconn", "x.4.6": "networkerror", "x.4.7": "expired",
    "x.5.0": "syntaxerror", "x.5.1": "syntaxerror", "x.5.2": "syntaxerror", "x.5.3": "toomanyconn", "x.5.4": "syntaxerror",
    "x.6.0": "contenterror", "x.6.1": "contenterror", "x.6.3": "contenterror",
    "x.7.0": "securityerror", "x.7.1": "rejected", "x.7.7": "securityerror", "x.7.8": "securityerror", "x.7.9": "securityerror",
    "x.7.25": "requireptr", "x.7.26": "authfailure", "x.7.27": "notaccept",
}
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_REPLY = re.compile(r"(?:^|[\s;:'\"(])([245][0-5]\d)(?=[\s\-])")


def find_status(text: str) -> str | None:
    match = _STATUS.search(text or "")
    return match.group(0) if match else None


def find_reply_code(text: str) -> int | None:
    match = _REPLY.search(text or "")
    return int(match.group(1)) if match else None


_MAILBOX = re.compile(r"[^\s<>()\[\]\"',;:]+@[^\s<>()\[\]\"',;:]+")


def reason_from_text(text: str) -> str | None:
    text = " ".join(_MAILBOX.sub("mailbox", text).split())  # an address's own words ("filtered@…") say nothing;
    # and a reply wrapped over lines reads as one
    for reason, pattern in TEXT_RULES:
        if pattern.search(text):
            return reason
    return None


def reason_from_status(status: str | None) -> str | None:
    if not status:
        return None
    _, subject, detail = status.split(".")
    return STATUS_RULES.get(f"x.{int(subject)}.{int(detail)}")


# Which SMTP command a refusal answered, as MTAs word it in their reports.
_AFTER_MAIL_FROM = re.compile(r"(?i)after MAIL FROM|in reply to MAIL FROM|>>> MAIL From")
_AFTER_DATA = re.compile(r"(?i)after end of data|in reply to end of data|>>> DATA\s*\n\s*<<<|SMTP command\W+DATA|after DATA")


# "User unknown" in its plainest wording: a filter's answer as often as a mailbox's.
_PLAIN_UNKNOWN = re.compile(r"(?i)user unknown|unknown user|no such user")
# A refusal that names no address at all ("550 : User unknown"): how KDDI (au, ezweb) refuses
# a letter that a recipient's own filter blocks.
_NAMELESS_UNKNOWN = re.compile(r"(?i)\b5\d\d\s*:?\s+:\s*user unknown")


def refine(reason: str | None, text: str, status: str | None = None, context: str | None = None) -> str | None:
    """Second thoughts about a reason, from what the refusal answered and its status class.

    - A refusal of MAIL FROM is about the sender, whatever it says about the mailbox: rejected.
    - A plain "user unknown" with a security/policy status (x.7.x), or given only after DATA
      (the server had accepted the recipient) while the status does not name the mailbox
      (x.1.x), or naming no address, comes from a filter at a mailbox that exists: filtered.

    `text` is the server's own words; `context` (default: the same) the report around them,
    which tells which command they answered.
    """
    context = text if context is None else context
    if reason in ("userunknown", "hostunknown") and _AFTER_MAIL_FROM.search(context):
        return "rejected"
    if reason == "userunknown" and _PLAIN_UNKNOWN.search(text):
        subject = status.split(".")[1] if status else None
        if subject == "7" or (subject != "1" and _AFTER_DATA.search(context)) or _NAMELESS_UNKNOWN.search(text):
            return "filtered"
    return reason


def reason_for(text: str, status: str | None = None, code: int | None = None) -> str:
    """The reason a recipient failed, from the server's words, else its codes."""
    reason = refine(reason_from_text(text or ""), text or "", status) or reason_from_status(status)
    if reason:
        return reason
    if code in (421, 450, 451, 452):
        return "systemerror" if code != 452 else "mailboxfull"
    return "undefined"


def kind_for(reason: str, status: str | None = None, code: int | None = None) -> str:
    """hard, soft or none. Hard means: never mail this address again."""
    if reason in NONE_REASONS:
        return "none"
    if reason in HARD_REASONS:
        return "hard"
    if reason in HARD_ONLY_WITH_5XX:
        permanent = (status or "").startswith("5") or (code is not None and 500 <= code < 600)
        unknown = status is None and code is None
        return "hard" if permanent or unknown else "soft"
    return "soft"
