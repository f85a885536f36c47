"""The Suppressions page (search, add, remove, import, export), the lists' CSV export on the page
and the command line, and campaigns over several allow and deny lists composed on the page."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import select

from panel.models import Campaign, Delivery, Suppression

RAR = Path(__file__).resolve().parent.parent / "fixtures" / "rar"


def suppressed(seed, user_id):
    return seed.query(lambda s: [(x.email, x.reason) for x in s.scalars(
        select(Suppression).where(Suppression.user_id == user_id).order_by(Suppression.email))])


def test_add_search_page_remove(as_alice, seed, alice, bob):
    for n in range(60):
        response = as_alice.post("/suppressions/", {"email": f"p{n:02}@{'example.org' if n % 3 else 'example.net'}"})
        assert response.status_code == 302
    page = as_alice.get("/suppressions/").get_data(as_text=True)
    assert "<td>p00@example.net" in page and "<td>p49@example.org" in page and "<td>p50@" not in page
    assert "added by hand" in page and "after=p49@example.org" in page
    second = as_alice.get("/suppressions/?after=p49@example.org").get_data(as_text=True)
    assert "<td>p50@example.org" in second and "<td>p49@" not in second
    found = as_alice.get("/suppressions/?q=@example.net").get_data(as_text=True)
    assert found.count("@example.net</td>") == 20 and "@example.org</td>" not in found
    assert as_alice.get("/suppressions/?q=p1").get_data(as_text=True).count("</td>\n      <td>added by hand") == 10
    bad = as_alice.post("/suppressions/", {"email": "not an address"})
    assert bad.status_code == 400 and "not a usable address" in bad.get_data(as_text=True)
    entry = seed.query(lambda s: s.scalar(select(Suppression.id).where(Suppression.email == "p00@example.net")))
    assert as_alice.post(f"/suppressions/{entry}/remove").status_code == 302
    assert len(suppressed(seed, alice)) == 59 and ("p00@example.net", "manual") not in suppressed(seed, alice)
    assert suppressed(seed, bob) == []


def test_another_users_entry_cannot_be_removed(as_alice, seed, bob):
    with seed.app.app_context():
        from panel.extensions import db

        db.session.add(Suppression(user_id=bob, email="carol@example.org", reason="hard_bounce"))
        db.session.commit()
    entry = seed.query(lambda s: s.scalar(select(Suppression.id)))
    as_alice.post(f"/suppressions/{entry}/remove")
    assert suppressed(seed, bob) == [("carol@example.org", "hard_bounce")]
    assert "carol@example.org" not in as_alice.get("/suppressions/").get_data(as_text=True)


def test_anonymous_is_sent_to_login(client):
    for url in ("/suppressions/", "/suppressions/export.csv"):
        response = client.get(url)
        assert response.status_code == 302 and "/login" in response.headers["Location"]


def upload(browser, name, data):
    return browser.post("/suppressions/import", {"file": (io.BytesIO(data), name)}, content_type="multipart/form-data")


def test_import_text_csv_zip_and_rar(as_alice, seed, alice):
    with seed.app.app_context():
        from panel.extensions import db

        db.session.add(Suppression(user_id=alice, email="ann@example.org", reason="hard_bounce"))
        db.session.commit()
    response = upload(as_alice, "list.txt", b"ann@example.org\nbob@example.org\nnonsense\n")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "1 addresses suppressed, 1 already were, 1 rows rejected" in page and "nonsense" in page
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as archive:
        archive.writestr("a.csv", "name,email\nCid,cid@example.org\n")
        archive.writestr("b.txt", "dan@example.org\n")
    assert upload(as_alice, "more.zip", packed.getvalue()).status_code == 302
    response = upload(as_alice, "list.rar", (RAR / "list.rar").read_bytes())  # ann (already), carl and a bad row
    assert response.status_code == 200 and "1 addresses suppressed, 1 already were, 1 rows rejected" in \
        response.get_data(as_text=True)
    reasons = dict(suppressed(seed, alice))
    assert reasons["ann@example.org"] == "hard_bounce"  # kept its reason
    assert {reasons[x] for x in ("bob@example.org", "cid@example.org", "dan@example.org")} == {"manual"}
    assert len(reasons) == 5  # and carl from the RAR


def test_a_bad_file_imports_nothing(as_alice, seed, alice):
    response = upload(as_alice, "list.csv", b"name,city\nAnn,Oslo\n")
    assert response.status_code == 400 and "Nothing was imported" in response.get_data(as_text=True)
    response = upload(as_alice, "list.csv", b"email\nann@example.org\n\x00\n")
    assert response.status_code == 400
    assert suppressed(seed, alice) == []


def read_csv(text):
    return list(csv.reader(io.StringIO(text)))


def test_exports_are_formula_safe_on_the_pages(as_alice, seed, alice):
    list_id = seed.list(alice, "People", [{"email": "ann@example.org", "name": "=1+2"}, {"email": "bob@example.org"}])
    response = as_alice.get(f"/lists/{list_id}/export.csv")
    assert response.mimetype == "text/csv" and "attachment" in response.headers["Content-Disposition"]
    assert read_csv(response.get_data(as_text=True)) == [["email", "name"], ["ann@example.org", "'=1+2"],
                                                         ["bob@example.org", ""]]
    assert f'href="/lists/{list_id}/export.csv"' in as_alice.get(f"/lists/{list_id}").get_data(as_text=True)
    as_alice.post("/suppressions/", {"email": "-x@example.org"})
    rows = read_csv(as_alice.get("/suppressions/export.csv").get_data(as_text=True))
    assert rows[0] == ["email", "reason", "created_at"] and rows[1][:2] == ["'-x@example.org", "manual"]


def test_cli_exports(runner, seed, alice, tmp_path):
    seed.list(alice, "People", [{"email": "ann@example.org", "note": "@home"}])
    out = tmp_path / "people.csv"
    result = runner.invoke(args=["lists", "export", "People", str(out), "--user", "alice@example.com"])
    assert result.exit_code == 0, result.output
    assert read_csv(out.read_text()) == [["email", "note"], ["ann@example.org", "'@home"]]
    result = runner.invoke(args=["lists", "export", "Nope", str(out), "--user", "alice@example.com"])
    assert result.exit_code == 1 and "has no list 'Nope'" in result.output
    result = runner.invoke(args=["lists", "export", "People", str(tmp_path / "no" / "x.csv"), "--user", "alice@example.com"])
    assert result.exit_code == 1 and "cannot write" in result.output
    with seed.app.app_context():
        from panel.extensions import db

        db.session.add(Suppression(user_id=alice, email="bob@example.org", reason="complaint"))
        db.session.commit()
    result = runner.invoke(args=["suppressions", "export", "-", "--user", "alice@example.com"])
    assert result.exit_code == 0
    assert read_csv(result.stdout)[1][:2] == ["bob@example.org", "complaint"]


@pytest.mark.parametrize("through", ["page", "api"])
def test_several_allow_and_deny_lists_each_address_once(as_alice, client, seed, alice, through):
    one = seed.list(alice, "One", [{"email": f"a{n}@example.org"} for n in range(5)] + [{"email": "both@example.org"}])
    two = seed.list(alice, "Two", [{"email": "both@example.org"}, {"email": "b1@example.org"},
                                   {"email": "b2@example.org"}, {"email": "sup@example.org"}])
    deny_one = seed.list(alice, "Deny one", [{"email": "a0@example.org"}, {"email": "nobody@example.org"}])
    deny_two = seed.list(alice, "Deny two", [{"email": "b1@example.org"}])
    with seed.app.app_context():
        from panel.extensions import db

        db.session.add(Suppression(user_id=alice, email="sup@example.org", reason="manual"))
        db.session.commit()
    seed.server(alice, ips=("192.0.2.10", "192.0.2.11"))
    body = {"name": "Both", "subject": "Hi", "from_email": "news@example.com",
            "text": "Hello\n{{ unsubscribe_url }}", "lists": [one, two], "exclude_lists": [deny_one, deny_two]}
    if through == "page":
        data = {**body, "from_name": "", "reply_to": "", "format": "plain", "html": "", "encoding": "quoted-printable"}
        assert as_alice.post("/campaigns/new", data).status_code == 302
        campaign_id = seed.query(lambda s: s.scalar(select(Campaign.id)))
        assert as_alice.post(f"/campaigns/{campaign_id}/start").status_code == 302
    else:
        headers = {"Authorization": f"Bearer {seed.token(alice)}"}
        campaign_id = client.post("/api/v1/campaigns", json=body, headers=headers).get_json()["id"]
        assert client.post(f"/api/v1/campaigns/{campaign_id}/start", headers=headers).status_code == 200
    letters = seed.query(lambda s: sorted(s.scalars(select(Delivery.email).where(Delivery.campaign_id == campaign_id))))
    assert letters == ["a1@example.org", "a2@example.org", "a3@example.org", "a4@example.org",
                       "b2@example.org", "both@example.org"]
    assert seed.get(Campaign, campaign_id).total == 6
