"""The letters a user gets by default, as delivered, scored by SpamAssassin (issue 5, point 8).

A new campaign's form starts from the starter newsletter (panel/letters/, both formats, "Both"
chosen). Here it goes through the real system — panel API, daemon, agent, Exim, the capture
standing in for the recipient's server — in every format and transfer encoding a user can pick,
and each letter as the capture received it goes to spamd (local rules only). It must score at
most 0 with no rule that marks a badly built letter (FORBIDDEN below). A bad letter in this
module proves the check can fail.
"""

from __future__ import annotations

import re

import pytest

from devserver.mail_capture import read_maildir
from panel.services.templates import starter_letter

from tests.helpers import wait_for

from .conftest import Api, Spamd, Verdict

DOMAIN = "spam-check.example"
# (format, encoding): the format is the composer's choice of bodies; the default is multipart + QP.
VARIANTS = [(fmt, enc) for fmt in ("multipart", "plain", "html") for enc in ("quoted-printable", "7bit", "base64")]

# Rules saying the letter is built wrong rather than what it says: missing or malformed headers,
# MIME structure, HTML without a text part, text and HTML parts that differ, encoding faults.
FORBIDDEN_PREFIXES = (
    "MISSING_", "MPART_ALT_DIFF", "MIME_HTML_", "HTML_MIME_NO_HTML_TAG", "MIME_QP_", "MIME_BASE64_",
    "MIME_BOUND_", "MIME_HEADER_CTYPE_ONLY", "MIME_NO_TEXT", "MIME_CHARSET_FARAWAY", "INVALID_DATE",
    "INVALID_MSGID", "MSGID_", "DATE_IN_", "HEADER_SPAM", "FROM_EXCESS_BASE64", "SUBJ_ILLEGAL_CHARS",
    "EMPTY_MESSAGE", "LIST_PARTIAL", "LIST_PRTL", "TVD_SPACE_RATIO", "TO_NO_BRKTS", "FROM_ADDR_WS",
    "PP_MIME_FAKE_ASCII_TEXT", "UNPARSEABLE_RELAY", "BAD_ENC_HEADER", "CTYPE_", "NO_DNS_FOR_FROM",
)


def structural(verdict: Verdict) -> list[str]:
    return sorted(name for name in verdict.hits if name.startswith(FORBIDDEN_PREFIXES))


def without_received(raw: bytes) -> bytes:
    """The letter without the Received lines Exim added on the way to the capture.

    Exim received it from the agent on 127.0.0.1, and SpamAssassin grants a message whose every
    relay is trusted (loopback) ALL_TRUSTED, -1.0: that bonus would flatter every letter and hide
    a score of up to +1. At a recipient's server the letter comes from the worker's public IP and
    gets no such bonus, so the score is taken without those lines (the tests also check that
    ALL_TRUSTED did not fire)."""
    head, sep, body = raw.partition(b"\n\n")
    kept: list[bytes] = []
    skipping = False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.lower().startswith(b"received:")
        if not skipping:
            kept.append(line)
    return b"\n".join(kept) + sep + body


@pytest.fixture(scope="module")
def delivered(stack, api: Api) -> dict[tuple[str, str], bytes]:
    """The starter letter as the capture received it, for every (format, encoding)."""
    starter = starter_letter()
    campaigns = {}
    for fmt, encoding in VARIANTS:
        address = f"{fmt}-{encoding}@{DOMAIN}"
        list_id = api.post("/lists", {"name": f"spam check {fmt} {encoding}"})["id"]
        api.post(f"/lists/{list_id}/recipients", [{"email": address}])
        campaign = api.post("/campaigns", {
            "name": f"starter letter, {fmt}, {encoding}", "subject": starter.subject,
            "from_email": "news@sender.example", "from_name": "Sender News",
            "text": starter.text if fmt != "html" else None, "html": starter.html if fmt != "plain" else None,
            "encoding": encoding, "lists": [list_id],
        })
        api.post(f"/campaigns/{campaign['id']}/start", {})
        campaigns[(fmt, encoding)] = (campaign["id"], address)

    def arrived():
        got = {m.rcpt_to: m.raw for m in read_maildir(stack.maildir) if m.rcpt_to.endswith("@" + DOMAIN)}
        return got if len(got) == len(VARIANTS) else None

    got = wait_for(arrived, timeout=180, what="the starter letter in every format delivered")
    return {variant: got[address] for variant, (_, address) in campaigns.items()}


def _expect_clean(spamd: Spamd, raw: bytes) -> Verdict:
    verdict = spamd.check(without_received(raw))
    assert "ALL_TRUSTED" not in verdict.hits, verdict
    assert structural(verdict) == [], verdict
    assert verdict.score <= 0, verdict
    return verdict


@pytest.mark.parametrize("fmt,encoding", VARIANTS)
def test_the_starter_letter_as_delivered_scores_at_most_zero(spamd, delivered, fmt, encoding):
    raw = delivered[(fmt, encoding)]
    assert b"\nreceived:" in b"\n" + raw.lower(), "the letter should carry Exim's Received line"
    verdict = _expect_clean(spamd, raw)
    print(f"{fmt} {encoding}: {verdict.score} {sorted(verdict.hits)}")


# A letter built wrong: HTML only, no Date, no Message-ID, an HTML part without <html>.
BAD_LETTER = (
    "From: Sender News <news@sender.example>\r\n"
    "To: reader@spam-check.example\r\n"
    "Subject: Our news this month\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/html; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 7bit\r\n"
    "\r\n"
    "<p>Hello,</p><p>Here is what is new this month.</p>"
    "<p><a href=\"https://example.com/news\">Read the whole story</a></p>\r\n"
).encode()


def test_a_badly_built_letter_fails_the_same_check(spamd, delivered):
    verdict = spamd.check(BAD_LETTER)
    assert {"MISSING_DATE", "MISSING_MID", "MIME_HTML_ONLY"} <= set(structural(verdict)), verdict
    assert verdict.score > 1, verdict
    with pytest.raises(AssertionError):
        _expect_clean(spamd, BAD_LETTER)


def test_text_and_html_that_say_different_things_are_caught(spamd, delivered):
    """The delivered default letter with its HTML part's words swapped for others: MPART_ALT_DIFF."""
    raw = delivered[("multipart", "7bit")]
    other = ("<html><body>" + "<p>Completely unrelated words about gardening, tomatoes and spring rain.</p>" * 12
             + "</body></html>").encode()
    swapped = re.sub(rb"(Content-Type: text/html[^\n]*\n(?:[^\n]+\n)*\n).*?(\n--)", lambda m: m.group(1) + other + m.group(2),
                     without_received(raw), count=1, flags=re.S)
    assert swapped != without_received(raw)
    verdict = spamd.check(swapped)
    assert any(name.startswith("MPART_ALT_DIFF") for name in verdict.hits), verdict
