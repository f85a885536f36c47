"""The worker's Exim configuration (ansible/roles/exim), checked against a real Exim.

Letters are submitted with smtplib as the agent does, Exim delivers them to the
mail capture (its smarthost), and the tests look at what the capture saw, at
Exim's logs and at the bounce spool its pipe writes into.
"""

from __future__ import annotations

import re
import smtplib
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from devserver.exim import (
    EXIM_BIN,
    REPO_ROOT,
    ROLE_DIR,
    TEMPLATE_NAME,
    TRUSTED_CONFIGS,
    Exim,
    EximError,
    EximSettings,
    render_config,
    template_vars,
)
from devserver.mail_capture import CaptureServer, wait_for_count
from devserver.ports import free_port

EximFactory = Callable[..., Exim]  # the exim_factory fixture (tests/conftest.py)
BOUNCE_DOMAIN = "bounces.test"  # the factory's default bounce domain
BOUNCE_INTAKE = REPO_ROOT / "worker_agent" / "bounce_intake.py"
OUTSIDE_HOST = "127.0.0.9"  # a loopback address that is not a relay submitter: "the Internet"
DEFAULTS_FILE = ROLE_DIR / "defaults" / "main.yml"


def letter(subject: str, source_ip: str | None = "127.0.0.2", *, to: str = "ann@example.org",
           extra_headers: tuple[str, ...] = ()) -> bytes:
    headers = [
        "From: Example News <news@example.com>",
        f"To: <{to}>",
        f"Subject: {subject}",
        f"Message-ID: <{subject.replace(' ', '.')}@example.com>",
        "Date: Thu, 01 Jan 2026 00:00:00 +0000",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        *extra_headers,
    ]
    if source_ip is not None:
        headers.append(f"X-Mailfleet-Source-IP: {source_ip}")
    return ("\r\n".join(headers) + "\r\n\r\nHello,\r\nthis is " + subject + ".\r\n").encode()


def submit(exim: Exim, sender: str, recipients: list[str], message: bytes,
           source_address: str | None = None) -> tuple[int, bytes]:
    """One letter over SMTP; returns Exim's reply to DATA."""
    with smtplib.SMTP("127.0.0.1", exim.settings.smtp_port, local_hostname="agent.test",
                      source_address=(source_address, 0) if source_address else None) as smtp:
        return send_on(smtp, sender, recipients, message)


def send_on(smtp: smtplib.SMTP, sender: str, recipients: list[str], message: bytes) -> tuple[int, bytes]:
    smtp.ehlo_or_helo_if_needed()
    code, reply = smtp.mail(sender)
    assert code == 250, reply
    for rcpt in recipients:
        code, reply = smtp.rcpt(rcpt)
        assert code == 250, (rcpt, reply)
    code, reply = smtp.data(message)
    if code != 250:
        smtp.rset()
    return code, reply


def spool_files(spool: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(spool.rglob("*")) if p.is_file() and not p.name.startswith(".")]


def wait_for_spool(spool: Path, needle: bytes, exim: Exim, timeout: float = 20) -> bytes:
    """The first bounce-spool file containing `needle`, waiting for it to appear."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for content in spool_files(spool):
            if needle in content:
                return content
        time.sleep(0.1)
    raise AssertionError(
        f"nothing with {needle!r} in bounce spool {spool} after {timeout} s; main log:\n"
        + "\n".join(exim.log_lines()[-20:])
    )


# -- the configuration itself ------------------------------------------------------------


def _settings(tmp_path: Path, **changes: object) -> EximSettings:
    values: dict[str, object] = {
        "rundir": tmp_path / "exim",
        "smtp_port": 2525,
        "source_ips": [("127.0.0.2", "ip2.worker.test"), ("127.0.0.3", "ip3.worker.test")],
        "smarthost": ("127.0.0.1", 2526),
        "bounce_domains": [BOUNCE_DOMAIN],
        "bounce_spool": tmp_path / "bounces",
    }
    values.update(changes)
    return EximSettings(**values)  # type: ignore[arg-type]


CONFIG_VARIANTS = {
    "smarthost": {},
    "dnslookup, as on a worker": {
        "smarthost": None,
        "listen": "0.0.0.0",
        "overrides": {"exim_listen_addresses": [], "exim_smtp_port": 25, "exim_daemon_startup_retries": 9},
    },
    "ipv6 source ip": {"source_ips": [("127.0.0.2", "ip2.worker.test"), ("2001:db8::25", "ip6.worker.test")]},
    "no source ips, no bounce domains": {"source_ips": [], "bounce_domains": []},
    "several bounce domains": {"bounce_domains": ["bounces.test", "b.example.net"]},
    "queue only": {"queue_only": True},
    "tls": {"overrides": {"exim_tls_certificate": "/etc/ssl/certs/ssl-cert-snakeoil.pem",
                          "exim_tls_privatekey": "/etc/ssl/private/ssl-cert-snakeoil.key"}},
}


@pytest.mark.parametrize("changes", CONFIG_VARIANTS.values(), ids=CONFIG_VARIANTS.keys())
def test_exim_accepts_the_rendered_config(tmp_path: Path, changes: dict[str, object]) -> None:
    config = tmp_path / "exim4.conf"
    config.write_text(render_config(_settings(tmp_path, **changes)), encoding="utf-8")
    result = subprocess.run([EXIM_BIN, "-bV", "-C", str(config)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Exim version" in result.stdout


def test_rendered_config_starts_with_the_managed_banner(tmp_path: Path) -> None:
    text = render_config(_settings(tmp_path))
    assert text.startswith("#\n# Rendered by devserver/exim.py")


def test_one_smtp_transport_per_source_ip(tmp_path: Path) -> None:
    text = render_config(_settings(tmp_path, source_ips=[("127.0.0.2", "a.test"), ("2001:db8::25", "b.test")]))
    # HELO: the agent's map when it names the IP with the letter's sending domain ("<ip>/<domain>"),
    # else the IP alone, else the configured name (also while the map is missing)
    helo = (r"\$\{{if exists\{{MAILFLEET_HELO_MAP\}}\{{\$\{{lookup\{{{ip}/MAILFLEET_LETTER_DOMAIN\}}"
            r"lsearch\{{MAILFLEET_HELO_MAP\}}\{{\$value\}}\{{"
            r"\$\{{lookup\{{{ip}\}}lsearch\{{MAILFLEET_HELO_MAP\}}\{{\$value\}}\{{{name}\}}\}}\}}\}}\}}\{{{name}\}}\}}")
    assert re.search(r"^smtp_127_0_0_2:\n  driver = smtp\n  interface = <; 127\.0\.0\.2\n  helo_data = "
                     + helo.format(ip=r"127\.0\.0\.2", name=r"a\.test") + "$", text, re.M)
    assert re.search(r"^smtp_2001_db8__25:\n  driver = smtp\n  interface = <; 2001:db8::25\n  helo_data = "
                     + helo.format(ip="2001:db8::25", name=r"b\.test") + "$", text, re.M)
    # The router picks among them by looking the header up in the fixed list (de-tainting it).
    assert "MAILFLEET_SOURCE_IPS = <; 127.0.0.2 ; 2001:db8::25\n" in text


def _defaults() -> list[tuple[str, str]]:
    """(variable, comment line above it) for each top-level variable in defaults/main.yml."""
    lines = DEFAULTS_FILE.read_text(encoding="utf-8").splitlines()
    found = []
    for index, line in enumerate(lines):
        match = re.match(r"^(exim_\w+):", line)
        if match:
            found.append((match.group(1), lines[index - 1] if index else ""))
    return found


def test_every_template_variable_has_a_commented_default() -> None:
    template = (ROLE_DIR / "templates" / TEMPLATE_NAME).read_text(encoding="utf-8")
    used = set(re.findall(r"\b(exim_\w+)\b", template))
    defaults = _defaults()
    names = {name for name, _ in defaults}
    assert used - names == set(), "template variables without a default"
    assert names - used - {"exim_agent_directory", "exim_bounce_spool"} == set(), "defaults the template never uses"
    uncommented = [name for name, above in defaults if not above.startswith("# ")]
    assert uncommented == [], "each default needs a one-line comment above it"
    # The local instances set every variable the role has (except those only used inside defaults).
    local = set(template_vars(_settings(Path("/nonexistent")))) - {"ansible_managed"}
    assert local == used


# -- source IP and HELO per letter -------------------------------------------------------


def _check_source_ips(capture: CaptureServer, count: int) -> None:
    captured = wait_for_count(capture, count, timeout=60)
    assert len(captured) == count
    wrong = []
    for item in captured:
        subject = item.message["Subject"]
        want_ip = re.search(r"via (127\.0\.0\.\d)", subject).group(1)  # type: ignore[union-attr]
        want_helo = {"127.0.0.2": "ip2.worker.test", "127.0.0.3": "ip3.worker.test"}[want_ip]
        if (item.peer_ip, item.helo) != (want_ip, want_helo):
            wrong.append((subject, item.peer_ip, item.helo))
        assert "X-Mailfleet-Source-IP" not in item.message, "control header left the node"
        assert "X-Mailfleet-Campaign" not in item.message, "control header left the node"
        assert item.message["X-Other"] == "kept"
        # A test send's mark is the one X-Mailfleet header that leaves, and only on a test letter.
        n = int(re.search(r"letter (\d+) ", subject).group(1))  # type: ignore[union-attr]
        assert item.message.get_all("X-Mailfleet-Test") == (["1"] if n % 3 == 0 else None), subject
    assert wrong == [], f"{len(wrong)} of {count} letters went out from the wrong IP/HELO"


def _submit_interleaved(exim: Exim, count: int, connections: int = 2) -> None:
    smtps = [smtplib.SMTP("127.0.0.1", exim.settings.smtp_port, local_hostname="agent.test") for _ in range(connections)]
    try:
        for n in range(count):
            ip = ("127.0.0.2", "127.0.0.3")[n % 2]
            message = letter(f"letter {n} via {ip}", ip, to=f"r{n}@example.org",
                             extra_headers=("X-Other: kept", "X-Mailfleet-Campaign: 12")
                             + (("X-Mailfleet-Test: 1",) if n % 3 == 0 else ()))
            code, reply = send_on(smtps[n % connections], f"bounce+{n}-tok@{BOUNCE_DOMAIN}", [f"r{n}@example.org"], message)
            assert code == 250, reply
    finally:
        for smtp in smtps:
            smtp.quit()


def test_letters_leave_from_their_source_ip_with_its_helo(exim: Exim, capture: CaptureServer) -> None:
    _submit_interleaved(exim, 64)
    _check_source_ips(capture, 64)
    assert exim.wait_queue_empty(timeout=30)


def test_queued_letters_keep_their_source_ip_when_connections_are_reused(
    exim_factory: EximFactory, capture: CaptureServer
) -> None:
    # With a backlog, Exim delivers the letters waiting for a host down a connection
    # it keeps open. With a single transport whose interface came from the header,
    # half of these letters went out from the wrong IP (the connection's, not their
    # own); one transport per IP keeps each connection's IP fixed. No queue runner of its own:
    # one starting during the forced run takes letters off its connections.
    exim = exim_factory(queue_only=True, queue_interval="1h")
    _submit_interleaved(exim, 80, connections=3)
    assert exim.queue_count() == 80
    exim.force_queue_run(two_stage=True)
    _check_source_ips(capture, 80)
    deliveries = exim.wait_for_log(r" => r\d+@example\.org ", count=80)
    reused = [line for line in deliveries if "[127.0.0.1]* " in line]  # "*": down an open connection
    assert len(reused) > 40, "the test no longer exercises connection reuse"
    for line in deliveries:
        n = int(re.search(r" => r(\d+)@", line).group(1))  # type: ignore[union-attr]
        want = ("127.0.0.2", "127.0.0.3")[n % 2]
        assert f"I=[{want}]" in line and f"T=smtp_{want.replace('.', '_')} " in line, line


def test_submission_reply_carries_the_exim_id_and_the_log_the_outcome(exim: Exim, capture: CaptureServer) -> None:
    code, reply = submit(exim, f"bounce+77-abc@{BOUNCE_DOMAIN}", ["ann@example.org"], letter("id check", "127.0.0.3"))
    assert code == 250
    match = re.search(rb"id=(\S+)", reply)
    assert match, reply
    exim_id = match.group(1).decode()
    wait_for_count(capture, 1, timeout=20)
    arrival = exim.wait_for_log(rf"^\S+ \S+ (?:[-+]\d{{4}} )?{re.escape(exim_id)} <= bounce\+77-abc@{BOUNCE_DOMAIN} ")[0]
    assert "I=[127.0.0.1]" in arrival  # incoming interface
    delivery = exim.wait_for_log(rf"^\S+ \S+ (?:[-+]\d{{4}} )?{re.escape(exim_id)} => ann@example\.org ")[0]
    assert "T=smtp_127_0_0_3" in delivery and "I=[127.0.0.3]" in delivery
    assert f"P=<bounce+77-abc@{BOUNCE_DOMAIN}>" in delivery  # VERP return path on delivery lines
    assert 'C="250 2.0.0 OK queued as ' in delivery  # the remote's reply
    exim.wait_for_log(rf"^\S+ \S+ (?:[-+]\d{{4}} )?{re.escape(exim_id)} Completed")


# -- the DATA check on the source IP -----------------------------------------------------


REFUSED = {
    "not ours": (letter("foreign", "10.9.9.9"), rb'X-Mailfleet-Source-IP "10.9.9.9" is not a source IP of this node'),
    "missing": (letter("no header", None), rb"X-Mailfleet-Source-IP header missing or empty"),
    "empty": (letter("empty", None, extra_headers=("X-Mailfleet-Source-IP: ",)), rb"X-Mailfleet-Source-IP header missing or empty"),
    "two headers": (letter("twice", "127.0.0.2", extra_headers=("X-Mailfleet-Source-IP: 127.0.0.3",)),
                    rb"is not a source IP of this node"),
    "list": (letter("list", "127.0.0.2 ; 127.0.0.3"), rb"is not a source IP of this node"),
}


@pytest.mark.parametrize(("message", "text"), REFUSED.values(), ids=REFUSED.keys())
def test_letter_without_one_of_our_source_ips_is_refused_at_data(
    exim: Exim, capture: CaptureServer, message: bytes, text: bytes
) -> None:
    code, reply = submit(exim, f"bounce+1-x@{BOUNCE_DOMAIN}", ["ann@example.org"], message)
    assert code == 550
    assert reply.startswith(b"5.7.1 ")
    reply = reply.replace(b"\n5.7.1 ", b" ")  # Exim wraps long replies over several lines
    assert text in reply
    assert b"127.0.0.2, 127.0.0.3" in reply  # says which IPs would do
    assert exim.queue_count() == 0
    assert capture.count() == 0


# -- remote refusals, DSNs and the bounce pipe -------------------------------------------


def test_remote_defer_and_reject_are_logged_and_the_reject_bounces_to_the_pipe(
    exim: Exim, capture: CaptureServer
) -> None:
    capture.set_rule("busy@example.org", "defer")
    capture.set_rule("gone@example.org", "reject")
    assert submit(exim, f"bounce+9002-busytok@{BOUNCE_DOMAIN}", ["busy@example.org"], letter("busy"))[0] == 250
    assert submit(exim, f"bounce+9003-gonetok@{BOUNCE_DOMAIN}", ["gone@example.org"], letter("gone"))[0] == 250

    deferred = exim.wait_for_log(r" == busy@example\.org ")[0]
    assert "451 4.2.0 <busy@example.org>: mailbox busy, try later" in deferred
    assert "T=smtp_127_0_0_2" in deferred
    failed = exim.wait_for_log(r" \*\* gone@example\.org ")[0]
    assert "550 5.1.1 <gone@example.org>: no such user" in failed

    # Exim's DSN for the rejected letter goes to its VERP sender, which is piped to the intake.
    dsn = wait_for_spool(exim.bounce_spool, b"9003-gonetok", exim)
    assert b"gone@example.org" in dsn
    exim.wait_for_log(rf" => \S+ <bounce\+9003-gonetok@{re.escape(BOUNCE_DOMAIN)}> P=<> R=mailfleet_bounces T=mailfleet_bounce_pipe ")
    if not BOUNCE_INTAKE.exists():  # the stub keeps the message as it came
        assert b"X-Stub-Recipient: bounce+9003-gonetok@bounces.test\n" in dsn
        assert b"X-Failed-Recipients: gone@example.org" in dsn
        assert b"Status: 5.0.0" in dsn
    assert capture.count() == 0
    assert exim.queue_count() == 1  # the deferred letter waits for its retry
    # Queue runs that skip it (retry time not reached) add no "==" lines: one per real attempt.
    exim.queue_run()
    assert len([line for line in exim.log_lines() if " == busy@example.org " in line]) == 1


@pytest.mark.parametrize("local_part", ["bounce+4242-f00d", "unsubscribe+4242-f00d"])
def test_mail_from_outside_to_a_verp_address_is_piped(exim: Exim, local_part: str) -> None:
    address = f"{local_part}@{BOUNCE_DOMAIN}"
    # An incoming bounce has no source IP header and comes from a host that may not relay.
    code, reply = submit(exim, "", [address], letter("a bounce", None, to=address), source_address=OUTSIDE_HOST)
    assert code == 250, reply
    content = wait_for_spool(exim.bounce_spool, b"4242-f00d", exim)
    assert b"a bounce" in content
    exim.wait_for_log(rf" => \S+ <{re.escape(address)}> .*R=mailfleet_bounces T=mailfleet_bounce_pipe ")
    assert exim.wait_queue_empty(timeout=10)


@pytest.mark.parametrize("local_part", ["bounce+7-Tok", "unsubscribe+7-Tok"])
def test_the_pipe_gets_the_recipient_and_the_message_as_received(exim_factory: EximFactory, local_part: str) -> None:
    exim = exim_factory(stub_intake=True)
    address = f"{local_part}@{BOUNCE_DOMAIN}"
    code, _ = submit(exim, "mailer-daemon@example.org", [address], letter("as received", None, to=address),
                     source_address=OUTSIDE_HOST)
    assert code == 250
    content = wait_for_spool(exim.bounce_spool, b"Subject: as received", exim)
    lines = content.split(b"\n")
    assert lines[0] == f"X-Stub-Recipient: {address}".encode()  # env RECIPIENT: prefix included, case kept
    assert not lines[1].startswith(b"From ")  # no mbox "From " line in front
    assert b"Return-path: <mailer-daemon@example.org>" in lines
    assert f"Envelope-to: {address}".encode() in lines
    assert content.endswith(b"this is as received.\n")


@pytest.mark.parametrize("source", ["127.0.0.1", OUTSIDE_HOST])
def test_other_local_parts_at_a_bounce_domain_are_refused_at_rcpt(exim: Exim, source: str) -> None:
    with smtplib.SMTP("127.0.0.1", exim.settings.smtp_port, source_address=(source, 0)) as smtp:
        smtp.ehlo()
        smtp.mail("")
        code, reply = smtp.rcpt(f"nobody@{BOUNCE_DOMAIN}")
    assert code == 550
    assert reply.startswith(b"5.1.1 <nobody@bounces.test>: no such mailbox")
    assert b"bounce+<token> and unsubscribe+<token>" in reply


def test_relaying_from_outside_is_refused(exim: Exim) -> None:
    with smtplib.SMTP("127.0.0.1", exim.settings.smtp_port, source_address=(OUTSIDE_HOST, 0)) as smtp:
        smtp.ehlo()
        smtp.mail("spammer@example.net")
        code, reply = smtp.rcpt("victim@example.org")
    assert code == 550
    assert b"Relaying to <victim@example.org> is not permitted" in reply


# -- the Exim runner -----------------------------------------------------------------------


def test_stop_leaves_no_process_and_unregisters_the_config(exim_factory: EximFactory, capture: CaptureServer) -> None:
    exim = exim_factory(queue_only=True)
    assert str(exim.config_path) in TRUSTED_CONFIGS.read_text().splitlines()
    config_stat = exim.config_path.stat()
    assert config_stat.st_uid == 0 and config_stat.st_mode & 0o022 == 0
    for n in range(5):
        submit(exim, f"bounce+{n}-t@{BOUNCE_DOMAIN}", [f"r{n}@example.org"], letter(f"q{n}"))
    assert exim.queue_count() == 5
    exim.stop()
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if str(exim.config_path) in (p.info["cmdline"] or [])]
    assert leftovers == []
    assert str(exim.config_path) not in TRUSTED_CONFIGS.read_text().splitlines()
    assert not exim.pid_file.exists()
    exim.stop()  # stopping twice is harmless


def test_daemon_listens_on_every_interface_by_default(exim_tmp: Path) -> None:
    # The role's default: no local_interfaces. Listing both 0.0.0.0 and :: instead makes
    # the second bind fail ("Address already in use: daemon abandoned").
    port = free_port()
    settings = EximSettings(rundir=exim_tmp / "all", smtp_port=port, source_ips=[], smarthost=None,
                            bounce_domains=[], bounce_spool=None, bounce_pipe_command="/bin/true",
                            listen="0.0.0.0", overrides={"exim_listen_addresses": []})
    with Exim(settings) as exim:
        assert f"listening for SMTP on port {port} (IPv6 and IPv4)" in exim.log_lines()[0]
        for host in ("127.0.0.1", "::1"):
            with smtplib.SMTP(host, port) as smtp:
                assert smtp.noop()[0] == 250
    assert not exim.paniclog.exists()


def test_start_explains_a_directory_the_exim_user_cannot_reach(tmp_path: Path) -> None:
    # pytest's tmp_path sits under a 0700 directory of root's.
    exim = Exim(_settings(tmp_path, smtp_port=free_port(), smarthost=None))
    with pytest.raises(EximError, match="not searchable by Debian-exim"):
        exim.start()
    assert str(exim.config_path) not in TRUSTED_CONFIGS.read_text().splitlines()


def test_start_fails_fast_when_the_port_is_taken(exim: Exim, exim_tmp: Path) -> None:
    clash = Exim(EximSettings(rundir=exim_tmp / "clash", smtp_port=exim.settings.smtp_port, source_ips=[],
                              smarthost=None, bounce_domains=[], bounce_spool=None,
                              bounce_pipe_command="/bin/true"))
    try:
        with pytest.raises(EximError, match="Address already in use"):
            clash.start()
    finally:
        clash.stop()
    assert exim.queue_count() == 0  # the running one is unharmed


# -- retries: the agent's for remote deliveries, Exim's own for the bounce pipe ----------------


def _retry_rule(config: Path, address: str) -> str:
    result = subprocess.run([EXIM_BIN, "-C", str(config), "-brt", address], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return " ".join(result.stdout.split())


def test_the_role_leaves_remote_retries_to_the_agent_and_keeps_a_short_rule_for_the_bounce_pipe(exim_tmp: Path) -> None:
    """Exim never retries a remote delivery before giving up (the agent forces each retry through its
    limits, docs/shaping.md); mail for the bounce pipe, configured or pushed bounce domains, still
    retries within minutes, or a bounce intake that was down would wait two days."""
    yaml = pytest.importorskip("yaml", reason="PyYAML comes with requirements-ansible.txt")
    rules = yaml.safe_load(DEFAULTS_FILE.read_text(encoding="utf-8"))["exim_retry_rules"]
    settings = _settings(exim_tmp, overrides={"exim_retry_rules": rules})
    settings.helo_map_path.parent.mkdir(parents=True, exist_ok=True)
    (settings.helo_map_path.parent / "bounce-domains").write_text("pushed.example\n", encoding="utf-8")
    config = exim_tmp / "exim4.conf"
    config.write_text(render_config(settings), encoding="utf-8")
    assert _retry_rule(config, "ann@gmail.example").endswith("* * F,2d,2d;")
    for address in (f"bounce+12-tok@{BOUNCE_DOMAIN}", "unsubscribe+12-tok@pushed.example"):
        assert "F,10m,2m" in _retry_rule(config, address), address
    # the local stack runs the role's rules
    from devserver.exim import AGENT_RETRY_RULES

    assert AGENT_RETRY_RULES == rules
