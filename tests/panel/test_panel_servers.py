"""The servers pages."""

from __future__ import annotations

from datetime import datetime

from panel.extensions import db
from panel.models import Server, ServerEvent


def test_servers_page_lists_status_last_seen_and_ips(as_alice, app, seed, alice, bob):
    server_id = seed.server(alice, "Frankfurt 1", ips=("192.0.2.10", "192.0.2.11"))
    seed.server(bob, "Bob's box")
    with app.app_context():
        server = db.session.get(Server, server_id)
        server.status, server.last_seen_at = "online", datetime(2026, 3, 1, 12, 30, 5)
        db.session.commit()
    page = as_alice.get("/servers/").get_data(as_text=True)
    assert "Frankfurt 1" in page and "Bob&#39;s box" not in page
    assert "online" in page and "2026-03-01 12:30:05" in page
    assert "<code>192.0.2.10</code> (mx1.example.net)" in page
    assert "<code>192.0.2.11</code> (mx2.example.net)" in page


def test_server_page_shows_its_events_newest_first(as_alice, app, seed, alice):
    server_id = seed.server(alice)
    with app.app_context():
        db.session.add_all([
            ServerEvent(server_id=server_id, kind="offline", message="connection refused"),
            ServerEvent(server_id=server_id, kind="online", message="agent answered"),
        ])
        db.session.get(Server, server_id).last_error = "<b>boom</b>"
        db.session.commit()
    page = as_alice.get(f"/servers/{server_id}").get_data(as_text=True)
    assert page.index("agent answered") < page.index("connection refused")
    assert "https://worker1.example.net:8443" in page
    assert "&lt;b&gt;boom&lt;/b&gt;" in page
    assert "never" in page  # not seen yet


def test_servers_page_without_servers_explains_how_to_add_one(as_alice):
    page = as_alice.get("/servers/").get_data(as_text=True)
    assert "No servers yet" in page and "flask --app panel servers add --user alice@example.com" in page


def test_unknown_server_is_404(as_alice):
    assert as_alice.get("/servers/999").status_code == 404
