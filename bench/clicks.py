"""The click redirect (`GET /c/<token>`) under load: wrk on loopback against the panel in gunicorn.

A campaign of RECIPIENTS letters with three links is started on a fresh database; wrk then
requests masked links of its letters — a pool of genuine tokens (every letter × link in turn,
shuffled), as the agents put them into letters — for SECONDS over CONNECTIONS keep-alive
connections. Every answer must be the 302 to the link's target; afterwards the database must hold
exactly as many clicks as wrk sent requests (counted by the Lua script as it writes them: the
requests still in flight when wrk stops are answered and counted by the panel but not in wrk's own
"requests" figure, which is printed too), with every letter's clicks per link adding up.

wrk's requests all come from one address, as an office's would: past the address's click budget
each click is counted on its letter's repeat budget (panel/services/click_limits.py: 10 an hour per
letter in each worker), which 10,000 letters keep every click within for runs of up to a minute or
so (at ~2,700 a second a letter is clicked about every 4 s, spread over the workers).

Prints one JSON line per backend, then the headline:
{"bench": "clicks", "sqlite_rps": …, "sqlite_counted": true, …, "load_avg": […]}
Usage: .venv/bin/python bench/clicks.py [SECONDS] [sqlite] [postgresql]
Environment: CLICKS_WORKERS (gunicorn processes, default 3), CLICKS_THREADS (threads each, 4),
CLICKS_CONNECTIONS (wrk, 32), CLICKS_RECIPIENTS (10000).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from _panel_db import ROOT, backends_from_argv, fill_list, make_user_and_server, panel_app

from devserver.ports import free_port, wait_listening

WRK = "/usr/bin/wrk"
SECRET = "bench"
LINKS = ("https://shop.example.com/sale?a=1&b=2", "https://blog.example.com/post", "https://example.com/")
POOL = 20_000  # distinct tokens wrk cycles through

LUA = """
local paths = {%(paths)s}
sent = 0
bad = 0
local at = 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  at = math.random(#paths)
end

function request()
  at = at %% #paths + 1
  sent = sent + 1
  return wrk.format("GET", paths[at])
end

function response(status, headers, body)
  if status ~= 302 then bad = bad + 1 end
end

function done(summary, latency, requests)
  local total, wrong = 0, 0
  for _, thread in ipairs(threads) do
    total = total + thread:get("sent")
    wrong = wrong + thread:get("bad")
  end
  io.write(string.format("MAILFLEET sent=%%d bad=%%d\\n", total, wrong))
end
"""




def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live children (gunicorn's master and workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid] + [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for each in pids:
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def prepare(backend: str, app, recipients: int) -> tuple[int, list[str]]:
    """A started campaign of `recipients` letters with LINKS; its id and a shuffled pool of click paths."""
    from sqlalchemy import select

    from panel.extensions import db
    from panel.models import CampaignLink, Delivery, User
    from panel.services.campaigns import CampaignInput, save_campaign
    from panel.services.lists import create_list
    from panel.services.sending import start_campaign
    from worker_agent.tracking import campaign_key, make_token

    user_id = make_user_and_server(app)
    user = db.session.get(User, user_id)
    people = create_list(user, "people")
    fill_list(backend, people.id, recipients)
    db.session.commit()
    html = "".join(f'<p><a href="{url.replace("&", "&amp;")}">link {n}</a></p>' for n, url in enumerate(LINKS))
    html += '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
    campaign = save_campaign(user, CampaignInput(
        name="clicks", subject="Hello", from_email="news@example.com", html=html, lists=[people.id]))
    db.session.commit()
    start_campaign(user, campaign)
    db.session.commit()
    stored = list(db.session.scalars(select(CampaignLink.url).where(CampaignLink.campaign_id == campaign.id)
                                      .order_by(CampaignLink.idx)))
    assert stored == list(LINKS), stored
    key = campaign_key(SECRET, campaign.id)
    deliveries = list(db.session.scalars(select(Delivery.id).where(Delivery.campaign_id == campaign.id)))
    pairs = [(d, n) for d in deliveries for n in range(len(LINKS))]
    random.Random(7).shuffle(pairs)
    return campaign.id, [f"/c/{make_token(key, campaign.id, d, n)}" for d, n in pairs[:POOL]]


def run(backend: str, seconds: int) -> dict:
    workers = int(os.environ.get("CLICKS_WORKERS", "3"))
    threads = int(os.environ.get("CLICKS_THREADS", "4"))
    worker_class = os.environ.get("CLICKS_WORKER_CLASS", "gthread")
    connections = int(os.environ.get("CLICKS_CONNECTIONS", "32"))
    recipients = int(os.environ.get("CLICKS_RECIPIENTS", "10000"))
    from sqlalchemy import func, select

    from panel.extensions import db
    from panel.models import Click

    with panel_app(backend) as app, tempfile.TemporaryDirectory(prefix="mailfleet-clicks-") as tmp:
        with app.app_context():
            campaign_id, paths = prepare(backend, app, recipients)
            db.session.remove()
        script = Path(tmp) / "clicks.lua"
        script.write_text(LUA % {"paths": ",\n".join(json.dumps(p) for p in paths)})
        port = free_port()
        env = {**os.environ, "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"], "MAILFLEET_SECRET_KEY": SECRET,
               "MAILFLEET_INSTANCE_PATH": tmp, "PYTHONPATH": str(ROOT),
               "MAILFLEET_PUBLIC_URL": f"http://127.0.0.1:{port}"}  # the host the links name (wrk's Host)
        gunicorn = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", str(workers), "-k", worker_class, "--threads", str(threads),
             "--keep-alive", "30",
             "-b", f"127.0.0.1:{port}", "--log-level", "warning", "panel:create_app()"],
            cwd=ROOT, env=env, start_new_session=True,
        )
        try:
            wait_listening(gunicorn, port, "gunicorn")
            for _ in range(workers * 4):  # every worker has its app loaded
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/c/x", timeout=30)
                except urllib.error.HTTPError as exc:
                    assert exc.code == 404, exc
            warm = subprocess.run([WRK, "-t1", "-c4", "-d2s", f"http://127.0.0.1:{port}/c/x"],
                                  capture_output=True, text=True, check=True)  # 404s: imports, connections
            assert "Non-2xx" in warm.stdout, warm.stdout
            load_before = os.getloadavg()
            cpu_before = cpu_seconds(gunicorn.pid)
            result = subprocess.run(
                [WRK, "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
                 f"http://127.0.0.1:{port}"],
                capture_output=True, text=True, check=True,
            )
            load_after = os.getloadavg()
            time.sleep(1)  # the requests in flight when wrk stopped
            panel_cpu = cpu_seconds(gunicorn.pid) - cpu_before
        finally:
            gunicorn.send_signal(signal.SIGTERM)  # graceful: workers finish what they hold
            gunicorn.wait(timeout=60)
        out = result.stdout
        sent, bad = map(int, re.search(r"MAILFLEET sent=(\d+) bad=(\d+)", out).groups())
        sent -= 1  # wrk calls request() once before the run to check what the script makes (never sent)
        answered = int(re.search(r"(\d+) requests in", out).group(1))
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        errors = re.search(r"Socket errors: (.*)", out)
        p50 = re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE).group(1)
        p99 = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE).group(1)
        with app.app_context():
            counted = db.session.scalar(select(func.count()).select_from(Click).where(Click.campaign_id == campaign_id))
            per_link = dict(db.session.execute(
                select(Click.link_idx, func.count()).where(Click.campaign_id == campaign_id).group_by(Click.link_idx)
            ).all())
            db.session.remove()
        figures = {
            "bench": "clicks", "backend": backend, "seconds": seconds, "gunicorn_workers": workers, "worker_class": worker_class,
            "threads": threads, "connections": connections, "rps": round(rps), "wrk_answered": answered,
            "wrk_sent": sent, "db_clicks": counted, "per_link": per_link, "not_302": bad,
            "socket_errors": errors.group(1) if errors else None,
            "panel_cpu_ms_per_click": round(panel_cpu * 1000 / max(sent, 1), 3), "latency_p50": p50, "latency_p99": p99,
            "load_avg_before": [round(x, 2) for x in load_before], "load_avg_after": [round(x, 2) for x in load_after],
        }
        print(json.dumps(figures), flush=True)
        assert bad == 0, f"{bad} answers were not the 302"
        assert errors is None, f"wrk socket errors: {errors.group(1)}"
        assert counted == sent, f"{sent} clicks sent, {counted} counted"
        assert sum(per_link.values()) == counted and set(per_link) <= set(range(len(LINKS)))
        return figures


def main() -> int:
    seconds = next((int(arg) for arg in sys.argv[1:] if arg.isdigit()), 15)
    headline: dict = {"bench": "clicks", "target_rps": 2000}
    for backend in backends_from_argv():
        figures = run(backend, seconds)
        headline[f"{backend}_rps"] = figures["rps"]
        headline[f"{backend}_clicks"] = figures["db_clicks"]
        headline[f"{backend}_counted"] = figures["db_clicks"] == figures["wrk_sent"]
    headline["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(headline), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
