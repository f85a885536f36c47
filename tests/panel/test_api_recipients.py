"""The API's bulk add limits, one recipient at a time (update, delete, unsubscribe), the
suppression list, CSV exports and the per-token rate limit."""

from __future__ import annotations

import csv
import io
import time

import pytest
from sqlalchemy import func, select

from panel.models import MailingList, Recipient, Suppression
from tests.panel.test_panel_api import api, error_of, token  # noqa: F401 (fixtures)


def list_with(api, records, name="People"):
    list_id = api.post("/lists", {"name": name}).get_json()["id"]
    if records:
        assert api.post(f"/lists/{list_id}/recipients", records).status_code == 200
    return list_id


def kept_and_real_count(seed, list_id):
    return seed.query(lambda s: (
        s.get(MailingList, list_id).recipient_count,
        s.scalar(select(func.count()).select_from(Recipient).where(Recipient.list_id == list_id)),
    ))


def test_bulk_add_twice_adds_nothing_the_second_time(api, seed):
    list_id = list_with(api, None)
    body = "email,name\n" + "".join(f"p{n}@example.org,P{n}\n" for n in range(2500))
    first = api.post(f"/lists/{list_id}/recipients", data=body.encode(), content_type="text/csv").get_json()
    second = api.post(f"/lists/{list_id}/recipients", data=body.encode(), content_type="text/csv").get_json()
    assert first == {"added": 2500, "duplicates": 0, "rejected": []}
    assert second == {"added": 0, "duplicates": 2500, "rejected": []}
    assert kept_and_real_count(seed, list_id) == (2500, 2500)


class TestRowLimit:
    @pytest.fixture
    def app_config(self):
        return {"API_MAX_ROWS": 10}

    @pytest.mark.parametrize("kind", ["json", "csv", "csv-with-rejects"])
    def test_more_rows_than_allowed_is_413_and_adds_nothing(self, api, seed, kind):
        list_id = list_with(api, None)
        if kind == "json":
            response = api.post(f"/lists/{list_id}/recipients", [{"email": f"p{n}@example.org"} for n in range(11)])
        else:
            rows = [f"p{n}@example.org" if kind == "csv" or n % 2 else "bad" for n in range(11)]
            response = api.post(f"/lists/{list_id}/recipients", data=("email\n" + "\n".join(rows)).encode(),
                                content_type="text/csv")
        message = error_of(response, 413)
        assert "at most 10 rows" in message and "nothing was added" in message
        assert kept_and_real_count(seed, list_id) == (0, 0)
        ok = api.post(f"/lists/{list_id}/recipients", [{"email": f"p{n}@example.org"} for n in range(10)])
        assert ok.get_json()["added"] == 10


def test_update_delete_and_unsubscribe_one(api, seed, alice):
    list_id = list_with(api, [{"email": "ann@example.org", "name": "Ann"}, {"email": "bob@example.org"}])
    response = api.open(f"/lists/{list_id}/recipients/Ann@Example.org", "PATCH",
                        json={"name": "Anna", "city": "Oslo"})
    assert response.status_code == 200
    ann = response.get_json()
    assert ann["email"] == "ann@example.org" and ann["fields"] == {"name": "Anna", "city": "Oslo"}
    assert "city" in api.get(f"/lists/{list_id}").get_json()["fields"]
    by_id = api.open(f"/lists/{list_id}/recipients/{ann['id']}", "PATCH", json={"city": None}).get_json()
    assert by_id["fields"] == {"name": "Anna"}
    assert "already on this list" in error_of(
        api.open(f"/lists/{list_id}/recipients/{ann['id']}", "PATCH", json={"email": "bob@example.org"}), 409)
    assert "not a usable address" in error_of(
        api.open(f"/lists/{list_id}/recipients/{ann['id']}", "PATCH", json={"email": "nope"}), 400)
    assert "reserved" in error_of(
        api.open(f"/lists/{list_id}/recipients/{ann['id']}", "PATCH", json={"unsubscribe_url": "x"}), 400)

    for _ in range(2):  # idempotent
        response = api.post(f"/lists/{list_id}/recipients/ann@example.org/unsubscribe")
        assert response.status_code == 200 and response.get_json()["unsubscribed_at"]
    assert seed.query(lambda s: [(x.email, x.reason) for x in s.scalars(select(Suppression))]) == [
        ("ann@example.org", "unsubscribe")]

    assert api.open(f"/lists/{list_id}/recipients/bob@example.org", "DELETE").status_code == 204
    assert "has no recipient" in error_of(api.open(f"/lists/{list_id}/recipients/bob@example.org", "DELETE"), 404)
    assert kept_and_real_count(seed, list_id) == (1, 1)
    assert error_of(api.get(f"/lists/{list_id}/recipients/99999"), 404)


def test_another_users_list_or_recipient_is_404(api, seed, bob_objects):
    other = bob_objects["list"]
    for method, url in [("PATCH", f"/lists/{other}/recipients/carol@example.org"),
                        ("DELETE", f"/lists/{other}/recipients/carol@example.org"),
                        ("POST", f"/lists/{other}/recipients/carol@example.org/unsubscribe"),
                        ("GET", f"/lists/{other}/export.csv")]:
        error_of(api.open(url, method, json={"name": "x"} if method == "PATCH" else None), 404)
    carol = seed.query(lambda s: s.scalar(select(Recipient.id).where(Recipient.list_id == other)))
    mine = list_with(api, [{"email": "ann@example.org"}])
    error_of(api.open(f"/lists/{mine}/recipients/{carol}", "PATCH", json={"name": "x"}), 404)
    assert seed.query(lambda s: s.scalar(select(func.count()).select_from(Suppression))) == 0


def read_csv(response):
    assert response.status_code == 200 and response.mimetype == "text/csv"
    return list(csv.reader(io.StringIO(response.get_data(as_text=True))))


def test_list_export_is_formula_safe(api):
    list_id = list_with(api, [{"email": "ann@example.org", "name": "=HYPERLINK(\"x\")", "note": "+1"},
                              {"email": "bob@example.org", "name": "Bob"}])
    rows = read_csv(api.get(f"/lists/{list_id}/export.csv"))
    assert rows == [["email", "name", "note"], ["ann@example.org", "'=HYPERLINK(\"x\")", "'+1"],
                    ["bob@example.org", "Bob", ""]]


def test_suppressions_add_search_page_delete_export(api, seed, bob_objects):
    emails = [f"u{n:02}@{'example.org' if n % 2 else 'example.net'}" for n in range(30)]
    for email in emails:
        assert api.post("/suppressions", {"email": email}).status_code == 201
    again = api.post("/suppressions", {"email": "U01@Example.org", "reason": "complaint"})
    assert again.status_code == 200 and again.get_json()["reason"] == "manual"
    assert "unknown reason" in error_of(api.post("/suppressions", {"email": "x@example.org", "reason": "x"}), 400)
    assert "not a usable address" in error_of(api.post("/suppressions", {"email": "x"}), 400)

    seen, after = [], None
    while True:
        page = api.get(f"/suppressions?limit=7&q=@example.net" + (f"&after={after}" if after else "")).get_json()
        seen += [item["email"] for item in page["items"]]
        after = page["next_after"]
        if after is None:
            break
    assert seen == sorted(e for e in emails if e.endswith("example.net"))
    assert [x["email"] for x in api.get("/suppressions?q=example.org&limit=3").get_json()["items"]] == \
        ["u01@example.org", "u03@example.org", "u05@example.org"]
    assert [x["email"] for x in api.get("/suppressions?q=u1").get_json()["items"]] == \
        [f"u{n}@{'example.org' if n % 2 else 'example.net'}" for n in range(10, 20)]
    assert api.get("/suppressions?q=u1_").get_json()["items"] == []  # _ is no wildcard
    error_of(api.get("/suppressions?limit=0"), 400)

    assert api.open("/suppressions/u00@example.net", "DELETE").status_code == 204
    error_of(api.open("/suppressions/u00@example.net", "DELETE"), 404)
    bobs = seed.query(lambda s: s.scalar(select(Suppression.id).where(Suppression.email == "carol@example.org")))
    if bobs is not None:
        error_of(api.open(f"/suppressions/{bobs}", "DELETE"), 404)
    rows = read_csv(api.get("/suppressions/export.csv"))
    assert rows[0] == ["email", "reason", "created_at"] and len(rows) == 30
    assert rows[1][:2] == ["u01@example.org", "manual"]


def test_unsubscribed_and_suppressed_addresses_get_no_letter(api, seed, alice):
    first = list_with(api, [{"email": "ann@example.org"}, {"email": "bob@example.org"}, {"email": "cid@example.org"},
                            {"email": "dan@example.org"}], "A")
    second = list_with(api, [{"email": "ann@example.org"}, {"email": "eve@example.org"}], "B")
    deny_one = list_with(api, [{"email": "bob@example.org"}], "deny 1")
    deny_two = list_with(api, [{"email": "eve@example.org"}], "deny 2")
    api.post(f"/lists/{first}/recipients/cid@example.org/unsubscribe")
    api.post("/suppressions", {"email": "dan@example.org"})
    seed.server(alice)
    body = {"name": "S", "subject": "s", "from_email": "news@example.com", "text": "t {{ unsubscribe_url }}",
            "lists": [first, second], "exclude_lists": [deny_one, deny_two]}
    campaign = api.post("/campaigns", body).get_json()["id"]
    assert api.post(f"/campaigns/{campaign}/start").status_code == 200
    assert api.get(f"/campaigns/{campaign}/stats").get_json()["total"] == 1  # ann, once


class TestRateLimit:
    @pytest.fixture
    def app_config(self):
        return {"API_RATE": 5.0, "API_BURST": 3}

    def test_429_then_recovery(self, api, client, seed, alice):
        for _ in range(3):
            assert api.get("/lists").status_code == 200
        refused = api.get("/lists")
        message = error_of(refused, 429)
        assert "at most 3 at once" in message and "Retry-After" in message
        assert refused.headers["Retry-After"] == "1"
        other = {"Authorization": f"Bearer {seed.token(alice)}"}  # each token has its own bucket
        assert client.get("/api/v1/lists", headers=other).status_code == 200
        time.sleep(0.25)  # one request's worth refills in 0.2 s
        assert api.get("/lists").status_code == 200
        assert api.get("/lists").status_code == 429
        time.sleep(0.7)
        assert [api.get("/lists").status_code for _ in range(3)] == [200, 200, 200]


def _hammer(database_url: str, token: str, count: int, results) -> None:
    """In a process of its own, like a gunicorn worker: its own app, engine and connections."""
    from tests.panel.conftest import make_app

    app = make_app(database_url, API_RATE=0.001, API_BURST=30)
    client = app.test_client()
    codes = [client.get("/api/v1/lists", headers={"Authorization": f"Bearer {token}"}).status_code
             for _ in range(count)]
    results.put(codes)


class TestRateLimitAcrossProcesses:
    @pytest.fixture
    def app_config(self):
        return {"API_RATE": 0.001, "API_BURST": 30}

    def test_four_workers_share_one_bucket(self, database_url, token):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        workers = [context.Process(target=_hammer, args=(database_url, token, 15, results)) for _ in range(4)]
        for worker in workers:
            worker.start()
        codes = [code for _ in workers for code in results.get(timeout=120)]
        for worker in workers:
            worker.join(30)
        assert sorted(set(codes)) == [200, 429]
        assert codes.count(200) == 30 and codes.count(429) == 30  # no token spent twice, none lost
