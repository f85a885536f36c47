"""The mail capture standing in for the recipients' mail servers (devserver/mail_capture.py)."""

from __future__ import annotations

import json
import os
import smtplib
import socket
import subprocess
import sys
import threading
from email.message import EmailMessage
from pathlib import Path

import pytest

from devserver.exim import REPO_ROOT
from devserver.mail_capture import CaptureServer, read_maildir, wait_for_count
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
