"""Import of files through the service: kinds, encodings, delimiters, archives, and every kind
of bad input, each with what the user is told and what the database holds afterwards."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import rarfile
from sqlalchemy import select

from panel.extensions import db
from panel.models import MailingList, Recipient
from panel.services.csv_import import ImportFailed, ImportOptions, import_csv, import_file
from panel.services.imports.sources import ImportLimits
from panel.services.imports.text import detect_encoding

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
RAR = FIXTURES / "rar"


def run(app, list_id: int, path: Path, name: str | None = None, **options):
    """Import like the job does: commit on success, roll back on ImportFailed (and re-raise)."""
    with app.app_context():
        mailing_list = db.session.get(MailingList, list_id)
        try:
            report = import_file(mailing_list, path, name or path.name, ImportOptions(**options))
        except ImportFailed:
            db.session.rollback()
            raise
        db.session.commit()
        return report


def stored(seed, list_id: int):
    return seed.query(lambda s: [
        (r.email, r.fields) for r in s.scalars(select(Recipient).where(Recipient.list_id == list_id).order_by(Recipient.id))
    ])


def nothing_imported(seed, list_id: int) -> None:
    assert stored(seed, list_id) == []
    mailing_list = seed.get(MailingList, list_id)
    assert (mailing_list.recipient_count, mailing_list.fields) == (0, [])


def fails(app, seed, list_id, path, *parts, **options) -> str:
    with pytest.raises(ImportFailed) as info:
        run(app, list_id, path, **options)
    message = str(info.value)
    for part in parts:
        assert part in message
    nothing_imported(seed, list_id)
    return message


def make_zip(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path


@pytest.fixture
def people(seed, alice):
    return seed.list(alice, "People")


# -- kinds and encodings ---------------------------------------------------------------------

@pytest.mark.parametrize("encoding,text", [
    ("utf-8", "email,name\nann@example.org,Åsa Ørsted\n"),
    ("utf-8-sig", "email,name\nann@example.org,Åsa Ørsted\n"),
    ("utf-16", "email,name\nann@example.org,Åsa Ørsted\n"),  # with a BOM, as Excel writes "Unicode text"
    ("utf-16-le", "email,name\nann@example.org,Åsa Ørsted\n"),  # without one
    ("utf-16-be", "email,name\nann@example.org,Åsa Ørsted\n"),
    ("cp1251", "email;имя;город\nann@example.org;Иван Петров;Москва\n"),
    ("latin-1", "email,name,city\nann@example.org,Jörg Müller,München\n"),
])
def test_encodings_are_detected(app, seed, people, tmp_path, encoding, text):
    path = tmp_path / "list.csv"
    path.write_bytes(text.encode(encoding))
    report = run(app, people, path)
    assert (report.added, report.rejected) == (1, [])
    header, row = text.splitlines()
    delimiter = ";" if ";" in header else ","
    names = header.split(delimiter)[1:]
    expected_fields = {("_" if n[0].isdigit() else "") + n: v for n, v in zip(names, row.split(delimiter)[1:])}
    assert stored(seed, people) == [("ann@example.org", expected_fields)]


def test_detect_encoding_tells_cp1251_from_latin1():
    assert detect_encoding("email,name\na@b.ru,Иван\n".encode("cp1251")) == "cp1251"
    assert detect_encoding("email,name\na@b.de,Jörg\n".encode("latin-1")) == "latin-1"
    assert detect_encoding("email,name\na@b.fr,“François” – €5\n".encode("cp1252")) == "cp1252"
    assert detect_encoding("email\nä@b.de\n".encode()) == "utf-8"


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_delimiters_are_detected(app, seed, people, tmp_path, delimiter):
    path = tmp_path / "list.csv"
    rows = [["name", "email", "city"], ["Ann", "ann@example.org", "Oslo, Norway"], ["Bob", "bob@example.org", "Rome"]]
    buffer = io.StringIO()
    import csv

    csv.writer(buffer, delimiter=delimiter).writerows(rows)
    path.write_text(buffer.getvalue())
    report = run(app, people, path)
    assert report.added == 2
    assert stored(seed, people)[0] == ("ann@example.org", {"name": "Ann", "city": "Oslo, Norway"})


def test_plain_text_one_address_a_line(app, seed, people, tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes(b"Ann@Example.org\r\n\r\nbob@example.org\nbroken@\nann@example.org\n  carl@example.org  ")
    report = run(app, people, path)
    assert (report.added, report.duplicates) == (3, 1)
    assert report.rejected == [{"row": 4, "email": "broken@", "reason": report.rejected[0]["reason"]}]
    assert [email for email, _ in stored(seed, people)] == ["ann@example.org", "bob@example.org", "carl@example.org"]


def test_a_file_with_only_an_email_header_is_csv(app, seed, people, tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("Email\nann@example.org\n")
    assert run(app, people, path).added == 1


def test_utf8_decided_from_the_start_and_broken_later_names_the_line(app, seed, people, tmp_path):
    path = tmp_path / "list.csv"
    rows = "".join(f"user{i}@example.org,User {i}\n" for i in range(3000))  # > the 64 KB sample
    path.write_bytes(b"email,name\n" + rows.encode() + b"late@example.org,B\xf6b\n")
    fails(app, seed, people, path, "line 3002 is not valid UTF-8", "save the file as CSV UTF-8")


# -- archives --------------------------------------------------------------------------------

def test_zip_with_several_files(app, seed, people, tmp_path):
    path = make_zip(tmp_path / "lists.zip", {
        "a/people.csv": b"email,name\nann@example.org,Ann\nbad-one,Bob\n",
        "more.txt": b"carl@example.org\nANN@example.org\n",
        "__MACOSX/a/._people.csv": b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ",
        "empty-folder/": b"",
    })
    report = run(app, people, path)
    assert (report.added, report.duplicates) == (2, 1)
    assert report.rejected == [{"row": 3, "email": "bad-one", "reason": "an address needs a part before and after an @-sign",
                                "file": "a/people.csv"}]
    assert stored(seed, people) == [("ann@example.org", {"name": "Ann"}), ("carl@example.org", {})]


def test_rar_fixture_is_read_by_rarfile_and_by_unar(app, seed, people, tmp_path):
    # The fixtures are real RAR 5 archives: unar itself unpacks them…
    out = tmp_path / "unpacked"
    subprocess.run(["unar", "-q", "-o", str(out), str(RAR / "two-files.rar")], check=True)
    assert (out / "lists" / "more.txt").read_bytes().startswith(b"dora@example.com\n")
    report = run(app, people, RAR / "two-files.rar")
    assert (report.added, report.duplicates, len(report.rejected)) == (4, 1, 1)
    assert report.rejected[0]["file"] == "lists/people.csv" and report.rejected[0]["row"] == 3
    assert [email for email, _ in stored(seed, people)] == [
        "ann@example.org", "carl@example.org", "dora@example.com", "eve@example.net"]


def test_rar_members_through_unar(app, seed, people, monkeypatch):
    """Compressed RAR members (what WinRAR writes) are piped through unar: force that path."""
    monkeypatch.setattr(rarfile, "FORCE_TOOL", True)
    report = run(app, people, RAR / "list.rar")
    assert (report.added, len(report.rejected)) == (2, 1)


def test_rar_with_a_cp1251_member(app, seed, people):
    run(app, people, RAR / "cp1251.rar")
    assert stored(seed, people) == [("ivan@example.ru", {"имя": "Иван"})]


def test_the_kind_comes_from_the_content_not_the_name(app, seed, people, tmp_path):
    disguised = tmp_path / "people.csv"
    disguised.write_bytes((RAR / "list.rar").read_bytes())
    assert run(app, people, disguised).added == 2
    text = tmp_path / "people.zip"
    text.write_text("email\nzed@example.org\n")
    assert run(app, people, text).added == 1


# -- bad input: whole-file problems import nothing ---------------------------------------------

def test_zip_bomb_by_ratio(app, seed, people, tmp_path):
    path = make_zip(tmp_path / "bomb.zip", {"people.csv": b"email\n" + b"\0" * (50 << 20)})
    fails(app, seed, people, path, "bomb.zip", "'people.csv'", "more than 100 times its packed size",
          "archive bombs")


def test_zip_over_the_total_size(app, seed, people, tmp_path):
    body = b"email\n" + b"".join(b"user%d@example.org\n" % i for i in range(20000))
    path = make_zip(tmp_path / "big.zip", {"a.csv": body, "b.csv": body}, zipfile.ZIP_STORED)
    fails(app, seed, people, path, "would unpack to", "more than the limit of 500,000", "split the list",
          limits=ImportLimits(max_uncompressed=500_000))


def test_zip_whose_headers_lie_about_the_size_stops_while_reading(app, seed, people, tmp_path):
    body = b"email\n" + b"".join(b"user%d@example.org\n" % i for i in range(50000))
    path = make_zip(tmp_path / "liar.zip", {"a.csv": body})
    data = bytearray(path.read_bytes())
    # Declare 1,000 bytes unpacked in the central directory: zipfile stops there, the CRC fails.
    central = data.rindex(b"PK\x01\x02")
    data[central + 24:central + 28] = (1000).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    fails(app, seed, people, path, "liar.zip", "is damaged")


def test_rar_bomb(app, seed, people):
    fails(app, seed, people, RAR / "bomb.rar", "RAR archive bomb.rar", "10,737,418,240 bytes from 1,024",
          "archive bombs")


@pytest.mark.parametrize("maker,parts", [
    (lambda p: make_zip(p / "t.zip", {"../../etc/cron.d/people.csv": b"email\na@example.org\n"}),
     ["'../../etc/cron.d/people.csv'", "points outside the archive", "refused as a whole"]),
    (lambda p: make_zip(p / "t.zip", {"/etc/people.csv": b"email\na@example.org\n"}), ["points outside"]),
    (lambda p: make_zip(p / "t.zip", {"C:\\Windows\\people.csv": b"email\na@example.org\n"}), ["points outside"]),
    (lambda p: RAR / "traversal.rar", ["RAR archive traversal.rar", "points outside the archive"]),
])
def test_path_traversal_names_refuse_the_archive(app, seed, people, tmp_path, maker, parts):
    fails(app, seed, people, maker(tmp_path), *parts)


def test_nested_archives(app, seed, people, tmp_path):
    inner = make_zip(tmp_path / "inner.zip", {"people.csv": b"email\na@example.org\n"}).read_bytes()
    fails(app, seed, people, make_zip(tmp_path / "outer.zip", {"inner.zip": inner}),
          "holds another archive ('inner.zip')", "archives inside archives are not unpacked")
    fails(app, seed, people, make_zip(tmp_path / "sly.zip", {"people.csv": inner}),
          "'people.csv' in sly.zip is a ZIP archive inside an archive")
    fails(app, seed, people, RAR / "nested.rar", "holds another archive ('inner.zip')")
    fails(app, seed, people, RAR / "nested-unnamed.rar", "'people.csv' in nested-unnamed.rar is a ZIP archive")


def test_encrypted_archives(app, seed, people, tmp_path):
    path = make_zip(tmp_path / "locked.zip", {"people.csv": b"email\na@example.org\n"})
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # set the "encrypted" bit
        at = data.index(signature)
        data[at + offset] |= 0x01
    path.write_bytes(bytes(data))
    fails(app, seed, people, path, "is protected by a password ('people.csv' is encrypted)",
          "make the archive again without a password")
    fails(app, seed, people, RAR / "encrypted.rar", "RAR archive encrypted.rar is protected by a password")
    fails(app, seed, people, RAR / "encrypted-headers.rar", "is protected by a password")


def test_corrupt_archives(app, seed, people, tmp_path):
    good = make_zip(tmp_path / "good.zip", {"people.csv": b"email\n" + b"a@example.org\n" * 100})
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[:-30])
    fails(app, seed, people, truncated, "ZIP archive truncated.zip is damaged and cannot be read")
    flipped = bytearray(good.read_bytes())
    flipped[40] ^= 0xFF  # inside the compressed data
    (tmp_path / "flipped.zip").write_bytes(bytes(flipped))
    fails(app, seed, people, tmp_path / "flipped.zip", "flipped.zip is damaged")
    fails(app, seed, people, RAR / "corrupt.rar", "RAR archive corrupt.rar is damaged", "CRC check failed")
    fails(app, seed, people, RAR / "truncated.rar", "truncated.rar is damaged")


def test_too_many_members(app, seed, people, tmp_path):
    path = make_zip(tmp_path / "many.zip", {f"{i}.txt": b"a%d@example.org\n" % i for i in range(5)})
    fails(app, seed, people, path, "holds 5 files, more than the 3 one import takes", limits=ImportLimits(max_members=3))


def test_spreadsheet_is_not_an_archive_of_lists(app, seed, people, tmp_path):
    path = make_zip(tmp_path / "people.xlsx", {"[Content_Types].xml": b"<Types/>", "xl/workbook.xml": b"<w/>"})
    fails(app, seed, people, path, "people.xlsx is a spreadsheet", "CSV UTF-8")


@pytest.mark.parametrize("content,parts", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8, ["is not a text file (it looks like a PNG image)"]),
    (bytes(range(256)) * 64, ["is not a text file (it looks like binary data)"]),
    (b"%PDF-1.7\n" + b"x" * 100, ["a PDF document"]),
    (b"email,name\nann@example.org,Ann\nbob@exa\x00mple.org,Bob\n", ["line 3 holds a NUL byte", "remove the NUL bytes"]),
    (b"", ["the file is empty"]),
    (b"  \r\n\n\t\n", ["the file is empty"]),
    (b"name,city\nAnn,Oslo\n", ["one of them email", "found: 'name', 'city'"]),
    (b"email;Mail;name\na@example.org;a@example.org;Ann\n", ["more than one email column ('email', 'Mail')"]),
])
def test_bad_files(app, seed, people, tmp_path, content, parts):
    path = tmp_path / "people.csv"
    path.write_bytes(content)
    fails(app, seed, people, path, *parts)


def test_binary_member_of_an_archive(app, seed, people):
    fails(app, seed, people, RAR / "binary.rar", "'people.csv' in binary.rar is not a text file (it looks like a PNG image)")


def test_a_10_mb_line_stops_with_its_number_and_flat_memory(app, seed, people, tmp_path):
    import tracemalloc

    path = tmp_path / "long.csv"
    with open(path, "wb") as out:
        out.write(b"email,name\nann@example.org,Ann\nbob@example.org,")
        out.write(b"x" * (10 << 20))
        out.write(b"\ncarl@example.org,Carl\n")
    tracemalloc.start()
    try:
        fails(app, seed, people, path, "line 3 is longer than 1,048,576 bytes")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # the 10 MB line was never held whole: at most the limit and a chunk or two


def test_a_long_quoted_record_over_many_lines_is_bounded_too(app, seed, people, tmp_path):
    path = tmp_path / "long.csv"
    path.write_bytes(b'email,note\nann@example.org,"' + b"line\n" * 300_000 + b'"\n')
    fails(app, seed, people, path, "the row starting on line 2 has a value longer than 131,072 characters",
          "a quote mark there probably has no partner")
    path.write_bytes(b'email,note\nann@example.org,"' + b'x",y,"\n' * 300_000 + b'"\n')  # many short values
    fails(app, seed, people, path, "the row starting on line 2 is longer than 1,048,576 bytes", "closing quote")


def test_limits_in_archive_members_name_the_member(app, seed, people, tmp_path):
    path = make_zip(tmp_path / "lists.zip", {"ok.csv": b"email\na@example.org\n",
                                              "bad.csv": b"email\nb@example.org\nc@exa\x00mple.org\n"})
    fails(app, seed, people, path, "line 3 of 'bad.csv' holds a NUL byte")
    path = make_zip(tmp_path / "lists2.zip", {"ok.csv": b"email\na@example.org\n", "nomail.csv": b"name\nAnn\n"})
    fails(app, seed, people, path, "in 'nomail.csv', the first row must name the columns")


# -- rejected rows: kept or all-or-nothing ---------------------------------------------------

def test_rejected_rows_keep_the_good_ones_by_default(app, seed, people, tmp_path):
    path = tmp_path / "people.csv"
    path.write_text("email\nann@example.org\nbroken\n")
    seen = []
    report = run(app, people, path, on_reject=seen.append, keep_rejected=0)
    assert report.added == 1 and report.rejected == [] and report.rejected_count == 1
    assert seen == [{"row": 3, "email": "broken", "reason": "an address needs a part before and after an @-sign"}]


def test_all_or_nothing_imports_nothing_when_a_row_is_rejected(app, seed, people, tmp_path):
    path = tmp_path / "people.csv"
    path.write_text("email\nann@example.org\nbroken\nalso broken\n")
    fails(app, seed, people, path, "2 rows were rejected and you chose to import nothing", all_or_nothing=True)
    path.write_text("email\nann@example.org\n")
    assert run(app, people, path, all_or_nothing=True).added == 1


def test_the_api_stream_gets_the_same_checks(app, seed, people):
    with app.app_context():
        with pytest.raises(ImportFailed, match="line 2 holds a NUL byte"):
            import_csv(db.session.get(MailingList, people), io.BytesIO(b"email\na@exa\x00mple.org\n"))
        db.session.rollback()
        report = import_csv(db.session.get(MailingList, people), io.BytesIO(b"zed@example.org\nyan@example.org\n"))
        db.session.commit()
    assert report.added == 2


def test_large_file_streams_with_flat_memory(app, seed, people, tmp_path):
    """200,000 rows (~8 MB, plain and zipped) in a child process: its peak RSS stays flat (the
benchmark, bench/import.py, does a million)."""
    path = tmp_path / "big.csv"
    with open(path, "w") as out:
        out.write("email,name,city\n")
        for i in range(200_000):
            out.write(f"user{i}@example.org,User {i},City {i % 100}\n")
    zipped = make_zip(tmp_path / "big.zip", {"big.csv": path.read_bytes()})
    database = app.config["SQLALCHEMY_DATABASE_URI"]
    script = f"""
import sys
from pathlib import Path
from panel import create_app
from panel.extensions import db
from panel.models import MailingList
from panel.services.csv_import import import_file
def peak_kb():  # VmHWM: this process's own peak (ru_maxrss would count pytest, which it was forked from)
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1])
app = create_app({{"SQLALCHEMY_DATABASE_URI": {database!r}, "SECRET_KEY": "x"}})
with app.app_context():
    db.session.get(MailingList, {people})  # the app and its database connection are up: measure from here
    print(0, peak_kb())
    for name in ({str(path)!r}, {str(zipped)!r}):
        report = import_file(db.session.get(MailingList, {people}), Path(name), name)
        db.session.rollback()
        print(report.added, peak_kb())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    (_, rss_start), (added_csv, rss_csv), (added_zip, rss_zip) = [
        map(int, line.split()) for line in result.stdout.split("\n")[:3]]
    assert added_csv == added_zip == 200_000
    assert rss_zip - rss_start < 64 * 1024, result.stdout  # KB: flat (the rows alone are ~40 MB as Python objects)
