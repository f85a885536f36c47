"""IP warm-up on the panel (issue 9, point 6): a source IP put on a schedule (the default one or
its own) through the API and the server page; the daemon pushes the plan to a real agent, whose
ping reports what each provider got today; the page and the API show the day and what is left."""

from __future__ import annotations

import re
from contextlib import closing
from datetime import datetime, timezone

import pytest
from cryptography.fernet import Fernet

from panel.daemon.loop import DaemonState
from panel.extensions import db
from panel.models import Server
from panel.services import server_config
from tests.panel.agents import daemon_round
from tests.panel.test_outcome_epoch import register
from worker_agent import remote_config
from worker_agent.queue import QueueDB
from worker_agent.warmup import DEFAULT_DAILY

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

IP = "127.0.0.2"


@pytest.fixture
def app_config() -> dict:
    return {"ALLOWED_HOST_NETWORKS": "127.0.0.0/8"}  # the agent listens on loopback


def config_version(app, server_id: int) -> int:
    with app.app_context():
        return db.session.get(Server, server_id).config_version


def pushed_warmup(app, server_id: int) -> list[dict]:
    with app.app_context():
        return server_config.agent_config(db.session.get(Server, server_id)).get("warmup", [])


def test_the_api_puts_an_ip_on_the_default_schedule_and_refuses_bad_input(app, seed, alice, client):
    server_id = register(app, alice, 1, Fernet.generate_key().decode(), "f" * 64)
    headers = {"Authorization": f"Bearer {seed.token(alice)}"}
    url = f"/api/v1/servers/{server_id}/warmup"
    assert client.get(url, headers=headers).get_json() == {"ips": {IP: {"enabled": False, "start": None,
                                                                        "schedule": None, "day": None, "days": None}}}
    assert pushed_warmup(app, server_id) == []
    before = config_version(app, server_id)
    body = client.put(url, headers=headers, json={"ips": {IP: {"enabled": True}}}).get_json()
    item = body["ips"][IP]
    assert item["enabled"] and item["day"] == 1 and item["days"] == 30 and item["schedule"] is None
    assert config_version(app, server_id) == before + 1
    (plan,) = pushed_warmup(app, server_id)
    assert plan["source_ip"] == IP and plan["day_seconds"] == 86400
    assert [step["limits"]["*"] for step in plan["schedule"]] == list(DEFAULT_DAILY)
    assert abs(plan["start"] - datetime.now(timezone.utc).timestamp()) < 60
    remote_config.parse({"version": 1, "warmup": [plan]}, (IP,))  # what the agent takes

    own = [{"day": 1, "limits": {"*": 20, "google": 10}}, {"day": 3, "limits": {"*": 40}}]
    body = client.put(url, headers=headers, json={"ips": {IP: {"schedule": own, "start": "2026-12-01"}}}).get_json()
    assert body["ips"][IP]["schedule"] == own and body["ips"][IP]["start"] == "2026-12-01T00:00:00Z"
    assert pushed_warmup(app, server_id)[0]["schedule"] == own

    version = config_version(app, server_id)
    for bad, message in [
        ({"ips": {"192.0.2.1": {"enabled": True}}}, "not a source IP of this server"),
        ({"ips": {IP: {"schedule": [{"day": 2, "limits": {"*": 5}}]}}}, "the first step must be day 1"),
        ({"ips": {IP: {"schedule": [{"day": 1, "limits": {"nosuch": 5}}]}}}, "nosuch"),
        ({"ips": {IP: {"start": "yesterday"}}}, "start"),
        ({"ips": {IP: {"enabled": "yes"}}}, "enabled must be true or false"),
        ({"ips": {IP: {"colour": 1}}}, "unknown field"),
        ({"ips": []}, "ips must be an object"),
    ]:
        response = client.put(url, headers=headers, json=bad)
        assert response.status_code == 400, bad
        assert message in response.get_json()["error"], response.get_json()
    assert config_version(app, server_id) == version  # nothing half-written
    assert pushed_warmup(app, server_id)[0]["schedule"] == own

    client.put(url, headers=headers, json={"ips": {IP: {"enabled": False}}})
    assert pushed_warmup(app, server_id) == []


def test_the_page_edits_the_schedule_as_text(app, seed, alice, as_alice):
    server_id = register(app, alice, 1, Fernet.generate_key().decode(), "f" * 64)
    with app.app_context():
        ip_id = db.session.get(Server, server_id).ips[0].id
    page = as_alice.get(f"/servers/{server_id}").get_data(as_text=True)
    assert 'id="warmup"' in page and "not warming up" in page
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)[1]
    url = f"/servers/{server_id}/ips/{ip_id}/warmup"
    response = as_alice.post(url, data={"csrf_token": token, "enabled": "y", "start": "2026-12-01",
                                        "schedule": "1: 50, google 20\n3: 200\n"})
    assert response.status_code == 302
    assert pushed_warmup(app, server_id)[0]["schedule"] == [{"day": 1, "limits": {"*": 50, "google": 20}},
                                                            {"day": 3, "limits": {"*": 200}}]
    response = as_alice.post(url, data={"csrf_token": token, "enabled": "y", "start": "2026-12-01",
                                        "schedule": "1: 50\n1: 60\n"})
    assert response.status_code == 400
    assert "give the steps by rising day" in response.get_data(as_text=True)
    # an empty schedule is the default one
    as_alice.post(url, data={"csrf_token": token, "enabled": "y", "start": "", "schedule": ""})
    assert len(pushed_warmup(app, server_id)[0]["schedule"]) == 30


def test_the_agent_reports_what_is_left_today_and_the_page_and_api_show_it(app, seed, alice, agent, as_alice,
                                                                            client):
    server_id = register(app, alice, agent.port, agent.key, agent.fingerprint)
    headers = {"Authorization": f"Bearer {seed.token(alice)}"}
    client.put(f"/api/v1/servers/{server_id}/warmup", headers=headers, json={"ips": {IP: {"enabled": True}}})
    daemon_round(app, DaemonState())  # pushes the plan
    daemon_round(app, DaemonState())
    (plan,) = pushed_warmup(app, server_id)
    with closing(QueueDB(agent.root / "data" / "queue.sqlite3")) as queue:
        assert remote_config.warmup_plans(remote_config.stored(queue))[IP].start == plan["start"]
        queue.add_warmup_sent([((IP, "google", int(plan["start"])), 47), ((IP, "yandex", int(plan["start"])), 50)])
    daemon_round(app, DaemonState(), )
    (item,) = client.get(f"/api/v1/servers/{server_id}", headers=headers).get_json()["warmup"]
    assert item["source_ip"] == IP and item["day"] == 1 and item["days"] == 30
    assert item["providers"] == [{"provider": "google", "limit": 50, "sent": 47, "left": 3},
                                 {"provider": "yandex", "limit": 50, "sent": 50, "left": 0}]
    page = as_alice.get(f"/servers/{server_id}").get_data(as_text=True)
    assert "day 1 of 30" in page
    assert re.search(r'data-warmup="127.0.0.2 google".*?3 of 50 left', page, re.S)
    assert re.search(r'data-warmup="127.0.0.2 yandex".*?0 of 50 left', page, re.S)


def test_a_bad_report_is_left_out_and_breaks_nothing(app, seed, alice):
    server_id = register(app, alice, 1, Fernet.generate_key().decode(), "f" * 64)
    with app.app_context():
        from panel.services import warmup

        server = db.session.get(Server, server_id)
        warmup.set_warmup(server, server.ips[0], warmup.WarmupInput(True))
        warmup.record(server, "not a list")
        warmup.record(server, ["x", {"source_ip": IP, "day": "one"}, {"source_ip": IP, "day": 1, "providers": [
            {"provider": "google", "sent": -1}, {"provider": "yahoo", "sent": 7, "limit": 50}, "y"]}])
        (item,) = warmup.current(server)
        assert item["reported"] and item["providers"] == [{"provider": "yahoo", "limit": 50, "sent": 7, "left": 43}]


def test_the_daemon_gives_no_new_letters_to_an_ip_whose_agent_holds_some_for_the_next_day(app, seed, alice):
    from panel.daemon.dispatch import _take_letters
    from panel.models import Campaign, Delivery, User
    from panel.services import warmup
    from panel.services.sending import start_campaign
    from sqlalchemy import func, select

    server_id = seed.server(alice, ips=("192.0.2.10", "192.0.2.11"))
    list_id = seed.list(alice, "readers", [{"email": f"r{n}@example.org", "name": "R"} for n in range(40)])
    campaign_id = seed.campaign(alice, [list_id])

    def take() -> dict[str, int]:
        _take_letters(db.session.get(Campaign, campaign_id), db.session.get(Server, server_id), 20)
        return dict(db.session.execute(select(Delivery.source_ip, func.count()).where(
            Delivery.campaign_id == campaign_id, Delivery.source_ip.is_not(None)).group_by(Delivery.source_ip)).all())

    with app.app_context():
        start_campaign(db.session.get(User, alice), db.session.get(Campaign, campaign_id))
        server = db.session.get(Server, server_id)
        warmup.set_warmup(server, server.ips[0], warmup.WarmupInput(True))
        warmup.record(server, [{"source_ip": "192.0.2.10", "day": 1, "held": 5, "providers": []}])
        db.session.commit()
        assert take() == {"192.0.2.11": 20}  # the warming IP's day is used up for some provider
        server = db.session.get(Server, server_id)
        warmup.record(server, [{"source_ip": "192.0.2.10", "day": 1, "held": 0, "providers": []}])
        db.session.commit()
        assert take() == {"192.0.2.10": 10, "192.0.2.11": 30}  # none held: it gets its share again
