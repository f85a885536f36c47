"""Resolving a campaign's recipients: 1,000,000 addresses on two allow lists (900,000 + 200,000,
100,000 on both), 100,000 of them on a deny list and another 100,000 suppressed, on SQLite
and on PostgreSQL. The lists are filled by set-based SQL; what is timed is start_campaign
(allow − deny − suppressed, each address once, into deliveries spread over two IPs) and its
commit, as the Start button and the API do it.

Prints one JSON line per backend, then the headline:
{"bench": "resolve", "allowed": 1000000, "denied": 100000, "suppressed": 100000,
 "sqlite_seconds": …, "postgresql_seconds": …}
Usage: .venv/bin/python bench/resolve.py [ALLOWED] [sqlite] [postgresql]
"""

from __future__ import annotations

import json
import sys
import time

from _panel_db import analyze, backends_from_argv, fill_list, fill_suppressions, make_user_and_server, panel_app


def main() -> int:
    allowed = next((int(arg) for arg in sys.argv[1:] if arg.isdigit()), 1_000_000)
    tenth = allowed // 10
    from panel.extensions import db
    from panel.models import Campaign, User
    from panel.services.campaigns import CampaignInput, save_campaign
    from panel.services.lists import create_list
    from panel.services.sending import start_campaign

    headline = {"bench": "resolve", "allowed": allowed, "denied": tenth, "suppressed": tenth}
    for backend in backends_from_argv():
        with panel_app(backend) as app, app.app_context():
            user_id = make_user_and_server(app)
            user = db.session.get(User, user_id)
            first, second, deny = (create_list(user, name) for name in ("allow 1", "allow 2", "deny"))
            started = time.perf_counter()
            fill_list(backend, first.id, allowed - tenth)  # u1 … u900000
            fill_list(backend, second.id, 2 * tenth, start=allowed - 2 * tenth + 1)  # u800001 … u1000000
            fill_list(backend, deny.id, tenth)  # u1 … u100000
            fill_suppressions(backend, user_id, tenth, start=tenth + 1)  # u100001 … u200000
            analyze(backend)
            filled = time.perf_counter() - started
            campaign = save_campaign(user, CampaignInput(
                name="bench", subject="Hello", from_email="news@example.com", from_name=None, reply_to=None,
                text="Hello {{ email }}\nUnsubscribe: {{ unsubscribe_url }}\n", html=None, encoding="quoted-printable",
                lists=[first.id, second.id], exclude_lists=[deny.id], servers=[]))
            db.session.commit()
            started = time.perf_counter()
            total = start_campaign(user, campaign)
            db.session.commit()
            seconds = time.perf_counter() - started
            assert total == allowed - 2 * tenth, total
            assert db.session.get(Campaign, campaign.id).total == total
            line = {"bench": "resolve", "database": backend, "allowed": allowed, "denied": tenth,
                    "suppressed": tenth, "recipients": total, "seconds": round(seconds, 2),
                    "fill_seconds": round(filled, 1)}
            print(json.dumps(line), flush=True)
            headline[f"{backend}_seconds"] = line["seconds"]
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
