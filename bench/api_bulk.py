"""API bulk add speed: POST /api/v1/lists/<id>/recipients with 100,000 rows a request, as a
CSV body and as a JSON array, through the Flask app in-process (its test client: the whole
request path — authentication, the rate limit, parsing, checking, chunked inserts, the
commit — without gunicorn's socket), on SQLite and on PostgreSQL. The same CSV is then sent
again: nothing is added and every row is reported as a duplicate.

Prints one JSON line per request, then the headline:
{"bench": "api_bulk", "rows": N, "sqlite_csv_rows_per_s", "sqlite_json_rows_per_s", "postgresql_…"}
Usage: .venv/bin/python bench/api_bulk.py [ROWS] [sqlite] [postgresql]
"""

from __future__ import annotations

import json
import sys
import time

from _panel_db import backends_from_argv, panel_app


def main() -> int:
    rows = next((int(arg) for arg in sys.argv[1:] if arg.isdigit()), 100_000)
    from panel.extensions import db
    from panel.services.users import create_api_token, create_user

    csv_body = ("email,first_name,city\n" + "".join(f"user{i}@example{i % 997}.org,First{i},City {i % 300}\n"
                                                    for i in range(rows))).encode()
    json_body = json.dumps([{"email": f"user{i}@example{i % 997}.org", "first_name": f"First{i}",
                             "city": f"City {i % 300}"} for i in range(rows)]).encode()
    headline = {"bench": "api_bulk", "rows": rows, "through": "Flask test client (in-process, no gunicorn)"}
    for backend in backends_from_argv():
        with panel_app(backend, API_MAX_ROWS=max(rows, 100_000)) as app, app.app_context():
            token = create_api_token(create_user("bench@example.com", "bench password"))
            db.session.commit()
            client = app.test_client()
            headers = {"Authorization": f"Bearer {token}"}

            def post(url, body, content_type):
                started = time.perf_counter()
                response = client.post(url, data=body, content_type=content_type, headers=headers)
                seconds = time.perf_counter() - started
                assert response.status_code == 200, response.get_data(as_text=True)[:300]
                return response.get_json(), seconds

            for kind, body, content_type in (("csv", csv_body, "text/csv"), ("json", json_body, "application/json"),
                                             ("csv_again", csv_body, "text/csv")):
                if kind != "csv_again":
                    list_id = client.post("/api/v1/lists", json={"name": kind}, headers=headers).get_json()["id"]
                report, seconds = post(f"/api/v1/lists/{list_id}/recipients", body, content_type)
                line = {"bench": "api_bulk", "database": backend, "kind": kind, "rows": rows,
                        "added": report["added"], "duplicates": report["duplicates"],
                        "rejected": len(report["rejected"]), "seconds": round(seconds, 2),
                        "rows_per_s": round(rows / seconds)}
                print(json.dumps(line), flush=True)
                headline[f"{backend}_{kind}_rows_per_s"] = line["rows_per_s"]
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
