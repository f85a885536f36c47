"""Fuzz run of the panel's JSON API (every route under /api/v1) and the agent API (every route,
the sealed outer layer and the JSON inside), in-process through Flask's test client on SQLite
(strategies and checks: tests/fuzzing/). Each request is checked for: no status 500, no
traceback text in the reply, and no change to the database when the request was refused (4xx).

Prints a JSON line for each of the first problems of each route and kind, one every 5,000
requests, and last {"requests": N, "status_500": k, "tracebacks": t, "db_changed_on_refusal": d, …}.
Usage: .venv/bin/python bench/fuzz.py [N] [--seed S] [--jobs J] [postgresql]
(N: requests in all, default 100,000; postgresql: the panel on a throw-away PostgreSQL server
from devserver/postgres.py instead of SQLite, about half as fast; J: processes sharing the N
requests, each with its own apps, databases and seed (S, S+1000, …), their tallies added up;
"cpu_seconds" in the last line is what they all spent)
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fuzzing.targets import Fuzzer, Outcome  # noqa: E402

HEADLINE = ("requests", "status_500", "tracebacks", "db_changed_on_refusal")
PROBLEMS_SHOWN = 3  # per route and kind of problem
PROGRESS_EVERY = 5000


def main() -> int:
    args = sys.argv[1:]
    seed = int(args.pop(args.index("--seed") + 1)) if "--seed" in args else int(time.time())
    jobs = int(args.pop(args.index("--jobs") + 1)) if "--jobs" in args else 1
    count = next((int(arg.replace("_", "")) for arg in args if arg.replace("_", "").isdigit()), 100_000)
    backend = "postgresql" if "postgresql" in args else "sqlite"
    started = time.perf_counter()
    shares = [count // jobs + (n < count % jobs) for n in range(jobs)]
    if jobs == 1:
        parts = [part(shares[0], seed, backend)]
    else:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            parts = list(pool.map(part, shares, [seed + 1000 * n for n in range(jobs)], [backend] * jobs))
    total: dict[str, Any] = {key: sum(p[key] for p in parts) for key in HEADLINE}
    cpu = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total.update({"seconds": round(time.perf_counter() - started, 1),
                  "cpu_seconds": round(sum(r.ru_utime + r.ru_stime for r in cpu), 1), "seed": seed,
                  "jobs": jobs, "database": backend})
    for key in ("statuses", "routes"):
        merged: Counter[str] = Counter()
        for p in parts:
            merged.update(p[key])
        total[key] = dict(sorted(merged.items()))
    print(json.dumps(total), flush=True)
    return 0


def part(count: int, seed: int, backend: str) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        server = None
        if backend == "postgresql":
            from devserver.postgres import PostgresServer

            server = stack.enter_context(PostgresServer())
        return fuzz(count, seed, backend, server)


def fuzz(count: int, seed: int, backend: str, server) -> dict[str, Any]:
    shown: Counter[tuple[str, str]] = Counter()
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="mailfleet-fuzz-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    fuzzer = Fuzzer(workdir, postgres=server)
    print(json.dumps({"fuzz": "start", "seed": seed, "requests": count, "database": backend,
                      "panel_routes": len(fuzzer.panel.rules),
                      "agent_routes": len(fuzzer.agent.paths)}), flush=True)

    def report(request, outcome: Outcome) -> None:
        for problem in outcome.problems:
            shown[outcome.route, problem] += 1
            if shown[outcome.route, problem] <= PROBLEMS_SHOWN:
                print(json.dumps({"problem": problem, "route": outcome.route, "status": outcome.status,
                                  "request": repr(request)[:600], "detail": outcome.detail}), flush=True)
        done = fuzzer.tally.requests
        if done % PROGRESS_EVERY == 0:
            print(json.dumps({"progress": done, "seconds": round(time.perf_counter() - started, 1),
                              **fuzzer.tally.headline()}), flush=True)

    try:
        fuzzer.run(count, report, seed=seed, batch=10)
    finally:
        fuzzer.close()
        shutil.rmtree(workdir, ignore_errors=True)
    tally = fuzzer.tally
    statuses = {str(k): n for k, n in tally.statuses.items()}
    return {**tally.headline(), "statuses": statuses, "routes": dict(tally.routes)}


if __name__ == "__main__":
    sys.exit(main())
