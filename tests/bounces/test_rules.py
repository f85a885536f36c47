"""The classifier's rules one at a time, on small messages and replies written for the purpose
(the corpus test proves them on real ones)."""

from __future__ import annotations

import pytest

from panel.services.bounces import classify, classify_reply, kind_for, suppression_for


@pytest.mark.parametrize("code, text, reason, kind", [
    (550, "550 5.1.1 <ann@example.org>: Recipient address rejected: User unknown in local recipient table",
     "userunknown", "hard"),
    (550, "550-5.1.1 The email account that you tried to reach does not exist.", "userunknown", "hard"),
    (552, "552 5.2.2 Mailbox full", "mailboxfull", "soft"),
    (550, "550 5.7.1 Service unavailable; client [192.0.2.1] blocked using zen.spamhaus.org", "blocked", "soft"),
    (554, "554 5.7.1 Message rejected as spam", "spamdetected", "soft"),
    (550, "550 5.7.26 Unauthenticated email from example.com is not accepted due to domain's DMARC policy",
     "authfailure", "soft"),
    (421, "421 4.7.0 Try again later, closing connection", "securityerror", "soft"),
    (550, "550 5.1.2 Host unknown", "hostunknown", "hard"),
    (550, "550 5.1.6 recipient no longer on server", "hasmoved", "hard"),
    (None, "retry timeout exceeded", "expired", "soft"),
    (553, "553 5.1.8 Domain of sender address nobody@example.com does not exist", "rejected", "soft"),
])
def test_a_refusal_at_delivery_time(code, text, reason, kind):
    verdict = classify_reply(code, text, recipient="ann@example.org")
    assert (verdict.recipient, verdict.reason, verdict.kind) == ("ann@example.org", reason, kind)


def test_the_status_code_decides_when_the_words_say_nothing_known():
    assert classify_reply(550, "550 5.1.1 computer says no").reason == "userunknown"
    assert classify_reply(552, "552 5.2.2 computer says no").reason == "mailboxfull"


@pytest.mark.parametrize("reason, status, code, kind", [
    ("notaccept", "5.1.10", 550, "hard"),
    ("notaccept", "4.3.2", 421, "soft"),
    ("userunknown", "4.1.1", 450, "hard"),  # the corpus README's definition: the reason decides
    ("mailboxfull", "5.2.2", 552, "soft"),
    ("feedback", None, None, "none"),
])
def test_hard_or_soft(reason, status, code, kind):
    assert kind_for(reason, status, code) == kind


def test_a_refusal_of_mail_from_is_about_the_sender():
    text = ("SMTP error from remote mail server after MAIL FROM:<news@example.com>:\n"
            "550 5.1.0 <ann@example.org>: unknown user")
    assert classify_reply(550, text).reason == "rejected"


def test_user_unknown_at_data_time_with_a_vague_status_is_a_filter():
    text = "host mx.example.org said: 550 Unknown user ann@example.org (in reply to end of DATA command)"
    verdict = classify_reply(550, text)
    assert (verdict.reason, verdict.kind) == ("filtered", "soft")


DSN = """\
From: MAILER-DAEMON@mx.example.net
To: bounce+1-abc@bounces.example.com
Subject: Delivery Status Notification
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b"

--b
Content-Type: text/plain

Your message could not be delivered to every recipient.

--b
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; ann.forwarded@example.net
Original-Recipient: rfc822; ann@example.org
Action: failed
Status: 5.2.2
Diagnostic-Code: smtp; 552 5.2.2 Quota exceeded

Final-Recipient: rfc822; bob@example.org
Action: {second}
Status: {second_status}

--b--
"""


def test_delivery_status_fields_one_verdict_per_failed_recipient():
    verdicts = classify(DSN.format(second="failed", second_status="5.1.1"))
    assert [(v.recipient, v.original_recipient, v.reason, v.kind, v.dsn, v.code) for v in verdicts] == [
        ("ann.forwarded@example.net", "ann@example.org", "mailboxfull", "soft", "5.2.2", 552),
        ("bob@example.org", None, "userunknown", "hard", "5.1.1", None),
    ]


def test_delivered_recipients_are_left_out_when_others_failed_and_reported_when_none_did():
    (failed,) = classify(DSN.format(second="delivered", second_status="2.0.0"))
    assert failed.original_recipient == "ann@example.org"
    only_success = DSN.replace("Action: failed\nStatus: 5.2.2", "Action: relayed\nStatus: 2.0.0")
    verdicts = classify(only_success.format(second="delivered", second_status="2.0.0"))
    assert {(v.reason, v.kind) for v in verdicts} == {("delivered", "none")}
    assert all(suppression_for(v) is None for v in verdicts)


def test_a_delay_notice_is_soft_and_says_so():
    (verdict,) = classify(DSN.replace("Action: failed\nStatus: 5.2.2", "Action: delayed\nStatus: 4.4.7")
                          .replace("552 5.2.2 Quota exceeded", "421 connection timed out")
                          .split("Final-Recipient: rfc822; bob")[0] + "--b--\n")
    assert (verdict.reason, verdict.kind, verdict.action) == ("expired", "soft", "delayed")


@pytest.mark.parametrize("headers", [
    "Subject: Out of office\n",
    "Subject: Re: News\nAuto-Submitted: auto-replied\n",
    "Subject: Re: News\nX-Autoreply: yes\n",
])
def test_auto_replies_are_no_failures(headers):
    (verdict,) = classify(f"From: Ann <ann@example.org>\nTo: news@example.com\n{headers}\nI am away.\n")
    assert (verdict.reason, verdict.kind, suppression_for(verdict)) == ("vacation", "none", None)


@pytest.mark.parametrize("feedback_type, suppression", [("abuse", "complaint"), ("auth-failure", None),
                                                        ("not-spam", None)])
def test_feedback_reports_only_complaints_suppress(feedback_type, suppression):
    raw = ("From: fbl@isp.example\nSubject: report\nMIME-Version: 1.0\n"
           'Content-Type: multipart/report; report-type=feedback-report; boundary="b"\n\n'
           f"--b\nContent-Type: message/feedback-report\n\nFeedback-Type: {feedback_type}\n"
           "Original-Rcpt-To: ann@example.org\n--b--\n")
    (verdict,) = classify(raw)
    assert (verdict.recipient, verdict.reason, verdict.kind) == ("ann@example.org", "feedback", "none")
    assert suppression_for(verdict) == suppression


def test_an_address_that_looks_like_a_reason_is_no_reason():
    text = "<filtered@example.org>:\nRemote host said: 550 5.1.1 <filtered@example.org>... User Unknown\n"
    raw = f"From: MAILER-DAEMON@mx.example.net\nSubject: failure notice\n\n{text}"
    (verdict,) = classify(raw)
    assert (verdict.recipient, verdict.reason, verdict.kind) == ("filtered@example.org", "userunknown", "hard")
