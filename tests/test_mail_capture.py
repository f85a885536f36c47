"""The mail capture standing in for the recipients' mail servers (devserver/mail_capture.py)."""

from __future__ import annotations

import json
import os
import smtplib
import socket
import subprocess
import sys
import threading
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from devserver.exim import REPO_ROOT
from devserver.mail_capture import CaptureServer, deferred_share, peak_per_window, read_maildir, wait_for_count
from devserver.ports import free_port

CLIENT_IP = "127.0.0.5"


def simple(subject: str, body: str = "Hello.\n") -> bytes:
    return (f"From: a@sender.test\r\nTo: b@example.org\r\nSubject: {subject}\r\n\r\n" + body.replace("\n", "\r\n")).encode()


def test_each_recipient_gets_a_file_with_trace_headers(capture: CaptureServer) -> None:
    with smtplib.SMTP("127.0.0.1", capture.port, local_hostname="ip5.sender.test",
                      source_address=(CLIENT_IP, 0)) as smtp:
        refused = smtp.sendmail("bounce+1-t@bounces.test", ["ann@example.org", "bob@example.net"], simple("two"))
    assert refused == {}
    captured = wait_for_count(capture, 2, timeout=10)
    assert sorted(c.rcpt_to for c in captured) == ["ann@example.org", "bob@example.net"]
    for item in captured:
        assert (item.peer_ip, item.helo, item.mail_from) == (CLIENT_IP, "ip5.sender.test", "bounce+1-t@bounces.test")
        assert item.message["Subject"] == "two"
        assert isinstance(item.message, EmailMessage)
        # The file holds the trace headers, then the message exactly as received (LF line ends).
        assert item.raw == simple("two").replace(b"\r\n", b"\n")
        head = item.path.read_bytes().split(b"\n")[:4]
        assert head == [
            f"X-Capture-Peer: {CLIENT_IP}".encode(),
            b"X-Capture-Helo: ip5.sender.test",
            b"X-Capture-Mail-From: bounce+1-t@bounces.test",
            f"X-Capture-Rcpt-To: {item.rcpt_to}".encode(),
        ]
        assert item.path.parent == capture.maildir / "new"


def test_null_sender_is_recorded_as_empty(capture: CaptureServer) -> None:
    with smtplib.SMTP("127.0.0.1", capture.port) as smtp:
        smtp.sendmail("", ["ann@example.org"], simple("dsn"))
    (item,) = wait_for_count(capture, 1, timeout=10)
    assert item.mail_from == ""
    assert b"X-Capture-Mail-From: <>\n" in item.path.read_bytes()


def test_rules_defer_reject_and_accept(capture: CaptureServer) -> None:
    capture.set_rule("busy@example.org", "defer")
    capture.set_rule("Gone@Example.org", "reject")
    with smtplib.SMTP("127.0.0.1", capture.port) as smtp:
        refused = smtp.sendmail("x@sender.test", ["busy@example.org", "gone@example.org", "ok@example.org"],
                                simple("mixed"))
    assert refused == {
        "busy@example.org": (451, b"4.2.0 <busy@example.org>: mailbox busy, try later"),
        "gone@example.org": (550, b"5.1.1 <gone@example.org>: no such user"),
    }
    (item,) = wait_for_count(capture, 1, timeout=10)
    assert item.rcpt_to == "ok@example.org"


def test_rules_are_reread_when_the_file_changes(capture: CaptureServer) -> None:
    with smtplib.SMTP("127.0.0.1", capture.port) as smtp:
        smtp.ehlo()
        smtp.mail("x@sender.test")
        assert smtp.rcpt("ann@example.org")[0] == 250
        capture.set_rule("ann@example.org", "defer")
        assert smtp.rcpt("ann@example.org")[0] == 451  # same connection, next RCPT
        capture.set_rule("ann@example.org", "accept")
        assert smtp.rcpt("ann@example.org")[0] == 250
        # Written by hand, as a person would edit it.
        capture.rules_file.write_text(json.dumps({"ann@example.org": "reject"}), encoding="utf-8")
        assert smtp.rcpt("ann@example.org")[0] == 550
        capture.rules_file.unlink()
        assert smtp.rcpt("ann@example.org")[0] == 250
        smtp.rset()


def test_a_broken_rules_file_keeps_the_last_good_rules(capture: CaptureServer) -> None:
    capture.set_rule("ann@example.org", "reject")
    with smtplib.SMTP("127.0.0.1", capture.port) as smtp:
        smtp.ehlo()
        smtp.mail("x@sender.test")
        assert smtp.rcpt("ann@example.org")[0] == 550
        capture.rules_file.write_text('{"ann@example.org": "rej', encoding="utf-8")
        assert smtp.rcpt("ann@example.org")[0] == 550
        capture.rules_file.write_text('{"ann@example.org": "bounce"}', encoding="utf-8")
        assert smtp.rcpt("ann@example.org")[0] == 550
        smtp.rset()


def test_set_rule_refuses_an_unknown_action(capture: CaptureServer) -> None:
    with pytest.raises(ValueError, match="accept, defer, reject"):
        capture.set_rule("ann@example.org", "bounce")


def _dialogue(port: int, script: bytes) -> bytes:
    """Send raw SMTP (pipelined, in one write) and return every reply until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.recv(1024)  # banner
        sock.sendall(script)
        replies = b""
        while chunk := sock.recv(65536):
            replies += chunk
    return replies


def test_data_transparency_and_pipelining(capture: CaptureServer) -> None:
    body = b"Subject: dots\r\n\r\nends with a dot.\r\n..\r\n...leading dots\r\n.\r\n"
    # The client stuffed a dot in front of every line starting with one; the lone "." ends DATA.
    script = (b"EHLO raw.test\r\nMAIL FROM:<x@sender.test>\r\nRCPT TO:<ann@example.org>\r\nDATA\r\n"
              + body + b"MAIL FROM:<>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n.\r\nQUIT\r\n")
    replies = _dialogue(capture.port, script)
    assert replies.count(b"250 2.0.0 OK queued as ") == 2
    assert replies.endswith(b"221 Bye\r\n")
    first, empty = wait_for_count(capture, 2, timeout=10)
    assert first.raw == b"Subject: dots\n\nends with a dot.\n.\n..leading dots\n"
    assert first.helo == "raw.test"
    assert (empty.rcpt_to, empty.mail_from, empty.raw) == ("bob@example.org", "", b"")


def test_readers_never_see_half_a_message(capture: CaptureServer) -> None:
    body = "".join(f"line {n:06d} of a long letter, padded to be large enough\n" for n in range(4000))
    count = 60
    errors: list[BaseException] = []

    def send() -> None:
        try:
            with smtplib.SMTP("127.0.0.1", capture.port) as smtp:
                for n in range(count):
                    smtp.sendmail("x@sender.test", [f"r{n}@example.org"], simple(f"big {n}", body + "END\n"))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    seen = 0
    try:
        while sender.is_alive() or seen < count:
            items = read_maildir(capture.maildir)
            for item in items:
                assert item.raw.endswith(b"END\n"), f"{item.path} was read incomplete"
            seen = len(items)
            if not sender.is_alive() and seen < count:
                break
    finally:
        sender.join()
    assert errors == []
    assert len(wait_for_count(capture, count, timeout=10)) == count
    assert os.listdir(capture.maildir / "tmp") == []
    assert sorted(os.listdir(capture.maildir)) == ["cur", "new", "tmp"]


def test_many_messages_over_several_connections_all_arrive(capture: CaptureServer) -> None:
    # A sanity check of volume, not of speed (the benchmarks measure that).
    per_connection, connections = 500, 4
    errors: list[BaseException] = []

    def send(k: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", capture.port) as smtp:
                for n in range(per_connection):
                    smtp.sendmail("x@sender.test", [f"r{k}-{n}@example.org"], simple(f"{k}-{n}"))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(k,)) for k in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    captured = wait_for_count(capture, per_connection * connections, timeout=30)
    assert len({c.rcpt_to for c in captured}) == per_connection * connections
    assert len({c.path.name for c in captured}) == per_connection * connections


def test_wait_for_count_says_how_many_arrived(capture: CaptureServer) -> None:
    with pytest.raises(TimeoutError, match="0 of 1 messages"):
        wait_for_count(capture.maildir, 1, timeout=0.2)


def test_capture_server_on_a_given_port_and_rules_file(tmp_path: Path) -> None:
    port = free_port()
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"gone@example.org": "reject"}), encoding="utf-8")
    with CaptureServer(tmp_path / "mail", port=port, rules_file=rules) as server:
        assert server.port == port
        with smtplib.SMTP("127.0.0.1", port) as smtp:
            smtp.ehlo()
            smtp.mail("x@sender.test")
            assert smtp.rcpt("gone@example.org")[0] == 550
            smtp.rset()
        server.set_rule("busy@example.org", "defer")
        assert json.loads(rules.read_text()) == {"busy@example.org": "defer", "gone@example.org": "reject"}
    with pytest.raises(OSError):
        smtplib.SMTP("127.0.0.1", port, timeout=2)


def test_command_line_runs_the_server(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "devserver.mail_capture", "--listen", f"127.0.0.1:{port}", "--maildir", str(tmp_path / "m")],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith(f"mail capture listening on 127.0.0.1:{port}")
        with smtplib.SMTP("127.0.0.1", port) as smtp:
            smtp.sendmail("x@sender.test", ["ann@example.org"], simple("cli"))
        assert wait_for_count(tmp_path / "m", 1, timeout=10)[0].message["Subject"] == "cli"
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
        if process.stdout is not None:
            process.stdout.close()


def test_command_line_refuses_a_bad_listen_address(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devserver.mail_capture", "--listen", "localhost", "--maildir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2
    assert "--listen wants HOST:PORT" in result.stderr


# -- playing mailbox providers: rules per domain, throttling, the attempts log ---------------


def _letter(message_id: str, to: str = "x@example.org") -> bytes:
    return (f"From: a@sender.test\r\nTo: {to}\r\nMessage-ID: {message_id}\r\nSubject: s\r\n\r\nHi.\r\n").encode()


def _send_one(port: int, rcpt: str, message_id: str, source: str = CLIENT_IP) -> tuple[int, bytes]:
    """One letter to one recipient; returns the first refusal (RCPT or end of DATA) or (250, reply)."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="sender.test", source_address=(source, 0)) as smtp:
        smtp.ehlo()
        smtp.mail("bounce@sender.test")
        code, reply = smtp.rcpt(rcpt)
        if code != 250:
            return code, reply
        return smtp.data(_letter(message_id, rcpt))


def test_domain_rules_answer_for_every_address_of_the_domain(capture: CaptureServer) -> None:
    capture.set_rule("@busy.test", "defer")
    capture.set_rule("@GONE.test", "reject")
    capture.set_rule("vip@busy.test", "accept")  # an address's own rule wins over its domain's
    with smtplib.SMTP("127.0.0.1", capture.port) as smtp:
        smtp.ehlo()
        smtp.mail("x@sender.test")
        assert smtp.rcpt("ann@busy.test") == (451, b"4.2.0 <ann@busy.test>: mailbox busy, try later")
        assert smtp.rcpt("Bob@Gone.Test") == (550, b"5.1.1 <Bob@Gone.Test>: no such user")
        assert smtp.rcpt("vip@busy.test")[0] == 250
        assert smtp.rcpt("ann@sub.busy.test")[0] == 250  # a domain rule is for that domain only
        smtp.rset()
    assert json.loads(capture.rules_file.read_text())["@gone.test"] == "reject"


def test_throttle_answers_gmail_421_after_n_per_minute_per_source_ip(capture: CaptureServer) -> None:
    capture.set_rule("@gmail.test", {"throttle_per_minute": 3})
    for n in range(3):
        assert _send_one(capture.port, f"u{n}@gmail.test", f"<a{n}@s>")[0] == 250
    code, reply = _send_one(capture.port, "u3@gmail.test", "<a3@s>")
    assert code == 421
    lines = reply.decode().split("\n")  # Gmail answers in several lines, each with its code
    assert all(line.startswith("4.7.28 ") for line in lines) and f"[{CLIENT_IP}]" in lines[0]
    text = " ".join(line.removeprefix("4.7.28 ").strip() for line in lines)
    assert "unusual rate of unsolicited mail originating from your IP address" in text
    assert "temporarily rate limited" in text
    # Another source IP has its own count; another domain is not throttled.
    assert _send_one(capture.port, "u4@gmail.test", "<b0@s>", source="127.0.0.6")[0] == 250
    assert _send_one(capture.port, "u5@other.test", "<c0@s>")[0] == 250
    assert _send_one(capture.port, "u6@gmail.test", "<a4@s>")[0] == 421
    captured = wait_for_count(capture, 5, timeout=10)
    assert sorted(c.message["Message-ID"] for c in captured) == ["<a0@s>", "<a1@s>", "<a2@s>", "<b0@s>", "<c0@s>"]


def test_throttle_window_slides_and_a_reply_of_ones_own(capture: CaptureServer) -> None:
    capture.set_rule("@yahoo.test", {"throttle_per_minute": 2, "window_seconds": 1,
                                     "reply": "421 4.7.0 [TSS04] Messages from {ip} temporarily deferred"})
    assert [_send_one(capture.port, f"u{n}@yahoo.test", f"<y{n}@s>")[0] for n in range(3)] == [250, 250, 421]
    assert _send_one(capture.port, "u9@yahoo.test", "<y9@s>")[1] == (
        f"4.7.0 [TSS04] Messages from {CLIENT_IP} temporarily deferred".encode())
    time.sleep(1.1)
    assert _send_one(capture.port, "u3@yahoo.test", "<y3@s>")[0] == 250


def test_domains_of_one_provider_share_its_throttle(capture: CaptureServer) -> None:
    capture.set_rule("@gmail.test", {"throttle_per_minute": 2, "provider": "google"})
    capture.set_rule("@googlemail.test", {"throttle_per_minute": 2, "provider": "google"})
    assert _send_one(capture.port, "a@gmail.test", "<g0@s>")[0] == 250
    assert _send_one(capture.port, "b@googlemail.test", "<g1@s>")[0] == 250
    assert _send_one(capture.port, "c@gmail.test", "<g2@s>")[0] == 421


def test_attempts_log_records_every_answer_with_time_ip_domain_and_message_id(capture: CaptureServer) -> None:
    capture.set_rule("@gmail.test", {"throttle_per_minute": 1})
    capture.set_rule("gone@example.org", "reject")
    before = time.time()
    assert _send_one(capture.port, "a@gmail.test", "<m1@s>")[0] == 250
    assert _send_one(capture.port, "b@gmail.test", "<m2@s>")[0] == 421
    assert _send_one(capture.port, "gone@example.org", "<m3@s>")[0] == 550
    assert _send_one(capture.port, "c@example.org", "<m4@s>", source="127.0.0.6")[0] == 250
    after = time.time()
    assert capture.attempts_file == capture.maildir.with_name("captured.attempts.jsonl")
    attempts = capture.attempts()
    assert [(a["result"], a["code"], a["ip"], a["domain"], a["group"], a["rcpt"], a["message_id"]) for a in attempts] == [
        ("accepted", 250, CLIENT_IP, "gmail.test", "gmail.test", "a@gmail.test", "<m1@s>"),
        ("deferred", 421, CLIENT_IP, "gmail.test", "gmail.test", "b@gmail.test", None),  # refused before DATA
        ("rejected", 550, CLIENT_IP, "example.org", "example.org", "gone@example.org", None),
        ("accepted", 250, "127.0.0.6", "example.org", "example.org", "c@example.org", "<m4@s>"),
    ]
    assert all(before <= a["time"] <= after for a in attempts)
    assert "4.7.28" in attempts[1]["reply"]
    # Every line is one JSON object, written whole.
    lines = capture.attempts_file.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])


def test_throttle_at_end_of_data_logs_the_deferred_letters_message_id(capture: CaptureServer) -> None:
    capture.set_rule("@gmail.test", {"throttle_per_minute": 1, "at": "data"})
    assert _send_one(capture.port, "a@gmail.test", "<d1@s>")[0] == 250
    code, reply = _send_one(capture.port, "b@gmail.test", "<d2@s>")
    assert code == 421 and b"4.7.28" in reply
    assert [(a["result"], a["message_id"]) for a in capture.attempts()] == [("accepted", "<d1@s>"), ("deferred", "<d2@s>")]
    assert [c.message["Message-ID"] for c in wait_for_count(capture, 1, timeout=10)] == ["<d1@s>"]


def test_each_message_records_its_source_ip_time_and_message_id(capture: CaptureServer) -> None:
    before = time.time()
    assert _send_one(capture.port, "ann@example.org", "<t1@s>")[0] == 250
    (item,) = wait_for_count(capture, 1, timeout=10)
    assert item.peer_ip == CLIENT_IP
    assert before <= item.received_at <= time.time()
    assert item.message_id == "<t1@s>"
    assert f"X-Capture-Time: {item.received_at:.6f}".encode() in item.path.read_bytes().split(b"\n")[:5]


def test_per_window_counts_and_deferred_share_from_the_attempts(tmp_path: Path) -> None:
    def attempt(t: float, ip: str, result: str, group: str = "google") -> dict:
        return {"time": t, "ip": ip, "group": group, "result": result}

    attempts = [attempt(0, "a", "accepted"), attempt(30, "a", "accepted"), attempt(59.9, "a", "accepted"),
                attempt(60.5, "a", "accepted"), attempt(61, "a", "deferred"), attempt(10, "b", "accepted"),
                attempt(10, "a", "accepted", group="yahoo")]
    assert peak_per_window(attempts, window=60.0) == {("a", "google"): 3, ("b", "google"): 1, ("a", "yahoo"): 1}
    assert deferred_share(attempts) == pytest.approx(1 / 7)
    assert deferred_share([]) == 0.0


def test_bad_provider_rules_are_refused_with_what_to_fix(capture: CaptureServer) -> None:
    with pytest.raises(ValueError, match="throttle_per_minute"):
        capture.set_rule("@gmail.test", {"throttle_per_minute": 0})
    with pytest.raises(ValueError, match="unknown key.*burst"):
        capture.set_rule("@gmail.test", {"throttle_per_minute": 5, "burst": 3})
    with pytest.raises(ValueError, match="per recipient domain"):
        capture.set_rule("ann@gmail.test", {"throttle_per_minute": 5})
    with pytest.raises(ValueError, match="at.*rcpt.*data"):
        capture.set_rule("@gmail.test", {"throttle_per_minute": 5, "at": "mail"})
    assert not capture.rules_file.exists()
    # Written by hand, a bad throttle keeps the last good rules (as for any bad rules file).
    capture.set_rule("@gmail.test", {"throttle_per_minute": 1})
    assert _send_one(capture.port, "a@gmail.test", "<k1@s>")[0] == 250
    capture.rules_file.write_text(json.dumps({"@gmail.test": {"throttle_per_minute": -1}}), encoding="utf-8")
    assert _send_one(capture.port, "b@gmail.test", "<k2@s>")[0] == 421
