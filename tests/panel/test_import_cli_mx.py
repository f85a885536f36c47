"""`flask --app panel lists import` with its flags (--report, --all-or-nothing, --check-mx), and
the MX check against a real DNS server: a small authoritative one (dnspython) on 127.0.0.1."""

from __future__ import annotations

import csv
import io
import json
import socket
import threading
import zipfile
from collections import Counter
from pathlib import Path
from typing import Iterator

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from sqlalchemy import select

from panel.models import MailingList, Recipient

RAR = Path(__file__).resolve().parent.parent / "fixtures" / "rar"

# name -> {type: [records]}; a name here without the asked type answers NOERROR with no data.
ZONE = {
    "mail.test.": {"MX": ["10 mx1.mail.test."]},
    "aonly.test.": {"A": ["192.0.2.7"]},
    "v6only.test.": {"AAAA": ["2001:db8::7"]},
    "nullmx.test.": {"MX": ["0 ."]},
    "txtonly.test.": {"TXT": ['"v=spf1 -all"']},
}


class StubDns:
    """An authoritative DNS server for ZONE on a UDP port of 127.0.0.1; counts the questions."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.questions: Counter[tuple[str, str]] = Counter()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                wire, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            query = dns.message.from_wire(wire)
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            question = query.question[0]
            name, kind = question.name.to_text().lower(), dns.rdatatype.to_text(question.rdtype)
            self.questions[(name, kind)] += 1
            if name not in ZONE:
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif kind in ZONE[name]:
                response.answer.append(dns.rrset.from_text(name, 300, "IN", kind, *ZONE[name][kind]))
            self.sock.sendto(response.to_wire(), peer)

    def __enter__(self) -> StubDns:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def dns_server() -> Iterator[StubDns]:
    with StubDns() as server:
        yield server


@pytest.fixture
def app_config(dns_server: StubDns, tmp_path: Path) -> dict:
    return {"IMPORT_DNS_NAMESERVER": "127.0.0.1", "IMPORT_DNS_PORT": dns_server.port, "IMPORT_DNS_TIMEOUT": 2,
            "IMPORTS_DIR": str(tmp_path / "imports")}


def invoke(runner, *args: str):
    return runner.invoke(args=["lists", "import", *args, "--user", "alice@example.com"])


def stored(seed, list_id=None):
    return seed.query(lambda s: s.scalars(select(Recipient.email).order_by(Recipient.id)).all())


def test_check_mx_rejects_domains_without_mail_and_asks_once_per_domain(runner, seed, alice, tmp_path, dns_server):
    path = tmp_path / "people.csv"
    path.write_text(
        "email\n"
        "ann@mail.test\nbob@mail.test\ncarl@MAIL.test\n"  # one MX lookup for all three
        "dora@aonly.test\neve@v6only.test\n"  # no MX, but an address: mail goes there
        "fay@nullmx.test\ngus@nullmx.test\n"
        "hal@txtonly.test\n"
        "ivy@nowhere.test\njon@nowhere.test\n"
    )
    report_path = tmp_path / "rejected.csv"
    result = invoke(runner, "People", str(path), "--check-mx", "--report", str(report_path))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["added"], report["rejected_count"]) == (5, 5)
    assert stored(seed) == ["ann@mail.test", "bob@mail.test", "carl@mail.test", "dora@aonly.test", "eve@v6only.test"]
    reasons = {item["email"]: item["reason"] for item in report["rejected"]}
    assert reasons == {
        "fay@nullmx.test": "the domain nullmx.test says it takes no mail (null MX)",
        "gus@nullmx.test": "the domain nullmx.test says it takes no mail (null MX)",
        "hal@txtonly.test": "the domain txtonly.test has no MX or A record: no mail can reach it",
        "ivy@nowhere.test": "the domain nowhere.test does not exist",
        "jon@nowhere.test": "the domain nowhere.test does not exist",
    }
    mx_questions = {name: count for (name, kind), count in dns_server.questions.items() if kind == "MX"}
    assert mx_questions == {"mail.test.": 1, "aonly.test.": 1, "v6only.test.": 1, "nullmx.test.": 1,
                            "txtonly.test.": 1, "nowhere.test.": 1}
    rows = list(csv.reader(io.StringIO(report_path.read_text())))
    assert rows[0] == ["file", "line", "email", "reason"]
    assert rows[1] == ["people.csv", "7", "fay@nullmx.test", "the domain nullmx.test says it takes no mail (null MX)"]
    assert len(rows) == 6


def test_without_check_mx_no_question_is_asked(runner, seed, alice, tmp_path, dns_server):
    path = tmp_path / "people.txt"
    path.write_text("ivy@nowhere.test\n")
    result = invoke(runner, "People", str(path))
    assert result.exit_code == 0, result.output
    assert stored(seed) == ["ivy@nowhere.test"] and not dns_server.questions


def test_unanswered_dns_rejects_with_a_reason_to_retry(runner, seed, alice, tmp_path, app):
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))  # takes the questions, never answers
    try:
        app.config.update(IMPORT_DNS_PORT=silent.getsockname()[1], IMPORT_DNS_TIMEOUT=0.3)
        path = tmp_path / "people.txt"
        path.write_text("ann@mail.test\n")
        result = invoke(runner, "People", str(path), "--check-mx")
    finally:
        silent.close()
    assert result.exit_code == 0, result.output
    assert "could not be checked (its DNS did not answer: timed out)" in json.loads(result.stdout)["rejected"][0]["reason"]
    assert stored(seed) == []


def test_check_mx_from_the_panel_form(as_alice, seed, alice, dns_server):
    list_id = seed.list(alice, "People")
    response = as_alice.post(f"/lists/{list_id}/import",
                             {"file": (io.BytesIO(b"ann@mail.test\nivy@nowhere.test\n"), "a.txt"), "check_mx": "y"},
                             content_type="multipart/form-data")
    page = response.get_data(as_text=True)
    assert response.status_code == 200, page
    assert 'class="added">1<' in page and "the domain nowhere.test does not exist" in page
    assert stored(seed) == ["ann@mail.test"]


def test_cli_imports_archives_and_stdin(runner, seed, alice, tmp_path):
    result = invoke(runner, "People", str(RAR / "two-files.rar"))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["added"], report["duplicates"], report["rejected_count"]) == (4, 1, 1)
    assert report["rejected"][0]["file"] == "lists/people.csv"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.txt", "zed@example.org\n")
    result = runner.invoke(args=["lists", "import", "People", "-", "--user", "alice@example.com"],
                           input=buffer.getvalue())
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["added"] == 1
    assert seed.query(lambda s: s.scalars(select(MailingList.recipient_count)).one()) == 5


def test_cli_all_or_nothing_still_writes_the_report(runner, seed, alice, tmp_path):
    path = tmp_path / "people.csv"
    path.write_text("email\nann@example.org\n=cmd|' /C calc'!A0\n")
    report_path = tmp_path / "rejected.csv"
    result = invoke(runner, "People", str(path), "--all-or-nothing", "--report", str(report_path))
    assert result.exit_code == 1
    assert "nothing was imported: 1 row was rejected and you chose to import nothing" in result.stderr
    assert "Traceback" not in result.output
    rows = list(csv.reader(io.StringIO(report_path.read_text())))
    assert rows[1][:3] == ["people.csv", "3", "'=cmd|' /C calc'!A0"]
    assert stored(seed) == []


@pytest.mark.parametrize("name,message", [
    ("bomb.rar", "that is how archive bombs look"),
    ("encrypted.rar", "is protected by a password"),
    ("traversal.rar", "points outside the archive"),
    ("corrupt.rar", "is damaged"),
])
def test_cli_bad_archives_say_why(runner, seed, alice, name, message):
    result = invoke(runner, "People", str(RAR / name))
    assert result.exit_code == 1
    assert f"nothing was imported: the RAR archive {name}" in result.stderr and message in result.stderr
    assert "Traceback" not in result.output
    assert stored(seed) == []
