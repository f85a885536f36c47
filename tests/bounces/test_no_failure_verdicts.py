"""Issue 11 point 4: no failure verdict for a success or a non-bounce, ever.

Every failure DSN in the corpus is rewritten into a success DSN (Action delivered/relayed/expanded,
Status 2.x.x, Diagnostic 250) and must classify as kind none; the untouched file must still be a
failure, so the test fails both ways. Auto-replies and challenge-responses are none too."""
import re
from pathlib import Path

import pytest

from panel.services.bounces.classify import classify

CORPUS = Path(__file__).parent.parent / "corpus" / "bounces"
FAILED_DSNS = [p for p in sorted(CORPUS.glob("*.eml"))
               if re.search(r"(?im)^Action:\s*failed", p.read_text("utf-8", "replace"))]
SUCCESS = [("delivered", "2.0.0", "250 2.0.0 OK"), ("relayed", "2.1.5", "250 2.1.5 Recipient ok"),
           ("expanded", "2.0.0", "250 Ok: queued as 4F1")]


def _as_success(raw: str, action: str, status: str, reply: str) -> str:
    raw = re.sub(r"(?im)^Action:[ \t]*\S+", f"Action: {action}", raw)
    raw = re.sub(r"(?im)^Status:[ \t]*[45]\.\d{1,3}\.\d{1,3}", f"Status: {status}", raw)
    return re.sub(r"(?im)^Diagnostic-Code:.*(?:\r?\n[ \t].*)*", f"Diagnostic-Code: smtp; {reply}", raw)


def test_the_corpus_has_failure_dsns_to_rewrite():
    assert len(FAILED_DSNS) > 100


@pytest.mark.parametrize("path", FAILED_DSNS, ids=lambda p: p.name)
def test_a_failure_dsn_rewritten_to_success_is_none(path):
    raw = path.read_text("utf-8", "replace")
    assert any(v.kind in ("hard", "soft") for v in classify(raw)), "the real failure must stay a failure"
    for action, status, reply in SUCCESS:
        verdicts = classify(_as_success(raw, action, status, reply))
        assert all(v.kind == "none" for v in verdicts), (action, [(v.recipient, v.kind, v.reason) for v in verdicts])


AUTO = "From: kim@example.org\nTo: bounce+1@bounces.example\nSubject: {subject}\n{headers}\n{body}\n"


@pytest.mark.parametrize("subject,headers,body", [
    ("Out of office", "Auto-Submitted: auto-replied", "I am away."),
    ("Automatic reply: news", "X-Autoreply: yes", "I am away until Monday."),
    ("Abwesenheitsnotiz", "Precedence: auto_reply", "Ich bin nicht im Büro."),
    ("自動応答", "", "不在です。"),
    ("Re: news", "", "Please confirm you are human: click the link. (TMDA)"),
    ("Re: news", "", "Your message could not be delivered until you confirm. SpamArrest challenge."),
    ("Boxbe: request", "", "Your message was not delivered yet: Boxbe waitlist, verify you are a real person."),
])
def test_auto_replies_and_challenges_are_none(subject, headers, body):
    verdicts = classify(AUTO.format(subject=subject, headers=headers, body=body))
    assert all(v.kind == "none" for v in verdicts), [(v.kind, v.reason) for v in verdicts]


def test_a_plain_failure_text_is_still_a_failure():
    raw = ("From: MAILER-DAEMON@mx.example\nTo: bounce+1@bounces.example\nSubject: Undelivered Mail\n\n"
           "<kim@example.org>: 550 5.1.1 user unknown\n")
    assert [v.kind for v in classify(raw)] == ["hard"]


@pytest.mark.parametrize("key", ["notificationType", "eventType"])
@pytest.mark.parametrize("response", ["250 2.6.0 Message received", "250 OK id=1tX", "250 2.0.0 queued"])
def test_an_amazon_ses_delivery_notice_is_none(key, response):
    """SES lists a Delivery's recipients as plain strings, not objects as in a Bounce."""
    body = ('{"%s":"Delivery","mail":{"source":"news@example.com","destination":["kim@example.org"]},'
            '"delivery":{"recipients":["kim@example.org"],"smtpResponse":"%s"}}') % (key, response)
    raw = "From: no-reply@sns.amazonaws.com\nTo: bounce+1@bounces.example\nSubject: Amazon SES Email Event Notification\n\n"
    verdicts = classify(raw + body)
    assert [(v.recipient, v.kind) for v in verdicts] == [("kim@example.org", "none")]
