"""`flask --app panel bounces classify FILE`: one JSON object per failed recipient, or the
kind-none object for a message that reports no failure; a plain error for anything else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import BOUNCE_CORPUS

REPO = Path(__file__).resolve().parents[2]
CORPUS = BOUNCE_CORPUS


def lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines()]


def test_each_failed_recipient_is_one_json_line(runner):
    result = runner.invoke(args=["bounces", "classify", str(CORPUS / "lhost-x2-02.eml")])
    assert result.exit_code == 0, result.output
    found = lines(result.stdout)
    assert [(o["recipient"], o["kind"]) for o in found] == [
        ("kijitora@example.com", "hard"), ("mikeneko@example.com", "soft"), ("sabineko@example.com", "hard")]
    assert found[1]["reason"] == "suspend"


def test_dsn_and_reply_code_come_along(runner):
    result = runner.invoke(args=["bounces", "classify", str(CORPUS / "lhost-postfix-63.eml")])
    assert result.exit_code == 0, result.output
    (found,) = lines(result.stdout)
    assert found == {**found, "recipient": "neko@nyaaan.example.org", "reason": "mailboxfull", "kind": "soft",
                     "dsn": "5.2.2", "code": 552}


@pytest.mark.parametrize("filename, reason", [("arf-16.eml", "feedback"), ("arf-20.eml", "feedback")])
def test_a_feedback_report_names_nobody_as_failed(runner, filename, reason):
    result = runner.invoke(args=["bounces", "classify", str(CORPUS / filename)])
    assert result.exit_code == 0, result.output
    for found in lines(result.stdout):
        assert (found["recipient"], found["reason"], found["kind"]) == (None, reason, "none")
        assert "@" in found["original_recipient"]


def test_an_auto_reply_and_an_ordinary_letter_are_no_failures(runner, tmp_path):
    reply = tmp_path / "reply.eml"
    reply.write_text("From: Ann <ann@example.org>\nSubject: Out of office\nAuto-Submitted: auto-replied\n\nAway.\n")
    letter = tmp_path / "letter.eml"
    letter.write_text("From: Ann <ann@example.org>\nTo: bob@example.com\nSubject: Lunch?\n\nAt noon.\n")
    assert lines(runner.invoke(args=["bounces", "classify", str(reply)]).stdout) == [
        {"recipient": None, "reason": "vacation", "kind": "none", "original_recipient": "ann@example.org"}]
    assert lines(runner.invoke(args=["bounces", "classify", str(letter)]).stdout) == [
        {"recipient": None, "reason": "nofailure", "kind": "none"}]


def test_stdin(runner):
    raw = (CORPUS / "lhost-qmail-02.eml").read_bytes()
    result = runner.invoke(args=["bounces", "classify", "-"], input=raw)
    assert result.exit_code == 0, result.output
    assert [(o["recipient"], o["kind"]) for o in lines(result.stdout)] == [
        ("userunknown@example.jp", "hard"), ("filtered@example.jp", "hard")]


@pytest.mark.parametrize("content, says", [
    (None, "cannot read"),
    (b"\x7fELF\x02\x01\x01\x00\x00\x00\x00", "is not an e-mail message: it is binary data"),
    (b"just a line of text\nand another\n", "is not an e-mail message: it does not start with header fields"),
])
def test_what_is_no_message_is_a_plain_error(runner, tmp_path, content, says):
    path = tmp_path / "file.eml"
    if content is not None:
        path.write_bytes(content)
    result = runner.invoke(args=["bounces", "classify", str(path)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert says in result.stderr and "Traceback" not in result.output


def test_the_real_command(tmp_path):
    """As a script runs it: `flask --app panel bounces classify FILE`, in a process of its own."""
    env = dict(os.environ, MAILFLEET_INSTANCE_PATH=str(tmp_path), MAILFLEET_SECRET_KEY="x",
               DATABASE_URL=f"sqlite:///{tmp_path / 'unused.db'}")
    result = subprocess.run([sys.executable, "-m", "flask", "--app", "panel", "bounces", "classify",
                             str(CORPUS / "lhost-exim-61.eml" if (CORPUS / "lhost-exim-61.eml").exists() else CORPUS / "lhost-exim-01.eml")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    found = lines(result.stdout)
    assert found and all(set(o) >= {"recipient", "reason", "kind"} and o["kind"] in ("hard", "soft") for o in found)
