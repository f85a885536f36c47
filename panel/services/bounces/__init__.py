"""Bounce classification: what a returned message (or a refusal at delivery time) says about
which recipient failed, why (a reason from a fixed vocabulary) and whether for good.

- `classify(raw)` → verdicts for every failed recipient, or one kind-"none" verdict for
  feedback reports, auto-replies and success notices;
- `classify_reply(code, text)` → the verdict for an SMTP refusal at delivery time.

Hard (never mail again) = userunknown, hostunknown, hasmoved, and notaccept with a 5xx
code. ARF complaints are kind "none" here — not a delivery failure — but `Verdict.complaint`
tells the panel to suppress the address anyway, with reason "complaint".
"""

from .classify import Verdict, classify, classify_reply, suppression_for
from .message import NotAMessage, read_message
from .reasons import FAILURE_REASONS, HARD_REASONS, NONE_REASONS, kind_for, reason_for

__all__ = ["FAILURE_REASONS", "HARD_REASONS", "NONE_REASONS", "NotAMessage", "Verdict", "read_message", "classify", "classify_reply", "kind_for",
           "reason_for", "suppression_for"]
