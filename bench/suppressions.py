"""The Suppressions page with 1,000,000 suppressed addresses (one user; filled by set-based SQL),
on SQLite and on PostgreSQL: the first page, a page deep into the list (keyset: `after`), a
search by the start of an address and one by domain, 20 requests each after a warm-up, through
the Flask app in-process (its test client), logged in.

Prints one JSON line per page and backend, then the headline:
{"bench": "suppressions", "entries": 1000000, "<backend>_<page>_p95_ms": …}
Usage: .venv/bin/python bench/suppressions.py [ENTRIES] [sqlite] [postgresql]
"""

from __future__ import annotations

import json
import sys

from _panel_db import analyze, backends_from_argv, fill_suppressions, make_user_and_server, panel_app
from pages import timed


def main() -> int:
    entries = next((int(arg) for arg in sys.argv[1:] if arg.isdigit()), 1_000_000)
    headline = {"bench": "suppressions", "entries": entries}
    for backend in backends_from_argv():
        with panel_app(backend) as app, app.app_context():
            user_id = make_user_and_server(app)
            half = entries // 2
            fill_suppressions(backend, user_id, half, domain="example.org")
            fill_suppressions(backend, user_id, entries - half, start=half + 1, domain="example.net")
            analyze(backend)
            client = app.test_client()
            with client.session_transaction() as session:
                session["_user_id"] = str(user_id)
                session["_fresh"] = True
            deep = f"u{half // 2}@example.org"
            for page, url in (("first", "/suppressions/"), ("deep", f"/suppressions/?after={deep}"),
                              ("prefix", "/suppressions/?q=u4242"), ("domain", "/suppressions/?q=@example.net"),
                              ("domain_deep", f"/suppressions/?q=example.net&after=u{half + half // 2}@example.net")):
                figures = timed(client, url)
                print(json.dumps({"bench": "suppressions", "database": backend, "page": page, "url": url,
                                  "entries": entries, **figures}), flush=True)
                headline[f"{backend}_{page}_p95_ms"] = figures["p95_ms"]
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
