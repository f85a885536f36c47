"""The JSON API under /api/v1: happy paths and every error shape."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from panel.models import ApiToken, Campaign, MailingList, Recipient


@pytest.fixture
def token(seed, alice):
    return seed.token(alice)


@pytest.fixture
def api(client, token):
    class Api:
        headers = {"Authorization": f"Bearer {token}"}

        def get(self, url):
            return client.get("/api/v1" + url, headers=self.headers)

        def post(self, url, json=None, **kwargs):
            if json is not None:
                kwargs["json"] = json
            return client.post("/api/v1" + url, headers=self.headers, **kwargs)

        def open(self, url, method, **kwargs):
            return client.open("/api/v1" + url, method=method, headers=self.headers, **kwargs)

    return Api()


def error_of(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json, response.content_type
    body = response.get_json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return body["error"]


# -- lists -------------------------------------------------------------------------------

def test_lists_create_get_and_list(api, seed, token):
    response = api.post("/lists", {"name": "Newsletter"})
    assert response.status_code == 201
    created = response.get_json()
    assert created["name"] == "Newsletter" and created["recipient_count"] == 0 and created["fields"] == []
    assert response.headers["Location"] == f"/api/v1/lists/{created['id']}"
    assert api.get(f"/lists/{created['id']}").get_json() == created
    assert api.get("/lists").get_json() == [created]
    assert seed.query(lambda s: s.scalar(select(ApiToken.last_used_at))) is not None


def test_recipients_as_json(api, seed):
    list_id = api.post("/lists", {"name": "People"}).get_json()["id"]
    response = api.post(f"/lists/{list_id}/recipients", [
        {"email": "Ann@Example.org", "name": "Ann", "age": 41, "vip": True},
        {"email": "ann@example.org", "name": "Ann twice"},
        {"email": "nope", "name": "Bad"},
        {"name": "No address"},
        "not an object",
        {"email": "cid@example.org", "tags": ["a", "b"]},
    ])
    assert response.status_code == 200
    assert response.get_json() == {
        "added": 1,
        "duplicates": 1,
        "rejected": [
            {"row": 3, "email": "nope", "reason": "an address needs a part before and after an @-sign"},
            {"row": 4, "email": None, "reason": "no email key"},
            {"row": 5, "email": None, "reason": 'each item must be an object like {"email": "ann@example.org"}'},
            {"row": 6, "email": "cid@example.org", "reason": "the value of 'tags' must be text, a number, true/false or null"},
        ],
    }
    assert seed.query(lambda s: [(r.email, r.fields) for r in s.scalars(select(Recipient))]) == [
        ("ann@example.org", {"name": "Ann", "age": 41, "vip": True}),
    ]
    body = api.get(f"/lists/{list_id}").get_json()
    assert body["recipient_count"] == 1 and sorted(body["fields"]) == ["age", "name", "vip"]


def test_recipients_as_csv(api, seed):
    list_id = api.post("/lists", {"name": "People"}).get_json()["id"]
    body = "email,name\nann@example.org,Ann\nbad address,X\n".encode()
    response = api.post(f"/lists/{list_id}/recipients", data=body, content_type="text/csv; charset=utf-8")
    assert response.status_code == 200
    report = response.get_json()
    assert report["added"] == 1 and report["duplicates"] == 0
    assert [(r["row"], r["email"]) for r in report["rejected"]] == [(3, "bad address")]


def test_csv_without_email_column_imports_nothing(api, seed):
    list_id = api.post("/lists", {"name": "People"}).get_json()["id"]
    response = api.post(f"/lists/{list_id}/recipients", data=b"name\nAnn\n", content_type="text/csv")
    assert "nothing was imported" in error_of(response, 400)
    assert seed.query(lambda s: s.query(Recipient).count()) == 0


# -- campaigns ---------------------------------------------------------------------------

@pytest.fixture
def people(api):
    list_id = api.post("/lists", {"name": "People"}).get_json()["id"]
    api.post(f"/lists/{list_id}/recipients", [{"email": "ann@example.org", "name": "Ann"},
                                               {"email": "bob@example.org", "name": "Bob"}])
    return list_id


def campaign_body(list_id, **overrides):
    body = {"name": "Spring", "subject": "Hi {{ name }}", "from_email": "news@example.com",
            "from_name": "News", "text": "Hello {{ name }}\n{{ unsubscribe_url }}",
            "html": "<p>Hello {{ name }}</p><p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p>",
            "encoding": "base64", "lists": [list_id]}
    body.update(overrides)
    return body


def test_campaign_create_start_stats_pause_resume_cancel(api, seed, alice, people):
    server_id = seed.server(alice)
    response = api.post("/campaigns", campaign_body(people, servers=[server_id]))
    assert response.status_code == 201, response.get_json()
    campaign = response.get_json()
    assert campaign["status"] == "draft" and campaign["format"] == "multipart" and campaign["encoding"] == "base64"
    assert campaign["lists"] == [people] and campaign["servers"] == [server_id] and campaign["exclude_lists"] == []
    assert response.headers["Location"] == f"/api/v1/campaigns/{campaign['id']}"
    assert api.get(f"/campaigns/{campaign['id']}").get_json() == campaign
    assert api.get("/campaigns").get_json() == [campaign]

    stats = api.get(f"/campaigns/{campaign['id']}/stats").get_json()
    assert stats["status"] == "draft" and stats["total"] == 0
    started = api.post(f"/campaigns/{campaign['id']}/start", {})
    assert started.status_code == 200 and started.get_json()["status"] == "running"
    stats = api.get(f"/campaigns/{campaign['id']}/stats").get_json()
    for key in ("status", "total", "queued", "sent", "delivered", "deferred", "bounced_hard", "bounced_soft",
                "failed", "unsubscribed", "clicks"):
        assert key in stats
    assert stats["status"] == "running" and stats["total"] == 2 and stats["queued"] == 2
    assert "only a draft can be started" in error_of(api.post(f"/campaigns/{campaign['id']}/start"), 409)
    assert api.post(f"/campaigns/{campaign['id']}/pause").get_json()["status"] == "paused"
    assert api.post(f"/campaigns/{campaign['id']}/resume").get_json()["status"] == "running"
    assert api.post(f"/campaigns/{campaign['id']}/cancel").get_json()["status"] == "cancelled"
    assert "cannot resume a campaign that is cancelled" in error_of(api.post(f"/campaigns/{campaign['id']}/resume"), 409)


def test_plain_campaign_with_defaults(api, seed, people):
    response = api.post("/campaigns", {"name": "n", "subject": "s", "from_email": "a@example.com",
                                       "text": "hi {{ email }}\n{{ unsubscribe_url }}", "lists": [people]})
    assert response.status_code == 201
    body = response.get_json()
    assert body["format"] == "plain" and body["html"] is None and body["encoding"] == "quoted-printable"


def test_start_without_server_is_a_conflict(api, people):
    campaign_id = api.post("/campaigns", campaign_body(people)).get_json()["id"]
    assert "add a server first" in error_of(api.post(f"/campaigns/{campaign_id}/start"), 409)


@pytest.mark.parametrize("overrides,status,message", [
    ({"subject": "Hi {{ nmae }}"}, 400, "subject: line 1: unknown variable 'nmae'"),
    ({"text": "a\n{% foo %}"}, 400, "text: line 2: Encountered unknown tag 'foo'"),
    ({"html": "{{ ''.__class__ }}"}, 400, "'__class__' is not allowed"),
    ({"text": None, "html": None}, 400, "write the letter"),
    ({"text": "Hello {{ name }}"}, 400, "text: the text body has no unsubscribe link, which every letter must show: "
                                        "add a line such as: Unsubscribe: {{ unsubscribe_url }}"),
    ({"html": "<p>Hi</p>"}, 400, 'html: the HTML body has no unsubscribe link, which every letter must show: '
                                 'add a link such as <a href="{{ unsubscribe_url }}">Unsubscribe</a>'),
    ({"encoding": "8bit"}, 400, "encoding: use one of 7bit, quoted-printable, base64"),
    ({"from_email": "nobody"}, 400, "from_email: not a usable address"),
    ({"lists": []}, 400, "missing lists"),
    ({"lists": "1"}, 400, "lists must be an array of ids"),
    ({"lists": [True]}, 400, "lists must be an array of ids"),
    ({"exclude_lists": [999]}, 400, "exclude_lists: no list with id 999 among yours"),
    ({"servers": [999]}, 400, "servers: no server with id 999 among yours"),
    ({"name": 5}, 400, "name must be a string"),
    ({"subject": None}, 400, "missing subject"),
    ({"formt": "html"}, 400, "unknown field(s) formt"),
])
def test_campaign_validation_errors(api, seed, people, overrides, status, message):
    response = api.post("/campaigns", campaign_body(people, **overrides))
    assert message in error_of(response, status)
    assert seed.query(lambda s: s.query(Campaign).count()) == 0


def test_campaign_with_another_users_list_or_server(api, seed, people, bob):
    bobs_list = seed.list(bob, "Bob's")
    bobs_server = seed.server(bob)
    assert f"no list with id {bobs_list} among yours" in error_of(
        api.post("/campaigns", campaign_body(people, lists=[people, bobs_list])), 400)
    assert f"no server with id {bobs_server} among yours" in error_of(
        api.post("/campaigns", campaign_body(people, servers=[bobs_server])), 400)


# -- error shapes ------------------------------------------------------------------------

def test_unknown_ids_are_404(api):
    assert "no list 42" in error_of(api.get("/lists/42"), 404)
    assert "no campaign 42" in error_of(api.get("/campaigns/42"), 404)
    assert "no campaign 42" in error_of(api.get("/campaigns/42/stats"), 404)
    assert "no list 42" in error_of(api.post("/lists/42/recipients", []), 404)


def test_unknown_routes_and_methods_are_json(api, client):
    error_of(api.get("/nothing-here"), 404)
    error_of(client.get("/api/v1/nothing-here"), 404)
    response = api.open("/lists", "DELETE")
    error_of(response, 405)
    assert "GET" in response.headers["Allow"] and "POST" in response.headers["Allow"]
    error_of(api.post("/campaigns/1/explode"), 404)


@pytest.mark.parametrize("kwargs,status,message", [
    ({"data": "name=x", "content_type": "application/x-www-form-urlencoded"}, 415, "Content-Type: application/json"),
    ({"data": "{not json", "content_type": "application/json"}, 400, "not valid JSON"),
    ({"json": ["Newsletter"]}, 400, "send a JSON object"),
    ({"json": {"name": ""}}, 400, "give the list a name"),
    ({"json": {"name": 7}}, 400, "give the list a name"),
])
def test_list_create_errors(api, kwargs, status, message):
    assert message in error_of(api.post("/lists", **kwargs), status)


def test_duplicate_list_name_is_a_conflict(api):
    api.post("/lists", {"name": "Newsletter"})
    assert "already have a list named" in error_of(api.post("/lists", {"name": "Newsletter"}), 409)


@pytest.mark.parametrize("kwargs,status,message", [
    ({"data": "x", "content_type": "text/plain"}, 415, "text/csv"),
    ({"data": b"email\n", "content_type": "text/csv; charset=latin-1"}, 415, "UTF-8"),
    ({"json": {"email": "a@example.org"}}, 400, "JSON array of objects"),
    ({"data": "[1,", "content_type": "application/json"}, 400, "not valid JSON"),
])
def test_recipient_upload_errors(api, kwargs, status, message):
    list_id = api.post("/lists", {"name": "People"}).get_json()["id"]
    assert message in error_of(api.post(f"/lists/{list_id}/recipients", **kwargs), status)


@pytest.mark.parametrize("app_config", [{"MAX_CONTENT_LENGTH": 1024}])
def test_too_large_body_is_413(api, seed):
    list_id = api.post("/lists", {"name": "People"}).get_json()["id"]
    body = [{"email": f"user{i}@example.org"} for i in range(100)]
    assert "too large" in error_of(api.post(f"/lists/{list_id}/recipients", body), 413)
    csv_body = ("email\n" + "".join(f"user{i}@example.org\n" for i in range(100))).encode()
    assert "too large" in error_of(api.post(f"/lists/{list_id}/recipients", data=csv_body, content_type="text/csv"), 413)
    assert seed.get(MailingList, list_id).recipient_count == 0


def test_server_errors_are_json_without_traceback(api, app, monkeypatch):
    from panel.blueprints import api as api_module

    def boom(user):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(api_module, "user_lists", boom)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    response = api.get("/lists")
    message = error_of(response, 500)
    assert "secret internals" not in message and "Traceback" not in response.get_data(as_text=True)


def test_servers_listing(api, seed, alice, bob):
    seed.server(alice, "mine")
    seed.server(bob, "theirs")
    body = api.get("/servers").get_json()
    assert [s["name"] for s in body] == ["mine"]
    assert body[0]["ips"] == [{"ip": "192.0.2.10", "helo": "mx1.example.net", "weight": 1, "active": True}]
    assert "agent_key" not in body[0]
