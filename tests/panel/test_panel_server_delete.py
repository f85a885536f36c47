"""Deleting a server from the panel: what goes, what stays, and when it is refused."""

from __future__ import annotations

from panel.extensions import db
from panel.models import Campaign, Delivery, ProvisionJob, Server, ServerEvent


def _server_with_letters(app, seed, user_id: int) -> tuple[int, int]:
    """A ready server that took a two-letter campaign: one letter delivered, one without outcome yet."""
    server_id = seed.server(user_id, "Old box")
    list_id = seed.list(user_id, "readers", [{"email": "ann@example.org", "name": "Ann"}, {"email": "bob@example.org", "name": "Bob"}])
    campaign_id = seed.campaign(user_id, [list_id])
    with app.app_context():
        db.session.add(ServerEvent(server_id=server_id, kind="offline", message="connection refused"))
        for n, email in enumerate(("ann@example.org", "bob@example.org")):
            db.session.add(Delivery(campaign_id=campaign_id, email=email, server_id=server_id, source_ip="192.0.2.10",
                                    status="delivered" if n == 0 else "queued"))
        db.session.commit()
    return server_id, campaign_id


def _set_status(app, server_id: int, status: str) -> None:
    with app.app_context():
        db.session.get(Server, server_id).status = status
        db.session.commit()


def test_deleting_an_offline_server_keeps_the_history_and_fails_letters_left_open(as_alice, app, seed, alice):
    server_id, campaign_id = _server_with_letters(app, seed, alice)
    _set_status(app, server_id, "offline")
    assert "Delete</button>" in as_alice.get(f"/servers/{server_id}").get_data(as_text=True)

    response = as_alice.post(f"/servers/{server_id}/delete")
    assert response.status_code == 302 and response.headers["Location"].endswith("/servers/")
    page = as_alice.get("/servers/").get_data(as_text=True)
    assert "“Old box” is deleted; its campaigns&#39; history is kept." in page
    assert "1 letters assigned to it had no outcome yet and are marked failed." in page
    assert as_alice.get(f"/servers/{server_id}").status_code == 404

    deliveries = seed.query(lambda s: [(d.email, d.status, d.server_id, d.reply) for d in s.query(Delivery).order_by(Delivery.id)])
    assert deliveries == [
        ("ann@example.org", "delivered", None, None),
        ("bob@example.org", "failed", None, "the server Old box was deleted before this letter's outcome was known"),
    ]
    assert seed.get(Campaign, campaign_id) is not None
    assert seed.query(lambda s: s.query(ServerEvent).filter_by(server_id=server_id).count()) == 0


def test_an_online_server_is_not_deleted(as_alice, app, seed, alice):
    server_id, _ = _server_with_letters(app, seed, alice)
    _set_status(app, server_id, "online")
    assert "Delete</button>" not in as_alice.get(f"/servers/{server_id}").get_data(as_text=True)

    response = as_alice.post(f"/servers/{server_id}/delete")
    assert response.status_code == 302
    page = as_alice.get(f"/servers/{server_id}").get_data(as_text=True)
    assert "“Old box” was not deleted: it is online and may still be sending: remove it first" in page
    assert seed.query(lambda s: sorted(d.status for d in s.query(Delivery))) == ["delivered", "queued"]


def test_a_server_with_a_setup_job_running_is_not_deleted(as_alice, app, seed, alice):
    server_id = seed.server(alice, "Busy box")
    _set_status(app, server_id, "failed")
    with app.app_context():
        db.session.add(ProvisionJob(server_id=server_id, kind="reprovision", status="running", log=""))
        db.session.commit()
    as_alice.post(f"/servers/{server_id}/delete")
    page = as_alice.get(f"/servers/{server_id}").get_data(as_text=True)
    assert "was not deleted: a setup job is queued or running: wait until it ends." in page
    assert seed.get(Server, server_id) is not None


def test_another_users_server_cannot_be_deleted(as_alice, app, seed, bob):
    server_id = seed.server(bob, "Bob's box")
    _set_status(app, server_id, "removed")
    assert as_alice.post(f"/servers/{server_id}/delete").status_code == 404
    assert seed.get(Server, server_id) is not None
