"""Requests the fuzz run (bench/fuzz.py, tests/security/test_fuzz.py) found answered with a 500 or
a traceback, or changing the database although refused: each is now a 4xx saying what was wrong."""

from __future__ import annotations

import pytest

from panel.models import MailingList


@pytest.fixture
def headers(seed, alice) -> dict[str, str]:
    return {"Authorization": f"Bearer {seed.token(alice)}"}


def error_of(response, status: int) -> str:
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    return response.get_json()["error"]


@pytest.mark.parametrize("url", ["/api/v1/lists", "/api/v1/domains", "/api/v1/campaigns", "/api/v1/suppressions"])
def test_json_nested_too_deeply_is_a_400(client, headers, seed, url) -> None:
    """100,000 nested arrays made json.loads raise RecursionError: a 500."""
    body = "[" * 100_000 + "]" * 100_000
    error = error_of(client.post(url, data=body, content_type="application/json", headers=headers), 400)
    assert "nested too deeply" in error
    assert seed.query(lambda s: s.query(MailingList).count()) == 0


@pytest.mark.parametrize("method, url, body", [
    ("GET", "/api/v1/suppressions?after=%00", None),
    ("GET", "/api/v1/suppressions?q=a%00b", None),
    ("GET", "/api/v1/lists/{list}/recipients/ann%00@example.org", None),
    ("DELETE", "/api/v1/suppressions/%00", None),
    ("POST", "/api/v1/lists", {"name": "News\u0000letter"}),
    ("POST", "/api/v1/suppressions", {"email": "ann@example.org", "reason": "\u0000"}),
    ("POST", "/api/v1/lists/{list}/recipients", [{"email": "bob@example.org", "city": "Os\u0000lo"}]),
    ("PATCH", "/api/v1/lists/{list}/recipients/ann@example.org", {"name\u0000": "Ann"}),
])
def test_text_with_a_nul_character_is_a_400(client, headers, seed, alice, method, url, body) -> None:
    """PostgreSQL's text cannot hold NUL: GET /suppressions?after=%00 answered 500 (psycopg DataError)."""
    list_id = seed.list(alice, "Mine", [{"email": "ann@example.org", "name": "Ann"}])
    lists_before = seed.query(lambda s: [(x.name, x.recipient_count) for x in s.query(MailingList)])
    response = client.open(url.format(list=list_id), method=method, json=body, headers=headers)
    assert "NUL" in error_of(response, 400)
    assert seed.query(lambda s: [(x.name, x.recipient_count) for x in s.query(MailingList)]) == lists_before


def test_a_limit_of_a_unicode_digit_is_a_400(client, headers) -> None:
    """'¹' passes str.isdigit() but not int(): GET /suppressions?limit=¹ answered 500."""
    assert "limit must be a whole number" in error_of(client.get("/api/v1/suppressions?limit=%C2%B9", headers=headers),
                                                      400)


@pytest.mark.parametrize("part", ["text", "html", "subject"])
def test_a_template_nested_too_deeply_for_the_parser_is_a_400(client, headers, seed, alice, part) -> None:
    """'{{{{{{…' made Jinja's parser raise RecursionError while the campaign was checked: a 500."""
    from panel.models import Campaign

    list_id = seed.list(alice, "News", [{"email": "ann@example.org"}])
    body = {"name": "Deep", "subject": "Hi", "from_email": "news@example.com", "lists": [list_id],
            "text": "Hello {{ unsubscribe_url }}"}
    body[part] = "{" * 20_000 + (body[part] if part in body else "")
    error = error_of(client.post("/api/v1/campaigns", json=body, headers=headers), 400)
    assert "too deeply" in error
    assert seed.query(lambda s: s.query(Campaign).count()) == 0
