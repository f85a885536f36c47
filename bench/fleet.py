"""Fleet benchmark (issue 9 point 12): the panel's CPU per letter with 1, 2, 4 and 8 agents, on PostgreSQL.

For each number of agents: a fresh PostgreSQL cluster and a local stack of that many workers
(devserver/stack.py), a list of LETTERS recipients filled by set-based SQL (bench/_panel_db.py,
so 10M fit), a campaign to it started through the API, and the CPU (user + system, from
/proc via psutil) of the panel's processes from the start request until the campaign is
finished (every letter has its outcome):
  daemon   - `python -m panel.daemon` and anything it started;
  panel    - gunicorn's master and workers;
  db       - every process of the cluster: the postmaster, its background processes and the
             backends (a backend that ended during the run is in the postmaster's children time).
Divided by the letters accounted for (the campaign's "sent" count: sent, delivered, deferred or
failed). "panel_cpu_ms_per_letter" is the three together; target <= 0.1 ms, the same with any
number of agents and (±10 %) from 100k letters to 10M.

The agents still submit to an Exim of their own (queue delivered at once to the capture), not
straight to the capture: the sender learns a letter's outcome from Exim's main log, so without
Exim no letter would ever be delivered and the campaign never finish. Exim costs the machine
CPU (so letters_per_s is the whole one-machine fleet's, bounded by its cores) but none of the
panel's, which is what is measured. While letters arrive the bench watches only the capture's
folder; it asks the panel's API for the campaign's stats only near the end (each request is
panel and database CPU it counts). Before the start it measures the idle panel for IDLE_S
seconds (heartbeats, polling: "idle_cpu_ms_per_s"): on a slow (loaded) machine that fixed cost
a second is a large part of the per-letter figure ("idle_share_of_per_letter").

Prints a JSON line per run; the last line is the headline
{"bench": "fleet", "letters": …, "agents": [...], "letters_per_s": [...], "panel_cpu_ms_per_letter": [...],
 "daemon_cpu_ms_per_letter": [...], "gunicorn_cpu_ms_per_letter": [...], "db_cpu_ms_per_letter": [...]}.
Usage: .venv/bin/python bench/fleet.py [LETTERS] [--agents 1,2,4,8] [--profile DIR]
  --profile DIR: run the daemon under cProfile (bench/_profiled_daemon.py), its stats in
  DIR/daemon-<agents>.pstats and the top functions by own time printed (such a run's CPU is inflated).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pstats
import signal
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devserver.postgres import PostgresServer  # noqa: E402
from devserver.stack import LocalStack, StackSettings  # noqa: E402

DOMAIN = "fleet.example"
IDLE_S = 10  # seconds the idle panel is measured before the campaign starts


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process, of its live descendants and of the children it has reaped."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


def postmaster_pid(server: PostgresServer) -> int:
    return int((server.data / "postmaster.pid").read_text().split()[0])


def cpu_now(stack: LocalStack, server: PostgresServer) -> dict[str, float]:
    return {"daemon": tree_cpu(stack.processes["daemon"].pid), "gunicorn": tree_cpu(stack.processes["panel"].pid),
            "db": tree_cpu(postmaster_pid(server))}


def captured(maildir: Path) -> int:
    try:
        return sum(1 for _ in os.scandir(maildir / "new"))
    except FileNotFoundError:
        return 0


class Api:
    def __init__(self, stack: LocalStack) -> None:
        self.base = stack.panel_url + "/api/v1"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {stack.api_token}"

    def call(self, method: str, path: str, body: object = None, timeout: float = 3600) -> dict:
        response = self.session.request(method, self.base + path, json=body, timeout=timeout)
        if response.status_code >= 300:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json()


def wait_online(api: Api, servers: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        listed = api.call("GET", "/servers")
        if len(listed) == servers and all(s["status"] == "online" for s in listed):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"servers not all online within {timeout:.0f} s: {[(s['id'], s['status']) for s in listed]}")
        time.sleep(0.5)


def fill(database_url: str, list_id: int, letters: int) -> None:
    """The list's recipients by one INSERT … SELECT, then fresh planner statistics."""
    from _panel_db import analyze, fill_list

    from panel import create_app
    from panel.extensions import db

    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "SECRET_KEY": "bench", "TESTING": False})
    with app.app_context():
        fill_list("postgresql", list_id, letters, domain=DOMAIN)
        analyze("postgresql")
        db.session.remove()
        db.engine.dispose()


def run(agents: int, letters: int, profile_dir: Path | None) -> dict:
    with contextlib.ExitStack() as exits:
        tmp = Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="mailfleet-fleet-")))
        tmp.chmod(0o755)  # Exim's processes (Debian-exim) keep their run directory in it
        server = exits.enter_context(PostgresServer())
        url = server.create_database("fleet")
        settings = StackSettings(root=tmp, workers=agents, database_url=url, start_daemon=profile_dir is None)
        stack = exits.enter_context(LocalStack(settings))
        profile_out = None
        if profile_dir is not None:
            profile_out = (profile_dir / f"daemon-{agents}.pstats").resolve()
            stack._spawn("daemon", [sys.executable, str(Path(__file__).with_name("_profiled_daemon.py")), str(profile_out)])
        api = Api(stack)
        wait_online(api, agents)
        list_id = api.call("POST", "/lists", {"name": "fleet"})["id"]
        started = time.monotonic()
        fill(url, list_id, letters)
        fill_s = time.monotonic() - started
        campaign = api.call("POST", "/campaigns", {
            "name": "fleet", "subject": "News for {{ email }}", "from_email": "news@sender.example",
            "text": "Hello {{ email }},\n\n" + "Some news text. " * 40 + "\n\nUnsubscribe: {{ unsubscribe_url }}\n",
            "lists": [list_id]})
        time.sleep(2)  # let the start-up work (provisioning, first heartbeats) settle before measuring
        # What the panel spends with nothing to send (heartbeats, polling), to tell it from the per-letter cost.
        idle_before, idle_started = cpu_now(stack, server), time.monotonic()
        time.sleep(IDLE_S)
        idle = cpu_now(stack, server)
        idle_ms_per_s = {name: 1000 * (idle[name] - idle_before[name]) / (time.monotonic() - idle_started) for name in idle}
        before = cpu_now(stack, server)
        started = time.monotonic()
        api.call("POST", f"/campaigns/{campaign['id']}/start", {})
        # The capture's folder is cheap to watch; the panel's API is asked only near the end.
        while (count := captured(stack.maildir)) < letters * 0.99 and count < letters - 200:
            if time.monotonic() - started > max(1800, letters / 5):
                raise SystemExit(f"{agents} agents: only {count} of {letters} letters arrived")
            time.sleep(1.0)
        while (stats := api.call("GET", f"/campaigns/{campaign['id']}/stats"))["status"] != "finished":
            if time.monotonic() - started > max(1800, letters / 5):
                raise SystemExit(f"{agents} agents: the campaign did not finish: {stats}")
            time.sleep(0.25)
        seconds = time.monotonic() - started
        after = cpu_now(stack, server)
        accounted, count = stats["sent"], captured(stack.maildir)
        used = {name: after[name] - before[name] for name in after}
        if profile_out is not None:
            stack.stop_daemon()  # SIGTERM: the profiled daemon writes its stats
    per_letter = {name: 1000 * cpu / max(accounted, 1) for name, cpu in used.items()}
    record = {
        "bench": "fleet", "agents": agents, "letters": letters, "accounted": accounted,
        "captured": count, "seconds": round(seconds, 1), "fill_s": round(fill_s, 1),
        "letters_per_s": round(accounted / seconds, 1),
        "cpu_s": {name: round(cpu, 2) for name, cpu in used.items()},
        "panel_cpu_ms_per_letter": round(sum(per_letter.values()), 4),
        "daemon_cpu_ms_per_letter": round(per_letter["daemon"], 4),
        "gunicorn_cpu_ms_per_letter": round(per_letter["gunicorn"], 4),
        "db_cpu_ms_per_letter": round(per_letter["db"], 4),
        # CPU ms a second before the start, all three together, and that share of the per-letter figure.
        "idle_cpu_ms_per_s": round(sum(idle_ms_per_s.values()), 1),
        "idle_share_of_per_letter": round(sum(idle_ms_per_s.values()) * seconds / 1000 / max(sum(used.values()), 1e-9), 3),
        # The per-letter figure less that idle cost over the run: what each letter itself costs.
        "marginal_cpu_ms_per_letter": round((1000 * sum(used.values()) - sum(idle_ms_per_s.values()) * seconds)
                                            / max(accounted, 1), 4),
        "profiled": profile_out is not None, "load": round(os.getloadavg()[0], 1),
    }
    if profile_out is not None and profile_out.exists():
        out = io.StringIO()
        pstats.Stats(str(profile_out), stream=out).sort_stats("tottime").print_stats(25)
        record["profile"] = str(profile_out)
        print(out.getvalue(), file=sys.stderr, flush=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("letters", nargs="?", type=int, default=20000)
    parser.add_argument("--agents", default="1,2,4,8", help="comma-separated agent counts (default 1,2,4,8)")
    parser.add_argument("--profile", type=Path, default=None, help="folder for the daemon's cProfile stats")
    args = parser.parse_args()
    try:
        counts = [int(n) for n in args.agents.split(",")]
    except ValueError:
        parser.error(f"--agents takes numbers separated by commas, like 1,2,4,8; not {args.agents!r}")
    if args.letters < 1 or any(not 1 <= n <= 255 for n in counts):
        parser.error("LETTERS must be at least 1 and each agent count from 1 to 255")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)

    def stop(*_: object) -> None:  # a background job ignores SIGINT: stop the stack on SIGTERM too
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)
        sys.exit(130)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    runs = []
    for agents in counts:
        record = run(agents, args.letters, args.profile)
        emit(record)
        runs.append(record)
    emit({"bench": "fleet", "letters": args.letters, "agents": counts,
          **{key: [r[key] for r in runs] for key in ("letters_per_s", "panel_cpu_ms_per_letter",
                                                     "daemon_cpu_ms_per_letter", "gunicorn_cpu_ms_per_letter",
                                                     "db_cpu_ms_per_letter")}})


if __name__ == "__main__":
    main()
