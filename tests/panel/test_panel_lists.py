"""List pages and CSV import, through the browser and through the service."""

from __future__ import annotations

import io

import pytest
from sqlalchemy import select

from panel.models import MailingList, Recipient
from panel.services import csv_import
from panel.services.csv_import import ImportFailed, import_csv


@pytest.fixture
def app_config(tmp_path):
    return {"IMPORTS_DIR": str(tmp_path / "imports")}


def recipients(seed, list_id):
    return seed.query(lambda s: [
        (r.email, r.fields) for r in s.scalars(select(Recipient).where(Recipient.list_id == list_id).order_by(Recipient.id))
    ])


def upload(browser, list_id, content: bytes, filename="people.csv"):
    return browser.post(f"/lists/{list_id}/import", {"file": (io.BytesIO(content), filename)},
                        content_type="multipart/form-data")


def test_create_and_view_a_list(as_alice, seed, alice):
    response = as_alice.post("/lists/", {"name": "  Newsletter  "})
    assert response.status_code == 302
    list_id = seed.query(lambda s: s.scalar(select(MailingList.id)))
    assert response.headers["Location"].endswith(f"/lists/{list_id}/import")
    page = as_alice.get("/lists/").get_data(as_text=True)
    assert "Newsletter" in page
    page = as_alice.get(f"/lists/{list_id}").get_data(as_text=True)
    assert "This list is empty" in page


def test_list_names_are_unique_per_user(as_alice, seed, alice, bob):
    seed.list(bob, "Newsletter")
    assert as_alice.post("/lists/", {"name": "Newsletter"}).status_code == 302
    response = as_alice.post("/lists/", {"name": "Newsletter"})
    assert response.status_code == 400
    assert "already have a list named" in response.get_data(as_text=True)


def test_empty_list_name_is_refused(as_alice, seed, alice):
    response = as_alice.post("/lists/", {"name": "   "})
    assert response.status_code == 400
    assert seed.query(lambda s: s.query(MailingList).count()) == 0


def test_csv_upload_imports_good_rows_and_reports_bad_ones(as_alice, seed, alice):
    list_id = seed.list(alice, "Customers")
    content = (
        "\ufeffE-Mail,First Name,City\n"          # 1: header, with a BOM
        "ann@example.org,Ann,Oslo\n"              # 2
        "not-an-address,Bob,Rome\n"               # 3
        "Carl@Example.ORG,Carl,\"Multi\nline\"\n"  # 4-5: one record over two lines
        ",Nobody,Nowhere\n"                       # 6
        "\n"                                      # 7: blank, skipped
        "ann@EXAMPLE.org,Ann again,Oslo\n"        # 8: duplicate in the file
        "dora@example.com,Dora,Lima,extra\n"      # 9: one value too many
        "eve@exa mple.com,Eve,Quito\n"            # 10
    ).encode()
    response = upload(as_alice, list_id, content)
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert 'class="added">2<' in page
    assert 'class="duplicates">1<' in page
    assert 'class="rejected">4<' in page
    for row, email in ((3, "not-an-address"), (6, ""), (9, "dora@example.com"), (10, "eve@exa mple.com")):
        assert f'<td class="num">{row}</td><td>{email}</td>' in page
    assert "no e-mail address" in page and "header names 3 columns" in page
    assert recipients(seed, list_id) == [
        ("ann@example.org", {"first_name": "Ann", "city": "Oslo"}),
        ("carl@example.org", {"first_name": "Carl", "city": "Multi\nline"}),
    ]
    mailing_list = seed.get(MailingList, list_id)
    assert mailing_list.fields == ["first_name", "city"]
    assert mailing_list.recipient_count == 2
    page = as_alice.get(f"/lists/{list_id}").get_data(as_text=True)
    assert "ann@example.org" in page and "carl@example.org" in page and "first_name" in page


def test_reimport_skips_existing_and_adds_new_fields(as_alice, seed, alice):
    list_id = seed.list(alice, "Customers", [{"email": "ann@example.org", "name": "Ann"}])
    response = upload(as_alice, list_id, b"email;name;plan\nann@example.org;Ann;gold\nbob@example.org;Bob;free\n")
    page = response.get_data(as_text=True)
    assert 'class="added">1<' in page and 'class="duplicates">1<' in page
    mailing_list = seed.get(MailingList, list_id)
    assert mailing_list.recipient_count == 2
    assert mailing_list.fields == ["name", "plan"]
    assert recipients(seed, list_id)[1] == ("bob@example.org", {"name": "Bob", "plan": "free"})


@pytest.mark.parametrize("content,message", [
    (b"name,city\nAnn,Oslo\n", "one of them email"),
    (b"email,mail,name\nann@example.org,ann@example.org,Ann\n", "more than one email column"),
    (b"Email,name,Name\nann@example.org,Ann,Ann\n", "both name the field"),
    (b"email,unsubscribe_url\nann@example.org,x\n", "reserved"),
    (b"", "empty"),
    # UTF-8 for the first 64 KB (so detected as such), then a latin-1 byte on line 3002.
    (b"email,name\n" + "".join(f"user{i}@example.org,User {i}\n" for i in range(3000)).encode()
     + b"bob@example.org,B\xf6b\n", "line 3002 is not valid UTF-8"),
    (b"email,name\nann@example.org,Ann\nbob@exa\x00mple.org,Bob\n", "line 3 holds a NUL byte"),
])
def test_bad_files_import_nothing(as_alice, seed, alice, content, message):
    list_id = seed.list(alice, "Customers")
    response = upload(as_alice, list_id, content)
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "Nothing was imported" in page
    assert message in page
    assert recipients(seed, list_id) == []
    assert seed.get(MailingList, list_id).recipient_count == 0
    assert seed.get(MailingList, list_id).fields == []


def test_upload_without_a_file(as_alice, seed, alice):
    list_id = seed.list(alice, "Customers")
    response = as_alice.post(f"/lists/{list_id}/import", {}, content_type="multipart/form-data")
    assert response.status_code == 400
    assert "Choose a CSV file" in response.get_data(as_text=True)


def test_recipient_pages(as_alice, seed, alice):
    list_id = seed.list(alice, "Big", [{"email": f"user{i:03}@example.org"} for i in range(120)])
    page = as_alice.get(f"/lists/{list_id}").get_data(as_text=True)
    assert "user000@example.org" in page and "user049@example.org" in page and "user050@example.org" not in page
    assert "page=2" in page
    page = as_alice.get(f"/lists/{list_id}?page=3").get_data(as_text=True)
    assert "user100@example.org" in page and "user119@example.org" in page and "page=4" not in page
    assert "Page 3" in page


def test_html_in_fields_is_escaped_on_the_page(as_alice, seed, alice):
    list_id = seed.list(alice, "Tricky", [{"email": "x@example.org", "name": "<script>alert(1)</script>"}])
    page = as_alice.get(f"/lists/{list_id}").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;" in page


# -- the service, directly ---------------------------------------------------------------

def test_large_import_goes_in_chunks_and_counts_exactly(app, seed, alice, monkeypatch):
    monkeypatch.setattr(csv_import, "CHUNK_SIZE", 7)
    monkeypatch.setattr(csv_import, "COPY_CHUNK_SIZE", 7)
    list_id = seed.list(alice, "Chunks", [{"email": "u5@example.org"}])
    lines = ["email,n"] + [f"u{i % 40}@example.org,{i}" for i in range(60)] + ["bad,0"]
    with app.app_context():
        from panel.extensions import db

        mailing_list = db.session.get(MailingList, list_id)
        report = import_csv(mailing_list, io.BytesIO("\n".join(lines).encode()))
        db.session.commit()
    assert report.added == 39  # u0..u39 minus u5 already there
    assert report.duplicates == 21
    assert report.rejected == [{"row": 62, "email": "bad", "reason": "an address needs a part before and after an @-sign"}]
    assert seed.get(MailingList, list_id).recipient_count == 40
    assert len(recipients(seed, list_id)) == 40


def test_two_imports_in_one_transaction_count_apart(app, seed, alice, monkeypatch):
    """PostgreSQL's staging table outlives the first import until the commit: the second finds it
    empty, and the connection plans its statements as before (the import's plan setting undone)."""
    monkeypatch.setattr(csv_import, "COPY_CHUNK_SIZE", 3)
    first = seed.list(alice, "First")
    second = seed.list(alice, "Second")
    with app.app_context():
        from sqlalchemy import text

        from panel.extensions import db

        one = import_csv(db.session.get(MailingList, first), io.BytesIO(b"email\na@example.org\nb@example.org\n"))
        two = import_csv(db.session.get(MailingList, second),
                         io.BytesIO(b"email\nb@example.org\nc@example.org\nd@example.org\nc@example.org\n"))
        if db.session.get_bind().dialect.name == "postgresql":
            assert db.session.scalar(text("SHOW plan_cache_mode")) == "force_custom_plan"
        db.session.commit()
    assert (one.added, one.duplicates, two.added, two.duplicates) == (2, 0, 3, 1)
    assert recipients(seed, first) == [("a@example.org", {}), ("b@example.org", {})]
    assert recipients(seed, second) == [("b@example.org", {}), ("c@example.org", {}), ("d@example.org", {})]


def test_tab_separated_with_crlf(app, seed, alice):
    list_id = seed.list(alice, "Tabs")
    with app.app_context():
        from panel.extensions import db

        report = import_csv(db.session.get(MailingList, list_id), io.BytesIO(b"mail\tname\r\nann@example.org\tAnn\r\n"))
        db.session.commit()
    assert report.as_dict() == {"added": 1, "duplicates": 0, "rejected": []}
    assert recipients(seed, list_id) == [("ann@example.org", {"name": "Ann"})]


def test_internationalised_domains_are_stored_in_ascii(app, seed, alice):
    list_id = seed.list(alice, "IDN")
    with app.app_context():
        from panel.extensions import db

        report = import_csv(db.session.get(MailingList, list_id),
                            io.BytesIO("email\nAnn@Exämple.org\nü@example.org\n".encode()))
        db.session.commit()
    assert recipients(seed, list_id) == [("ann@xn--exmple-cua.org", {})]
    assert report.rejected[0]["row"] == 3 and "non-ASCII" in report.rejected[0]["reason"]


def test_import_failed_leaves_the_session_to_roll_back(app, seed, alice):
    list_id = seed.list(alice, "X")
    with app.app_context():
        from panel.extensions import db

        with pytest.raises(ImportFailed):
            import_csv(db.session.get(MailingList, list_id), io.BytesIO(b"email\na@example.org\nb@\x00\n"))
        db.session.rollback()
    assert recipients(seed, list_id) == []


def test_fields_of_rejected_rows_are_not_added(app, seed, alice):
    from panel.services.csv_import import import_records

    list_id = seed.list(alice, "People")
    with app.app_context():
        from panel.extensions import db

        report = import_records(db.session.get(MailingList, list_id), [
            {"email": "ann@example.org", "name": "Ann"},
            {"email": "broken", "secret_field": "x"},
        ])
        db.session.commit()
    assert report.added == 1
    assert seed.get(MailingList, list_id).fields == ["name"]
