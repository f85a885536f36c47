"""The bounce classifier against 355 real returned messages, labelled (tests/corpus/bounces).

One case per file: every labelled recipient is found (its final or original address) with
the right kind, and no failed recipient is reported that the labels do not name. Then the
figures over all label rows: the right recipient for ≥ 95 % of rows and the right hard/soft
for ≥ 95 %, and nobody suppressed as a bounce for a message that reports no failure.

Where a file's labels and our reading differ on purpose, the case is an xfail saying why.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from pathlib import Path

import pytest

from panel.services.bounces import Verdict, classify, suppression_for
from tests.helpers import BOUNCE_CORPUS

CORPUS = Path(os.environ.get("MAILFLEET_BOUNCE_CORPUS", BOUNCE_CORPUS))
TARGET = 0.95


def _labels() -> dict[str, list[dict[str, str]]]:
    rows: dict[str, list[dict[str, str]]] = defaultdict(list)
    with open(CORPUS / "labels.tsv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            rows[row["filename"]].append(row)
    return dict(rows)


LABELS = _labels()

# The corpus' labels are sisimai's judgements. Where a server's reply says the mailbox does not
# exist but sisimai, knowing that server's habits, calls it "filtered" (soft), we take the
# reply at its word (hard): a campaign would rather drop an address that says it is gone.
_SAYS_UNKNOWN = "the reply says the mailbox does not exist ({}); the corpus labels it {} from sisimai's knowledge of that server; we read it as userunknown (hard)"
KNOWN_DIFFERENCES = {
    "lhost-amazonses-02.eml": _SAYS_UNKNOWN.format("docomo: 'Unknown user'", "filtered"),
    "lhost-amazonworkmail-02.eml": _SAYS_UNKNOWN.format("5.2.1 'User Unknown'", "filtered"),
    "lhost-mailfoundry-01.eml": _SAYS_UNKNOWN.format("'No such user here'", "filtered"),
    "lhost-messagingserver-06.eml": _SAYS_UNKNOWN.format("5.2.1 'User Unknown'", "filtered"),
    "lhost-postfix-07.eml": _SAYS_UNKNOWN.format("OCN: 'User unknown'", "filtered"),
    "lhost-receivingses-01.eml": _SAYS_UNKNOWN.format("SES inbound: 5.1.1 'Mailbox does not exist'", "filtered"),
    "lhost-receivingses-02.eml": _SAYS_UNKNOWN.format("SES inbound: 5.1.1 'Mailbox does not exist'", "filtered"),
    "lhost-x1-02.eml": _SAYS_UNKNOWN.format("'[User unknown]'", "filtered"),
    "lhost-x2-01.eml": _SAYS_UNKNOWN.format("'This user doesn't have a … account'", "filtered"),
    "lhost-x2-02.eml": _SAYS_UNKNOWN.format("'This user doesn't have a … account', twice", "filtered"),
    "lhost-zoho-02.eml": _SAYS_UNKNOWN.format("'Invalid Address … 5.2.1 User Unknown'", "filtered"),
    "lhost-zoho-03.eml": _SAYS_UNKNOWN.format("'Invalid Address … mailbox unavailable'", "filtered"),
    "rfc3464-01.eml": "labelled mailboxfull, but the message says nothing but Status 5.1.1 and '550 5.1.1 … User "
                      "Unknown' (no word of a full mailbox): we read userunknown (hard)",
    "rfc3464-35.eml": _SAYS_UNKNOWN.format("'550 user unknown' for mikeneko@", "filtered"),
    "rfc3464-42.eml": _SAYS_UNKNOWN.format("'The email account that you tried to reach does not exist'", "filtered"),
    "arf-15.eml": "the label's address (undisclosed-recipient-in-headers@libsisimai.org.invalid) is one sisimai "
                  "makes up when a report names nobody; we report the address the report's letter was sent to",
    "lhost-office365-04.eml": "the label takes the address from a mailto: link that the message itself spells "
                              "differently elsewhere (…-hunter-nyaaaaaaan vs …-hunter-neko-nyaaaaaaan); we report the one in its reply",
}


def _names(verdict: Verdict) -> set[str]:
    return {address.lower() for address in (verdict.recipient, verdict.original_recipient) if address}


def _match(verdicts: list[Verdict], recipient: str) -> Verdict | None:
    return next((v for v in verdicts if recipient.lower() in _names(v)), None)


def _classify(filename: str) -> list[Verdict]:
    return classify((CORPUS / filename).read_bytes())


def _case(filename: str):
    reason = KNOWN_DIFFERENCES.get(filename)
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(filename, id=filename, marks=marks)


def test_corpus_is_there() -> None:
    assert (CORPUS / "labels.tsv").is_file(), f"bounce corpus not found at {CORPUS} (set MAILFLEET_BOUNCE_CORPUS)"
    assert len(LABELS) == 355


@pytest.mark.parametrize("filename", [_case(name) for name in sorted(LABELS)])
def test_file(filename: str) -> None:
    verdicts = _classify(filename)
    problems = []
    for row in LABELS[filename]:
        verdict = _match(verdicts, row["recipient"])
        if verdict is None:
            problems.append(f"{row['recipient']}: not found (got {[v.recipient for v in verdicts]})")
        elif verdict.kind != row["hard_or_soft"]:
            problems.append(f"{row['recipient']}: {verdict.kind} ({verdict.reason}), labelled "
                            f"{row['hard_or_soft']} ({row['reason']})")
    labelled = {row["recipient"].lower() for row in LABELS[filename]}
    for verdict in verdicts:
        if verdict.kind != "none" and not (_names(verdict) & labelled):
            problems.append(f"{verdict.recipient}: reported as failed ({verdict.reason}) but not labelled")
    assert not problems, "; ".join(problems)


def test_accuracy_over_all_rows(capsys: pytest.CaptureFixture[str]) -> None:
    rows = right_recipient = right_kind = right_reason = 0
    for filename, labels in LABELS.items():
        verdicts = _classify(filename)
        for row in labels:
            rows += 1
            verdict = _match(verdicts, row["recipient"])
            if verdict is None and len(verdicts) == 1:
                verdict_kind = verdicts[0].kind  # the kind still counts when the address was misread
            else:
                verdict_kind = verdict.kind if verdict else None
            right_recipient += verdict is not None
            right_kind += verdict_kind == row["hard_or_soft"]
            right_reason += verdict is not None and verdict.reason == row["reason"]
    figures = {"rows": rows, "recipient": right_recipient / rows, "hard_soft": right_kind / rows,
               "reason": right_reason / rows}
    with capsys.disabled():
        print(f"\nbounce corpus: {rows} rows; right recipient {figures['recipient']:.1%}, "
              f"right hard/soft {figures['hard_soft']:.1%}, same reason as the label {figures['reason']:.1%}")
    assert figures["recipient"] >= TARGET, figures
    assert figures["hard_soft"] >= TARGET, figures


NONE_ROWS = sorted({filename for filename, labels in LABELS.items() for row in labels if row["hard_or_soft"] == "none"})


def test_the_none_rows_are_twenty() -> None:
    assert sum(row["hard_or_soft"] == "none" for labels in LABELS.values() for row in labels) == 20


@pytest.mark.parametrize("filename", NONE_ROWS)
def test_nobody_suppressed_as_a_bounce_for_a_non_failure(filename: str) -> None:
    """A feedback report, auto-reply or success notice is no failure: no hard or soft verdict,
    nothing the bounce rules would suppress or count toward the soft-bounce limit. (An ARF
    complaint — feedback-type abuse — is suppressed by the panel as a complaint, a separate
    list reason; an auth-failure report suppresses nobody.)"""
    verdicts = _classify(filename)
    assert verdicts and all(v.kind == "none" for v in verdicts), verdicts
    for verdict in verdicts:
        assert suppression_for(verdict) in (None, "complaint"), verdict
        assert (suppression_for(verdict) == "complaint") == (verdict.feedback_type in ("abuse", "fraud", "virus"))
        assert verdict.as_json()["recipient"] is None
