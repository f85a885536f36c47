"""The unsubscribe link and RFC 8058 one-click POST."""

from __future__ import annotations

import re
import threading
import time
from datetime import datetime

import pytest
from sqlalchemy import create_engine, insert, select

from panel import create_app
from panel.daemon.agent_client import AgentError
from panel.daemon.dispatch import SUPPRESSED_REPLY, dispatch_server
from panel.daemon.recall import recall_suppressed
from panel.daemon.outcomes import finish_campaigns, store_bounces
from panel.extensions import db
from panel.models import BounceMessage, Campaign, Delivery, DispatchBatch, Server, Suppression, User
from panel.services.sending import campaign_stats, start_campaign
from panel.services.tokens import delivery_token

SECRET = "test-secret-key"  # the app fixture's SECRET_KEY
PUBLIC = "http://panel.example.com"  # its PUBLIC_URL: the unsubscribe links' host


@pytest.fixture
def delivery(app, seed, alice):
    list_id = seed.list(alice, "People", [{"email": "ann@example.org", "name": "Ann"}])
    seed.server(alice)
    campaign_id = seed.campaign(alice, [list_id])
    with app.app_context():
        start_campaign(db.session.get(User, alice), db.session.get(Campaign, campaign_id))
        db.session.commit()
        delivery_id = db.session.scalar(select(Delivery.id))
    return {"id": delivery_id, "token": delivery_token(SECRET, delivery_id), "user": alice}


def suppressed(seed):
    return seed.query(lambda s: [(x.user_id, x.email, x.reason) for x in s.scalars(select(Suppression))])


def test_get_shows_a_confirmation_and_changes_nothing(client, seed, delivery):
    response = client.get(f"{PUBLIC}/u/{delivery['token']}")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "ann@example.org" in page and '<button type="submit" class="primary">Unsubscribe</button>' in page
    assert f'action="/u/{delivery["token"]}"' in page
    assert suppressed(seed) == []
    assert seed.get(Delivery, delivery["id"]).unsubscribed_at is None


def test_post_from_the_page_unsubscribes_without_csrf_or_login(client, seed, delivery):
    response = client.post(f"{PUBLIC}/u/{delivery['token']}")
    assert response.status_code == 200  # a page, not a redirect
    assert "You are unsubscribed" in response.get_data(as_text=True)
    assert suppressed(seed) == [(delivery["user"], "ann@example.org", "unsubscribe")]
    assert seed.get(Delivery, delivery["id"]).unsubscribed_at is not None
    again = client.get(f"{PUBLIC}/u/{delivery['token']}").get_data(as_text=True)
    assert "already unsubscribed" in again


def test_one_click_post_and_repeats_are_idempotent(client, seed, delivery):
    for _ in range(2):
        response = client.post(f"{PUBLIC}/u/{delivery['token']}", data="List-Unsubscribe=One-Click",
                               content_type="application/x-www-form-urlencoded")
        assert response.status_code == 200
    assert suppressed(seed) == [(delivery["user"], "ann@example.org", "unsubscribe")]


def test_stats_count_the_unsubscribe(client, seed, delivery):
    client.post(f"{PUBLIC}/u/{delivery['token']}", data={"List-Unsubscribe": "One-Click"})
    with seed.app.app_context():
        from panel.services.sending import campaign_stats

        campaign = db.session.scalar(select(Campaign))
        assert campaign_stats(campaign)["unsubscribed"] == 1


def test_the_address_is_left_out_of_the_next_campaign(client, app, seed, delivery):
    client.post(f"{PUBLIC}/u/{delivery['token']}")
    list_id = seed.query(lambda s: s.scalar(select(Campaign)).lists[0].id)
    more = seed.list(delivery["user"], "More", [{"email": "zed@example.org"}, {"email": "ann@example.org"}])
    campaign_id = seed.campaign(delivery["user"], [list_id, more])
    with app.app_context():
        total = start_campaign(db.session.get(User, delivery["user"]), db.session.get(Campaign, campaign_id))
        assert total == 1
        assert db.session.scalars(select(Delivery.email).where(Delivery.campaign_id == campaign_id)).all() == [
            "zed@example.org"
        ]


@pytest.mark.parametrize("token", ["1-0000000000", "1-0000000000000000", "1", "abc", "1-", "99999-deadbeef00"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_forged_tokens_are_404(client, seed, delivery, token, method):
    response = client.open(f"{PUBLIC}/u/{token}", method=method, data="List-Unsubscribe=One-Click",
                           content_type="application/x-www-form-urlencoded")
    assert response.status_code == 404
    assert "text/html" in response.content_type
    assert suppressed(seed) == []


def test_a_token_for_a_deleted_delivery_is_404(client, app, seed, delivery):
    with app.app_context():
        db.session.delete(db.session.get(Delivery, delivery["id"]))
        db.session.commit()
    assert client.get(f"{PUBLIC}/u/{delivery['token']}").status_code == 404


def test_an_unsubscribe_racing_another_suppression_of_the_address_adds_it_once(app, client, seed, delivery):
    """Another writer suppresses the address at the same moment (a second click in another worker,
    a bounce in the daemon): the click waits for it, adds nothing and answers as usual."""
    engine = create_engine(app.config["SQLALCHEMY_DATABASE_URI"])
    answers = []
    try:
        with engine.connect() as other:
            other.execute(insert(Suppression).values(user_id=delivery["user"], email="ann@example.org",
                                                     reason="hard_bounce", created_at=datetime.now()))
            click = threading.Thread(target=lambda: answers.append(client.post(f"{PUBLIC}/u/{delivery['token']}")))
            click.start()
            time.sleep(1)  # the click now waits for the other writer's transaction
            other.commit()
            click.join(60)
    finally:
        engine.dispose()
    assert [answer.status_code for answer in answers] == [200]
    assert suppressed(seed) == [(delivery["user"], "ann@example.org", "hard_bounce")]
    assert seed.get(Delivery, delivery["id"]).unsubscribed_at is not None


class RecordingAgent:
    """Stands in for an AgentClient: records each push, or fails every push while `down`."""

    def __init__(self) -> None:
        self.pushed: list[str] = []
        self.held: set[int] = set()
        self.down = False

    def call(self, path: str, payload: dict, **_: object) -> dict:
        if self.down:
            raise AgentError("agent unreachable")
        if path == "/v1/recall":  # gives back what it holds; knows nothing of the rest
            asked = payload["ids"]
            recalled = [i for i in asked if i in self.held]
            self.held -= set(recalled)
            return {"recalled": recalled, "not_recalled": {"unknown": [i for i in asked if i not in recalled]}}
        assert path == "/v1/batches"
        self.pushed += [item["email"] for item in payload["recipients"]]
        self.held |= {item["id"] for item in payload["recipients"]}
        return {}


@pytest.fixture
def running_campaign(app, seed, delivery):
    """A second campaign of the same user to Ann (who got the first letter) and Zed, started and
    not yet pushed."""
    list_id = seed.list(delivery["user"], "Again", [{"email": "ann@example.org", "name": "Ann"},
                                                         {"email": "zed@example.org", "name": "Zed"}])
    campaign_id = seed.campaign(delivery["user"], [list_id])
    with app.app_context():
        start_campaign(db.session.get(User, delivery["user"]), db.session.get(Campaign, campaign_id))
        db.session.commit()
    return campaign_id


def dispatch(app, agent: RecordingAgent) -> None:
    with app.app_context():
        dispatch_server(agent, db.session.scalar(select(Server)))


def letters(seed, campaign_id):
    return seed.query(lambda s: sorted((d.email, d.status, d.reply) for d in s.scalars(
        select(Delivery).where(Delivery.campaign_id == campaign_id))))


def test_a_running_campaign_does_not_send_to_an_address_unsubscribed_after_its_start(client, app, seed, delivery,
                                                                                     running_campaign, as_alice):
    assert client.post(f"{PUBLIC}/u/{delivery['token']}", data="List-Unsubscribe=One-Click",
                       content_type="application/x-www-form-urlencoded").status_code == 200
    agent = RecordingAgent()
    dispatch(app, agent)
    assert agent.pushed == ["zed@example.org"]
    assert letters(seed, running_campaign) == [("ann@example.org", "cancelled", SUPPRESSED_REPLY),
                                               ("zed@example.org", "queued", None)]
    with app.app_context():
        stats = campaign_stats(db.session.get(Campaign, running_campaign))
    assert (stats["queued"], stats["cancelled"]) == (1, 1)
    page = as_alice.get(f"/campaigns/{running_campaign}").get_data(as_text=True)
    assert re.search(r'data-stat="cancelled">1</span><span class="label">Not sent<', page)


def test_a_batch_left_open_by_a_failed_push_leaves_out_an_address_unsubscribed_meanwhile(client, app, seed, delivery,
                                                                                        running_campaign):
    agent = RecordingAgent()
    agent.down = True
    with pytest.raises(AgentError):
        dispatch(app, agent)  # a batch with a letter to Ann is persisted, its push failed
    tried = seed.query(lambda s: s.scalar(select(DispatchBatch.id).where(DispatchBatch.status == "open")))
    in_tried = seed.query(lambda s: s.scalars(select(Delivery.email).where(Delivery.batch_id == tried)).all())
    assert "ann@example.org" in in_tried
    client.post(f"{PUBLIC}/u/{delivery['token']}")
    agent.down = False
    dispatch(app, agent)
    assert agent.pushed == ["zed@example.org"]
    # The tried batch's letter to Ann may be on the agent (the failed push's answer may have been
    # lost): not pushed again and not cancelled blindly, but recalled; the agent never got it, so it
    # is cancelled. A letter to Ann in a batch never tried was cancelled before its push.
    assert seed.query(lambda s: s.scalar(select(Delivery.status).where(
        Delivery.batch_id == tried, Delivery.email == "ann@example.org"))) == "queued"
    with app.app_context():
        assert recall_suppressed(agent, db.session.scalar(select(Server)), {}) == 1
    assert seed.query(lambda s: s.scalars(select(Delivery.status).where(
        Delivery.email == "ann@example.org")).all()) == ["cancelled", "cancelled"]
    assert [status for email, status, _ in letters(seed, running_campaign) if email == "zed@example.org"] == ["queued"]


def test_an_address_suppressed_while_its_letter_waits_on_the_agent_is_recalled(client, app, seed, delivery,
                                                                               running_campaign):
    agent = RecordingAgent()
    dispatch(app, agent)
    assert sorted(agent.pushed) == ["ann@example.org", "ann@example.org", "zed@example.org"]
    client.post(f"{PUBLIC}/u/{delivery['token']}")
    with app.app_context():
        assert recall_suppressed(agent, db.session.scalar(select(Server)), {}) == 2  # both letters to Ann
    assert letters(seed, running_campaign) == [("ann@example.org", "cancelled", SUPPRESSED_REPLY),
                                               ("zed@example.org", "queued", None)]
    assert len(agent.held) == 1  # Zed's letter stays with the agent


def test_a_batch_whose_every_address_was_suppressed_is_not_pushed(client, app, seed, delivery):
    list_id = seed.list(delivery["user"], "Only Ann", [{"email": "ann@example.org", "name": "Ann"}])
    campaign_id = seed.campaign(delivery["user"], [list_id])
    with app.app_context():
        start_campaign(db.session.get(User, delivery["user"]), db.session.get(Campaign, campaign_id))
        db.session.commit()
    client.post(f"{PUBLIC}/u/{delivery['token']}")
    agent = RecordingAgent()
    dispatch(app, agent)
    assert agent.pushed == []
    assert letters(seed, campaign_id) == [("ann@example.org", "cancelled", SUPPRESSED_REPLY)]


def mailed(app, token: str | None, seq: int = 1) -> None:
    """What the daemon does with a message the agent got at unsubscribe+<token>@<bounce domain>."""
    with app.app_context():
        store_bounces(db.session.scalar(select(Server)), [
            {"seq": seq, "kind": "unsubscribe", "token": token,
             "raw": "From: Ann <ann@example.org>\nTo: unsubscribe+x@bounces.example.com\nSubject: unsubscribe\n\n\n"}])
        db.session.commit()


def test_a_mail_to_the_letters_unsubscribe_address_unsubscribes_it(app, seed, delivery):
    dispatch(app, RecordingAgent())  # the letter is given to the server, whose agent then gets the mail
    mailed(app, delivery["token"])
    assert suppressed(seed) == [(delivery["user"], "ann@example.org", "unsubscribe")]
    assert seed.get(Delivery, delivery["id"]).unsubscribed_at is not None
    (message,) = seed.query(lambda s: [(m.kind, m.reason, m.recipient, m.classified_at is not None)
                                       for m in s.scalars(select(BounceMessage))])
    assert message == ("unsubscribe", "unsubscribe", "ann@example.org", True)
    with app.app_context():
        assert campaign_stats(db.session.scalar(select(Campaign)))["unsubscribed"] == 1
    mailed(app, delivery["token"], seq=2)  # sent twice: changes nothing
    assert suppressed(seed) == [(delivery["user"], "ann@example.org", "unsubscribe")]


@pytest.mark.parametrize("token", ["1-0000000000", "1-0000000000000000", "abc", None])
def test_a_mail_to_a_forged_unsubscribe_address_unsubscribes_nobody(app, seed, delivery, token):
    mailed(app, token)
    assert suppressed(seed) == []
    assert seed.get(Delivery, delivery["id"]).unsubscribed_at is None


def test_unsubscribe_mails_kept_before_an_upgrade_are_applied_by_the_daemon(app, seed, delivery):
    with app.app_context():
        db.session.add(BounceMessage(server_id=db.session.scalar(select(Server.id)), delivery_id=delivery["id"],
                                     kind="unsubscribe", token=delivery["token"], raw="Subject: stop\n\n"))
        db.session.commit()
        finish_campaigns()
    assert suppressed(seed) == [(delivery["user"], "ann@example.org", "unsubscribe")]


def test_one_click_post_in_the_production_configuration(database_url, seed, delivery):
    """The app as production builds it (no TESTING, CSRF protection on by default): the one-click
    POST carries no cookie, no form token and no login, and still unsubscribes with a page."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "SECRET_KEY": SECRET, "PUBLIC_URL": PUBLIC})
    try:
        assert app.config["WTF_CSRF_ENABLED"] is not False and not app.testing
        client = app.test_client(use_cookies=False)
        # the protection is live: a form of the panel posted without its token is refused
        assert client.post("/login", data={"email": "a@example.org", "password": "x"}).status_code == 400
        response = client.post(f"{PUBLIC}/u/{delivery['token']}", data="List-Unsubscribe=One-Click",
                               content_type="application/x-www-form-urlencoded")
        assert response.status_code == 200 and "Location" not in response.headers
        assert "You are unsubscribed" in response.get_data(as_text=True)
        assert "Set-Cookie" not in response.headers
        assert suppressed(seed) == [(delivery["user"], "ann@example.org", "unsubscribe")]
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def test_get_and_head_never_unsubscribe(client, seed, delivery):
    """Mail scanners and link previewers fetch every link: only a POST unsubscribes."""
    for method in ("GET", "HEAD", "GET"):
        assert client.open(f"{PUBLIC}/u/{delivery['token']}", method=method).status_code == 200
    assert suppressed(seed) == []
    assert seed.get(Delivery, delivery["id"]).unsubscribed_at is None
