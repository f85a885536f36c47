"""Page times with 10,000,000 recipients in the database: ten lists of 1,000,000 (filled by
set-based SQL: generate_series on PostgreSQL, a recursive CTE on SQLite) and a campaign sent
to one of them (1,000,000 letters, a mix of outcomes written by SQL as the daemon would), on
SQLite and on PostgreSQL. The lists page, the dashboard (and its API twin) and the campaign page are fetched 20 times each by
a logged-in user through the Flask app in-process (its test client), after one warm-up.
The campaign's letters go to a mix of domains (gmail/yahoo/hotmail and 20,000 others) over two
IPs, with one outcome event each spread over 10,000 minutes: the page's live figures
(/campaigns/<id>/figures) and the API's timeline and domain breakdown are timed too.

Prints one JSON line per page and backend, then the headline:
{"bench": "pages", "recipients": 10000000, "sqlite_lists_p95_ms", "sqlite_campaign_p95_ms", "postgresql_…"}
Usage: .venv/bin/python bench/pages.py [RECIPIENTS] [sqlite] [postgresql]
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from _panel_db import analyze, backends_from_argv, fill_list, make_user_and_server, panel_app

LISTS = 10
REQUESTS = 20


def timed(client, url: str, headers: dict | None = None) -> dict:
    client.get(url, headers=headers)  # warm-up
    times = []
    for _ in range(REQUESTS):
        started = time.perf_counter()
        response = client.get(url, headers=headers)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.status_code
    times.sort()
    return {"p50_ms": round(statistics.median(times), 1), "p95_ms": round(times[int(0.95 * len(times)) - 1], 1),
            "max_ms": round(times[-1], 1)}


def main() -> int:
    recipients = next((int(arg) for arg in sys.argv[1:] if arg.isdigit()), 10_000_000)
    per_list = recipients // LISTS
    from sqlalchemy import text

    from panel.extensions import db
    from panel.models import User
    from panel.services.campaigns import CampaignInput, save_campaign
    from panel.services.lists import create_list
    from panel.services.sending import start_campaign
    from panel.services.users import create_api_token

    headline = {"bench": "pages", "recipients": per_list * LISTS, "campaign_letters": per_list}
    for backend in backends_from_argv():
        with panel_app(backend) as app, app.app_context():
            user_id = make_user_and_server(app)
            user = db.session.get(User, user_id)
            started = time.perf_counter()
            lists = [create_list(user, f"list {n}") for n in range(LISTS)]
            for n, item in enumerate(lists):
                fill_list(backend, item.id, per_list, start=n * per_list + 1)
                db.session.commit()
            campaign = save_campaign(user, CampaignInput(
                name="bench", subject="Hello", from_email="news@example.com", text="Hello {{ email }}\n{{ unsubscribe_url }}",
                lists=[lists[0].id]))
            start_campaign(user, campaign)
            # A campaign under way: outcomes as the daemon records them.
            server_id = db.session.scalar(text("SELECT min(id) FROM servers"))
            db.session.execute(text(
                "UPDATE deliveries SET status = CASE id % 10 WHEN 0 THEN 'pending' WHEN 1 THEN 'queued' "
                "WHEN 2 THEN 'sent' WHEN 3 THEN 'deferred' WHEN 4 THEN 'failed' ELSE 'delivered' END, "
                "bounce = CASE id % 50 WHEN 4 THEN 'hard' WHEN 14 THEN 'soft' END, "
                "bounce_reason = CASE id % 50 WHEN 4 THEN 'userunknown' WHEN 14 THEN 'mailboxfull' END, "
                "email = 'r' || id || '@' || CASE WHEN id % 10 < 3 THEN 'gmail.com' WHEN id % 10 < 5 THEN 'yahoo.com' "
                "WHEN id % 10 < 6 THEN 'hotmail.com' ELSE 'd' || (id % 20000) || '.example' END, "
                f"server_id = CASE WHEN id % 10 = 0 THEN NULL ELSE {server_id} END, "
                "source_ip = CASE WHEN id % 10 = 0 THEN NULL WHEN id % 2 = 0 THEN '192.0.2.10' ELSE '192.0.2.11' END "
                f"WHERE campaign_id = {campaign.id}"))
            # One outcome event a letter, as Exim logged them over 10,000 minutes.
            at = ("datetime('2026-12-01', '+' || (d.id % 10000) || ' minutes')" if backend == "sqlite"
                  else "TIMESTAMP '2026-12-01' + (d.id % 10000) * INTERVAL '1 minute'")
            db.session.execute(text(
                f"INSERT INTO delivery_events (delivery_id, status, code, created_at) SELECT d.id, d.status, 250, {at} "
                f"FROM deliveries d WHERE d.campaign_id = {campaign.id} AND d.status NOT IN ('pending', 'queued')"))
            token = create_api_token(user, "bench")
            db.session.commit()
            analyze(backend)
            filled = round(time.perf_counter() - started, 1)
            client = app.test_client()
            with client.session_transaction() as session:
                # The session names the user and its session generation (services/users.load_session_user).
                session["_user_id"] = f"{user_id}:{user.session_generation}"
                session["_fresh"] = True
            api = {"Authorization": f"Bearer {token}"}
            for page, url, headers in (
                    ("lists", "/lists/", None), ("campaign", f"/campaigns/{campaign.id}", None),
                    ("dashboard", "/", None), ("api_dashboard", "/api/v1/dashboard", api),
                    ("campaign_stats", f"/campaigns/{campaign.id}/stats", None),
                    ("campaign_figures", f"/campaigns/{campaign.id}/figures", None),
                    ("api_timeline", f"/api/v1/campaigns/{campaign.id}/timeline", api),
                    ("api_breakdown_domain", f"/api/v1/campaigns/{campaign.id}/breakdown?by=domain", api)):
                figures = timed(client, url, headers)
                print(json.dumps({"bench": "pages", "database": backend, "page": page, "url": url,
                                  "recipients": per_list * LISTS, "fill_seconds": filled, **figures}), flush=True)
                headline[f"{backend}_{page}_p50_ms"] = figures["p50_ms"]
                headline[f"{backend}_{page}_p95_ms"] = figures["p95_ms"]
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
